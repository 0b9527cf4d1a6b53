"""No code from a model folder runs unless the user opts in (``--trust_remote_code``; docs/design.md §9).

transformers runs Python shipped with a model folder in two ways: an ``auto_map`` entry in one of the
folder's JSON configuration files (``config.json``: ``AutoConfig``, ``AutoModel*``, ``AutoTokenizer``...;
``tokenizer_config.json``: ``AutoTokenizer``; ``processor_config.json`` / ``preprocessor_config.json`` /
``video_preprocessor_config.json``: ``AutoProcessor``, ``AutoFeatureExtractor``, ``AutoImageProcessor``,
``AutoVideoProcessor``) names a module of the folder (or of another hub repo, ``repo--module.Class``)
that is imported when the loader is called with ``trust_remote_code=True``; and ``from_pretrained(...,
trust_remote_code=True)`` of any model class imports the folder's ``custom_generate/generate.py`` (transformers
5.19 ``GenerationMixin``). Without either, ``trust_remote_code=True`` cannot run anything from the folder:
the classes come from transformers itself.

ms-swift 4.6 passes ``trust_remote_code=True`` where it loads a model whatever the model type's loader says
(``swift.model.model_meta._get_model_info``, reached by every ``get_model_info_meta`` /
``get_model_processor`` / ``TransformersEngine`` / ``sft_main`` / ``rlhf_main`` / ``export_main``; and the
``ModelLoader.default_trust_remote_code = True`` of the Qwen2.5-Omni and Qwen2-Audio loaders), and has no
argument to turn that off. So the project decides before ms-swift or transformers see the folder: every load
path of ours (training, warm start, evaluation, inference, merge, layer analysis) calls
:func:`check_no_remote_code` on the folders it is about to load, which refuses, in one line naming the
folder and the entry, any folder that could run code. A hub id is checked on its snapshot (configuration
files only, fetched with ms-swift's own ``safe_snapshot_download`` into the same cache the loader then
uses). With ``trust_remote_code=True`` nothing is checked and the libraries load as they always did.

A checkpoint's ms-swift ``args.json`` may also list ``external_plugins`` (Python files ms-swift imports when
the command line gives none); our ms-swift entry points always pass the TARS plugin themselves
(``trainer.grpo``, ``trainer.preference_train``, ``scripts.merge_lora``), so a checkpoint's list is never read.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

CUSTOM_GENERATE = 'custom_generate/generate.py'
OPT_IN = '--trust_remote_code'
OPT_IN_HELP = ("allow Python code shipped with a model folder to run (its auto_map entries, custom_generate/); "
               "off by default: such a folder is refused")

# ms-swift flags whose values are models or adapter folders loaded by the training entries (swift 4.6
# BaseArguments / RLHFArguments); a list flag takes every value up to the next flag.
SWIFT_MODEL_FLAGS = ('--model', '--ref_model', '--reward_model', '--teacher_model',
                     '--adapters', '--ref_adapters', '--reward_adapters', '--teacher_adapters')


@dataclass
class RemoteCodeArguments:
    """The opt-in as a dataclass field, for entry points parsed with ``HfArgumentParser``."""
    trust_remote_code: bool = field(default=False, metadata={'help': OPT_IN_HELP})


class RemoteCodeError(ValueError):
    """A model folder that would run its own code, refused without ``--trust_remote_code``."""


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    """The opt-in flag, the same on every entry point, and ``--debug`` (``trainer.cli.run_main``: a refusal
    with its traceback instead of its one line)."""
    from trainer.cli import DEBUG_FLAG, DEBUG_HELP
    parser.add_argument(OPT_IN, action='store_true', help=OPT_IN_HELP)
    parser.add_argument(DEBUG_FLAG, action='store_true', help=DEBUG_HELP)


def _auto_maps(value, where: str) -> List[str]:
    """``'where.auto_map: {...}'`` for every non-empty ``auto_map`` key in a parsed JSON value (any depth)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == 'auto_map' and item:
                found.append(f'{where}auto_map {json.dumps(item, sort_keys=True)}')
            else:
                found += _auto_maps(item, f'{where}{key}.')
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _auto_maps(item, f'{where}{i}.')
    return found


def remote_code_entries(folder: Path) -> List[str]:
    """What in ``folder`` would make transformers run code from it: each ``auto_map`` of its top-level JSON
    files (``'config.json: auto_map {"AutoConfig": "configuration_x.XConfig"}'``) and a ``custom_generate/
    generate.py``; empty for a folder that cannot run code. A JSON file that cannot be parsed is listed too
    (it cannot be shown to be free of ``auto_map``)."""
    entries = []
    for path in sorted(folder.glob('*.json')):
        try:
            data = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as err:
            entries.append(f'{path.name}: unreadable ({type(err).__name__})')
            continue
        entries += [f'{path.name}: {e}' for e in _auto_maps(data, '')]
    if (folder / CUSTOM_GENERATE).is_file():
        entries.append(CUSTOM_GENERATE)
    return entries


