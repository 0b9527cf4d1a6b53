"""Entry points answer a refusal with one line and exit status 2, as the launchers do.

A refusal (a model folder that would run its own code, a damaged weight file, a model the hub cannot give, a
results folder made with other settings, a folder in use by another run) is the user's to fix, and its
message says how; the traceback above it only hides it. :func:`run_main` prints ``<prog>: <message>`` to
stderr and exits 2. ``--debug`` anywhere on the command line (or ``TARS_DEBUG=1``) lets the exception
through with its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type

DEBUG_FLAG = '--debug'
DEBUG_HELP = 'show the traceback of a refusal (default: its one-line message, exit status 2)'


def refusals() -> Tuple[Type[BaseException], ...]:
    """The exception classes that are refusals (a message for the user, not a bug)."""
    from trainer.jsonl import RunConfigError
    from trainer.model_loading import ModelLookupError, RemoteCodeError, WeightFileError
    from trainer.run_state import RunStateError
    return RemoteCodeError, WeightFileError, ModelLookupError, RunConfigError, RunStateError


def run_main(main: Callable[[List[str]], Any], prog: str, argv: Optional[Sequence[str]] = None) -> Any:
    """Call ``main(argv without --debug)``; a refusal becomes ``prog: message`` on stderr and exit status 2
    (with ``--debug`` or ``TARS_DEBUG=1``: raised as it is)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get('TARS_DEBUG') == '1'
    try:
        return main([a for a in args if a != DEBUG_FLAG])
    except refusals() as err:
        if debug:
            raise
        print(f'{prog}: {err}', file=sys.stderr)
        raise SystemExit(2) from None
