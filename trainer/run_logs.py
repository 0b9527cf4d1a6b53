"""Logs of a run that was killed and resumed look like those of a run that never stopped.

ms-swift appends every ``Trainer.log`` call to ``<output_dir>/logging.jsonl`` (its progress/printer
callbacks, swift/trainers/patcher.py), the GRPO completion table to ``completions.jsonl``, and one
summary line per ``train`` call, failed ones included (swift/pipelines/train/sft.py). A run killed after
step 9 and resumed from checkpoint-5 therefore logs steps 6-9 twice. ``RunLogCallback`` (registered as
the ms-swift callback ``tars_run_logs``):

* ``on_train_begin``: cuts those files back to the step the trainer starts from (records of later steps,
  the summaries and ``train_runtime`` lines of earlier attempts, a torn last line);
* ``on_init_end`` of a resumed run: writes a TensorBoard restart marker (``SummaryWriter(purge_step=N+1)``)
  in the logging dir before the new event file, so TensorBoard hides the killed attempt's events from
  step N+1 on (event files are never rewritten);
* ``on_log``: NaN / inf metrics become ``null`` in logging.jsonl (``json`` would write a bare ``NaN``,
  which strict JSON readers reject); TensorBoard, called before, still gets the float. The trainer keeps its
  own copy of each record in ``state.log_history``, cleaned the same way at once (trainer_state.json);
* ``on_train_end``: every ``state.log_history`` record (those of a resumed checkpoint too) and
  ``state.best_metric`` are cleaned, so ms-swift's end-of-training summary line (with ``log_history``), written
  after ``train`` returns, is strict JSON as well.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

from transformers import TrainerCallback

from trainer import jsonl

logger = logging.getLogger(__name__)
LOG_FILES = ('logging.jsonl', 'completions.jsonl')
CALLBACK_NAME = 'tars_run_logs'


def log_step(record: Dict[str, Any]) -> Optional[int]:
    """The optimizer step of one ms-swift log record: ``global_step/max_steps`` ("7/12") of logging.jsonl,
    ``step`` (a list of the step as text, one per completion) of completions.jsonl; None without one."""
    if isinstance(record.get('global_step/max_steps'), str):
        return int(record['global_step/max_steps'].split('/')[0])
    step = record.get('step')
    if isinstance(step, list) and step:
        step = step[0]
    if isinstance(step, (int, str)) and str(step).isdigit():
        return int(step)
    return None


def is_attempt_end(record: Dict[str, Any]) -> bool:
    """Whether ``record`` closes one ``train`` call: ms-swift's summary (with ``log_history``) or the
    trainer's ``train_runtime`` line. The resumed run writes its own at its end."""
    return 'log_history' in record or 'train_runtime' in record


def trim_logs(output_dir: Path, step: int) -> Dict[str, int]:
    """Cut the JSONL logs of ``output_dir`` back to ``step``: drop records of later steps and the ends of
    earlier attempts. Returns {file name: records removed} for the files that changed."""
    removed = {}
    for name in LOG_FILES:
        path = Path(output_dir) / name
        n = jsonl.keep_records(path, lambda r: not is_attempt_end(r) and (log_step(r) or 0) <= step)
        if n:
            removed[name] = n
    return removed


def finite_logs(logs: Dict[str, Any]) -> int:
    """Replace, in place, the non-finite float values of ``logs`` by None; return how many."""
    bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    for k in bad:
        logs[k] = None
    return len(bad)


def checkpoint_step(checkpoint: Optional[str]) -> Optional[int]:
    """global_step of a checkpoint folder's trainer_state.json (None without a readable one)."""
    if not checkpoint or not isinstance(checkpoint, (str, os.PathLike)):
        return None
    try:
        return int(json.loads((Path(checkpoint) / 'trainer_state.json').read_text())['global_step'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tensorboard_restart_marker(logging_dir: Path, next_step: int) -> bool:
    """Write a TensorBoard restart marker in ``logging_dir`` when it already holds event files: events of
    steps >= ``next_step`` written before are then hidden. Returns whether a marker was written."""
    logging_dir = Path(logging_dir)
    if not logging_dir.is_dir() or not any(p.name.startswith('events.out.tfevents') for p in logging_dir.iterdir()):
        return False
    from torch.utils.tensorboard import SummaryWriter
    SummaryWriter(log_dir=str(logging_dir), purge_step=next_step, filename_suffix='.restart').close()
    return True


class RunLogCallback(TrainerCallback):
    """See the module docstring. Built by ms-swift as ``callbacks_map[name](args, trainer)``."""

    def __init__(self, args: Any = None, trainer: Any = None) -> None:
        self.args = args
        self.trainer = trainer

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A resumed run hides TensorBoard events of steps after its checkpoint (restart marker)."""
        if not state.is_world_process_zero or 'tensorboard' not in (args.report_to or []):
            return
        step = checkpoint_step(getattr(args, 'resume_from_checkpoint', None)) or 0
        logging_dir = (os.environ.get('TENSORBOARD_LOGGING_DIR') or getattr(args, 'logging_dir', None)
                       or os.path.join(args.output_dir, 'runs'))
        if tensorboard_restart_marker(Path(logging_dir), step + 1):
            logger.warning(f'TensorBoard: events of steps > {step} in {logging_dir} from an earlier attempt are '
                           'hidden (restart marker)')

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A resumed run drops the log records of steps after its checkpoint (``trim_logs``)."""
        if not state.is_world_process_zero:
            return
        removed = trim_logs(Path(args.output_dir), state.global_step)
        if removed:
            logger.warning(f'resuming at step {state.global_step}: removed log records of later steps and of '
                           f'earlier attempts\' ends: {removed}')

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> None:
        """Non-finite values of ``logs`` become None (written as null)."""
        if logs is not None:
            finite_logs(logs)
        history = getattr(state, 'log_history', None)
        if history and isinstance(history[-1], dict):
            finite_logs(history[-1])  # the trainer's copy of this record (Trainer.log)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Clean ``state`` before ms-swift writes its summary: non-finite values of every ``log_history``
        record and of ``best_metric`` become None."""
        for record in state.log_history:
            if isinstance(record, dict):
                finite_logs(record)
        if isinstance(state.best_metric, float) and not math.isfinite(state.best_metric):
            state.best_metric = None