def _looks_like_hub_id(model: str) -> bool:
    """'org/name' or 'org/name:subfolder' (ms-swift's subfolder syntax), not a path."""
    name = model.split(':', 1)[0]
    return not model.startswith(('/', '.', '~')) and name.count('/') == 1 and all(name.split('/'))


def model_folder(model: str, revision: Optional[str] = None, use_hf: Optional[bool] = None,
                 hub_token: Optional[str] = None) -> Optional[Path]:
    """The local folder the loaders will read for ``model``: the folder itself, or for a hub id its snapshot
    with the configuration and code files only (no weights), fetched by ms-swift's ``safe_snapshot_download``
    into the cache the loader then reads; None for a path that does not exist (the loader reports it)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _looks_like_hub_id(model):
        return None
    from swift.utils import safe_snapshot_download
    try:
        return Path(safe_snapshot_download(model, revision=revision, download_model=False, use_hf=use_hf,
                                           hub_token=hub_token))
    except Exception as err:  # offline without a cached snapshot, unknown repo, no access...
        raise RemoteCodeError(f'{model}: cannot fetch its configuration files to check them for remote code '
                              f'({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}); '
                              f'give a local folder, or {OPT_IN} to skip the check') from err


def check_no_remote_code(models: Iterable[Optional[str]], trust_remote_code: bool = False,
                         revision: Optional[str] = None, use_hf: Optional[bool] = None,
                         hub_token: Optional[str] = None) -> None:
    """Raise :class:`RemoteCodeError` (one line: the folder and its entries) when a folder of ``models``
    (paths or hub ids; None skipped) would run its own code; nothing is checked with ``trust_remote_code``."""
    if trust_remote_code:
        return
    for model in dict.fromkeys(m for m in models if m):  # each once, in order
        folder = model_folder(model, revision, use_hf, hub_token)
        entries = remote_code_entries(folder) if folder is not None else []
        if entries:
            shown = str(folder) if str(folder) == model else f'{model} ({folder})'
            raise RemoteCodeError(f'{shown}: {"; ".join(entries)}: this would run code shipped with the model; '
                                  f'refused (pass {OPT_IN} if you trust it)')


def _flag_values(argv: Sequence[str], flag: str) -> List[str]:
    """The values of ``flag`` in an ms-swift argv: ``--flag a b`` (until the next flag) or ``--flag=a``."""
    values: List[str] = []
    for i, arg in enumerate(argv):
        if arg == flag:
            j = i + 1
            while j < len(argv) and not argv[j].startswith('--'):
                values.append(argv[j])
                j += 1
        elif arg.startswith(flag + '='):
            values.append(arg.split('=', 1)[1])
    return values


def swift_argv_models(argv: Sequence[str]) -> List[str]:
    """Every model and adapter an ms-swift training argv loads (``SWIFT_MODEL_FLAGS``); without ``--model``,
    also the base that ms-swift takes from an adapter's ``args.json``."""
    models = [v for flag in SWIFT_MODEL_FLAGS for v in _flag_values(argv, flag)]
    if not _flag_values(argv, '--model'):
        for adapter in _flag_values(argv, '--adapters'):
            args_json = Path(adapter) / 'args.json'
            if args_json.is_file():
                base = json.loads(args_json.read_text()).get('model')
                if base:
                    models.append(base)
    return models


def _last_value(argv: Sequence[str], flag: str) -> Optional[str]:
    values = _flag_values(argv, flag)
    return values[-1] if values else None


def check_swift_argv(argv: Sequence[str], trust_remote_code: bool = False) -> None:
    """:func:`check_no_remote_code` on the models of an ms-swift argv, fetched as its flags say
    (``--model_revision`` for ``--model``, ``--use_hf``, ``--hub_token``)."""
    if trust_remote_code:
        return
    use_hf = _last_value(argv, '--use_hf')
    hub = dict(use_hf=None if use_hf is None else use_hf.lower() in ('1', 'true'),
               hub_token=_last_value(argv, '--hub_token'))
    main = _flag_values(argv, '--model')
    check_no_remote_code(main, revision=_last_value(argv, '--model_revision'), **hub)
    check_no_remote_code([m for m in swift_argv_models(argv) if m not in main], **hub)


# ---------------------------------------------------------------- a model the run cannot fetch
class ModelLookupError(ValueError):
    """A model that is neither a local folder nor fetchable from the hub the run uses."""


# Exceptions (anywhere in the cause chain) that mean the hub was not reached, not that the model is unknown:
# connection / name resolution / timeouts of requests, urllib3, httpx (huggingface_hub), modelscope_hub, and
# huggingface_hub's "not cached and offline" answers.
_UNREACHABLE = ('ConnectError', 'ConnectTimeout', 'ConnectionError', 'NetworkError', 'NameResolutionError',
                'MaxRetryError', 'ReadTimeout', 'Timeout', 'LocalEntryNotFoundError', 'OfflineModeIsEnabled')


def hub_name(use_hf: Optional[bool] = None) -> str:
    """The hub ms-swift fetches models from: the Hugging Face hub with ``USE_HF=1``, else ModelScope."""
    import os
    if use_hf is None:
        use_hf = os.environ.get('USE_HF', '0').lower() in ('1', 'true', 'yes', 'on')
    return 'the Hugging Face hub' if use_hf else 'ModelScope'


def hub_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says the hub could not be reached."""
    import socket
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or type(err).__name__ in _UNREACHABLE:
            return True
        err = err.__cause__ or err.__context__
    return False


def resolve_model_files(model: str, use_hf: Optional[bool] = None) -> Path:
    """The local folder of ``model``, or for a hub id its configuration files (no weights) fetched with
    ms-swift's ``safe_snapshot_download`` from the hub the run uses (``USE_HF``), into the cache the loader
    reads later. Raises :class:`ModelLookupError` in one line: ``'<model>: cannot reach <hub> ...'`` when the
    hub does not answer, ``'<model>: no such model on <hub> ...'`` when it does and has no such model."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _looks_like_hub_id(model):
        raise ModelLookupError(f'{model}: no such folder, and not a hub id (org/name)')
    from swift.utils import safe_snapshot_download
    try:
        return Path(safe_snapshot_download(model, download_model=False, use_hf=use_hf))
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one line; its kind decides which
        first = str(err).splitlines()[0] if str(err) else ''
        if hub_unreachable(err):
            raise ModelLookupError(f'{model}: cannot reach the hub ({hub_name(use_hf)}) to fetch its configuration '
                                   f'files ({type(err).__name__}); connect, or give a local folder') from err
        raise ModelLookupError(f'{model}: no such model on {hub_name(use_hf)}, or no access to it '
                               f'({type(err).__name__}: {first}); USE_HF=1 selects the Hugging Face hub') from err


# ---------------------------------------------------------------- torn weight files
class WeightFileError(ValueError):
    """A weight file that is cut short or not in its format (a copy or save that did not finish)."""


WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth')


def weight_file_problem(path: Path) -> Optional[str]:
    """Why the weight file ``path`` cannot be loaded (None when it looks whole), read from its header only.

    safetensors: an 8-byte little-endian header length, the JSON header, then the tensors; the file must be
    exactly as long as the header's largest ``data_offsets`` end says. ``.bin`` / ``.pt``: a torch zip archive
    (its central directory sits at the end, so a cut file has none); an old pickle is not checked."""
    import struct
    import zipfile
    size = path.stat().st_size
    if path.suffix == '.safetensors':
        with open(path, 'rb') as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f'{size} bytes, shorter than a safetensors header'
            (n,) = struct.unpack('<Q', head)
            if n > size - 8:
                return f'truncated: its header alone says {n + 8} bytes, the file holds {size}'
            try:
                header = json.loads(fh.read(n))
                end = max((int(v['data_offsets'][1]) for k, v in header.items() if k != '__metadata__'), default=0)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                return f'not a safetensors file (header: {type(err).__name__})'
        expected = 8 + n + end
        if size != expected:
            return f'truncated: its header says {expected} bytes, the file holds {size}'
        return None
    with open(path, 'rb') as fh:
        magic = fh.read(4)
    if magic[:2] == b'PK' and not zipfile.is_zipfile(path):
        return f'truncated: a torch zip archive without its end ({size} bytes)'
    return None


def check_weight_files(folders: Iterable[Optional[str]]) -> None:
    """Raise :class:`WeightFileError` naming the first weight file of a local folder of ``folders`` (hub ids
    and None skipped) that :func:`weight_file_problem` finds cut short: cheap (headers and sizes), before any
    model loads."""
    for model in dict.fromkeys(m for m in folders if m):
        folder = Path(model)
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
            problem = weight_file_problem(path)
            if problem:
                raise WeightFileError(f'{path}: {problem}; the file is damaged (an interrupted copy or save), '
                                      'nothing was loaded')
