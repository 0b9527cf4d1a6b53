"""The state of a run directory, for the launchers (train_grpo.sh, train_dpo.sh, train_sft.sh).

* Which checkpoint to resume: the newest *complete* one. transformers saves a checkpoint as weights, then
  optimizer and RNG state, then ``trainer_state.json``; a run killed during a save leaves a
  ``checkpoint-N`` folder without (or with a torn) ``trainer_state.json``, which
  ``transformers.trainer_utils.get_last_checkpoint`` would still pick, and every resume would fail.
* What a run was started with: ``run.json`` in the run directory records the launcher's inputs (dataset,
  prompt settings, model, rewards) once the data is prepared; a resume with other inputs is refused,
  naming each difference, and a resume of a prepared run does not prepare again.
* The launcher's input checks (reward names, prompt settings, presets, the model's configuration files on
  the hub the run uses), before any model is loaded or anything is written.
* Whether a resumed run is already complete (its newest checkpoint reached max_steps): then nothing is trained.
* One run per folder: :func:`acquire_run_lock` holds an exclusive ``flock`` on ``<folder>/.run.lock`` for the
  life of the run (the launchers, ``eval.qa --out``); a second run on the folder is refused in one line
  naming the holder's PID and host. The kernel drops the lock when the holder dies, so a folder left by a
  killed run resumes without any cleanup; the lock file itself never counts as content.

``python -m trainer.run_state preflight ...`` does all checks at once and prints ``run_state:`` lines for
the launcher; ``python -m trainer.run_state lock ...`` takes the folder's lock on a descriptor the launcher
opened (and holds until it exits) and checks the folder again under it; ``python -m trainer.run_state
record ...`` writes ``run.json`` after preparation.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from trainer.presets import DEFAULT_PRESET, PRESETS

MANIFEST = 'run.json'
TRAINER_STATE = 'trainer_state.json'
# What a finished save holds besides trainer_state.json: full weights, a LoRA adapter (either format),
# or a DeepSpeed engine state folder (global_step<N>).
WEIGHT_FILES = ('adapter_model.safetensors', 'adapter_model.bin', 'model.safetensors',
                'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json')
# transformers.trainer_utils: PREFIX_CHECKPOINT_DIR and its pattern (not imported: this module must load
# without torch, it runs before every launch).
CHECKPOINT_RE = re.compile(r'^checkpoint-(\d+)$')
PRINT_PREFIX = 'run_state:'
LOCK_FILE = '.run.lock'
_HELD: Dict[str, int] = {}  # folders whose lock this process opened and holds: resolved path -> descriptor


class RunStateError(ValueError):
    """An input or run-directory problem the launcher reports as one line."""


class RunLockError(RunStateError):
    """The folder is in use by another live run (it holds the folder's lock)."""


# ---------------------------------------------------------------- one run per folder
def _holder(lock_path: Path) -> str:
    """'PID 123 on host h (train_grpo.sh, since ...)' from a lock file's record ('unknown' if unreadable)."""
    import time
    for _ in range(20):  # a holder writes its record right after taking the lock: give it a moment
        if lock_path.is_file() and lock_path.stat().st_size:
            break
        time.sleep(0.05)
    try:
        info = json.loads(lock_path.read_text())
        extra = ', '.join(x for x in (info.get('what'), info.get('since') and f"since {info['since']}") if x)
        return f"PID {info['pid']} on host {info['host']}" + (f' ({extra})' if extra else '')
    except (OSError, ValueError, KeyError, TypeError):
        return 'a process whose PID and host are not recorded yet'


def _in_use(folder: Path) -> RunLockError:
    return RunLockError(f'{folder} is in use by another run ({_holder(folder / LOCK_FILE)}); wait for it to end '
                        'or choose another folder')


def check_not_locked(folder: Path) -> None:
    """Raise :class:`RunLockError` when a live process holds ``folder``'s lock; writes nothing (a probe on a
    read-only descriptor, released at once)."""
    path = Path(folder) / LOCK_FILE
    if str(Path(folder).resolve()) in _HELD:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or no folder): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _in_use(Path(folder)) from None
        raise
    finally:
        os.close(fd)  # closing drops the probe's lock


def acquire_run_lock(folder: Path, fd: Optional[int] = None, pid: Optional[int] = None,
                     what: str = '') -> int:
    """Take the exclusive lock of ``folder`` (created if absent) and record ``pid`` (default: this process),
    the host, ``what`` and the time in the lock file; return the descriptor that holds it.

    ``fd``: a descriptor of ``<folder>/.run.lock`` opened for writing by the caller (a launcher's ``exec
    9>>``): the lock then belongs to that open file and lasts until the launcher and every child that
    inherited it exit. Without ``fd`` the file is opened here and the lock lasts until this process exits
    (or the descriptor is closed). A lock held by a live process raises :class:`RunLockError`."""
    folder = Path(folder)
    own = fd is None
    if own:
        folder.mkdir(parents=True, exist_ok=True)
        if str(folder.resolve()) in _HELD:  # taken before by this process: still held
            return _HELD[str(folder.resolve())]
        fd = os.open(folder / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if own:
            os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _in_use(folder) from None
        raise
    if own:
        _HELD[str(folder.resolve())] = fd
    record = json.dumps({'pid': pid or os.getpid(), 'host': socket.gethostname(), 'what': what,
                         'since': datetime.now(timezone.utc).isoformat(timespec='seconds')})
    os.ftruncate(fd, 0)
    os.write(fd, (record + '\n').encode())  # O_APPEND: after the truncation, at offset 0
    return fd


def folder_content(folder: Path) -> List[Path]:
    """What ``folder`` holds besides its lock file."""
    return [p for p in Path(folder).iterdir() if p.name != LOCK_FILE] if Path(folder).is_dir() else []


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a complete checkpoint (None when it is): trainer_state.json missing, not
    parseable or without global_step, or no weights."""
    state = path / TRAINER_STATE
    if not state.is_file():
        return f'no {TRAINER_STATE}'
    try:
        step = json.loads(state.read_text()).get('global_step')
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        return f'{TRAINER_STATE} is not valid JSON ({err})'
    if not isinstance(step, int):
        return f'{TRAINER_STATE} has no global_step'
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob('global_step*')):
        return f'no weights (none of {", ".join(WEIGHT_FILES)} or a DeepSpeed global_step folder)'
    return None


def checkpoints(output_dir: Path) -> List[Tuple[int, Path]]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, newest first, as get_last_checkpoint sees them
    (a name that is exactly checkpoint-<digits>, a directory; ordered by the number, not the text)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), output_dir / name) for name in os.listdir(output_dir)
             if (m := CHECKPOINT_RE.match(name)) and (output_dir / name).is_dir()]
    return sorted(found, reverse=True)


def last_complete_checkpoint(output_dir: Path) -> Tuple[Optional[Path], List[Tuple[Path, str]]]:
    """The newest complete checkpoint of ``output_dir`` (None without one) and the newer incomplete ones
    skipped on the way, each with the reason."""
    skipped = []
    for _, path in checkpoints(Path(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def read_manifest(output_dir: Path) -> Optional[Dict]:
    """``run.json`` of ``output_dir`` (None when absent)."""
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get('inputs'), dict):
            raise ValueError('no "inputs" object')
    except (json.JSONDecodeError, ValueError, AttributeError) as err:
        raise RunStateError(f'{path} is not a valid run manifest ({err}); remove it to prepare the data again')
    return manifest


def input_differences(recorded: Dict[str, str], given: Dict[str, str]) -> List[str]:
    """``NAME 'old' -> 'new'`` for each input of ``given`` that ``recorded`` holds with another value
    (inputs the manifest does not know, e.g. from an older launcher, are not compared)."""
    return [f'{k} {recorded[k]!r} -> {v!r}' for k, v in given.items() if k in recorded and recorded[k] != v]


def write_manifest(output_dir: Path, launcher: str, inputs: Dict[str, str]) -> Path:
    """Write ``run.json`` (atomically): the launcher, its inputs, and when the data was prepared."""
    output_dir = Path(output_dir)
    path = output_dir / MANIFEST
    tmp = output_dir / f'.{MANIFEST}.tmp'
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps({'launcher': launcher, 'inputs': inputs,
                               'prepared_at': datetime.now(timezone.utc).isoformat(timespec='seconds')}, indent=1))
    os.replace(tmp, path)
    return path


def known_reward_names() -> List[str]:
    """Every name ``--reward_funcs`` accepts: ms-swift's ``orms`` after the TARS rewards are registered
    (TARS names and the original's names). Imports torch and ms-swift (several seconds)."""
    from swift.rewards import orms

    from trainer.rewards import register
    register()
    return sorted(orms)


def check_rewards(names: Sequence[str], plugins_given: bool) -> None:
    """Refuse unknown reward names (unless the user passes plugins of their own, which may register more)."""
    if not names:
        raise RunStateError('REWARD_FUNCS is empty')
    known = known_reward_names()
    unknown = [n for n in names if n not in known]
    if unknown and not plugins_given:
        raise RunStateError(f'unknown reward name(s) {unknown} in REWARD_FUNCS; known: {" ".join(known)}')


def check_settings(prompt_type: Optional[str], prompt_modality: Optional[str], model_preset: Optional[str],
                   modalities: Optional[Sequence[str]] = None) -> None:
    """PROMPT_TYPE, PROMPT_MODALITY and MODEL_PRESET against their lists."""
    from trainer import prompts
    if prompt_type is not None and prompt_type not in prompts.PROMPT_TYPES:
        raise RunStateError(f'PROMPT_TYPE={prompt_type!r} is not one of {" ".join(prompts.PROMPT_TYPES)}')
    allowed = list(modalities or prompts.PROMPT_MODALITIES)
    if prompt_modality is not None and prompt_modality not in allowed:
        raise RunStateError(f'PROMPT_MODALITY={prompt_modality!r} is not one of {" ".join(allowed)}')
    if model_preset is not None and model_preset not in PRESETS:
        raise RunStateError(f'MODEL_PRESET={model_preset!r} is not one of {" ".join(sorted(PRESETS))}')


def preset_facts(model_preset: str, need_tiny_twin: bool = False) -> Dict[str, str]:
    """What the launchers need to know about a preset, answered with the preflight (one Python call):
    its real checkpoint, whether vLLM serves it, and its launch settings (vLLM share, tensor-parallel size and
    limits, length, DeepSpeed stage; ``trainer.presets``)."""
    preset = PRESETS[model_preset]
    if need_tiny_twin and not preset.has_tiny_twin:
        raise RunStateError(f'no tiny twin for MODEL_PRESET={model_preset} (presets with one: '
                            f'{" ".join(sorted(k for k, p in PRESETS.items() if p.has_tiny_twin))})')
    return {'preset_checkpoint': preset.checkpoint, 'preset_vllm': str(int(preset.vllm)),
            'preset_vllm_fraction': f'{preset.vllm_memory_fraction:g}', 'preset_vllm_limit_mm': preset.vllm_limit_mm,
            'preset_vllm_tensor_parallel': str(preset.vllm_tensor_parallel),
            'preset_max_length': str(preset.max_length), 'preset_deepspeed': preset.deepspeed}


@dataclass
class Plan:
    """What the launcher does: resume from ``checkpoint`` (None: from the start); skip data preparation
    when ``prepared``; ``notes`` to print."""
    checkpoint: Optional[Path]
    prepared: bool
    notes: List[str]
    complete: Optional[str] = None  # why there is nothing to train (a resume of a finished run)


def completion(checkpoint: Path, max_steps: Optional[int] = None) -> Optional[str]:
    """Why resuming from ``checkpoint`` has nothing to train (None when it has): its ``global_step`` reached the
    ``max_steps`` its trainer_state.json records, and ``max_steps`` (the step count asked for now; None: the
    recorded one) is not higher."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text())
        step, recorded = int(state['global_step']), int(state.get('max_steps') or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    target = max_steps or recorded
    if recorded <= 0 or step < target:
        return None
    return f'{checkpoint.name} reached step {step} of {target}'


def plan_run(output_dir: Path, resume: bool, inputs: Dict[str, str], dry_run: bool = False,
             max_steps: Optional[int] = None) -> Plan:
    """Check ``output_dir`` against the request and decide how to start.

    A new run needs an absent or empty ``output_dir`` (its lock file aside; a dry run only prints). A resume
    needs the inputs recorded in ``run.json`` (when there is one) to be the same, unless the folder has no
    checkpoint at all (a start that failed before training: the data is prepared again); it continues from the
    newest complete checkpoint, and names the incomplete ones it skips; when that checkpoint already
    reached the run's last step (``completion``, ``max_steps`` asked for now), ``Plan.complete`` says so."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise RunStateError(f'OUTPUT_DIR {output_dir} exists and is not a directory')
    notes: List[str] = []
    if not resume:
        if folder_content(output_dir) and not dry_run:
            raise RunStateError(f'{output_dir} exists; set RESUME=1 to resume it or choose another OUTPUT_DIR')
        return Plan(None, False, notes)
    manifest, failed_start = read_manifest(output_dir), False
    if manifest is not None:
        diff = input_differences(manifest['inputs'], inputs)
        if diff and checkpoints(output_dir):
            raise RunStateError(f'RESUME=1 with other inputs than {output_dir / MANIFEST} records: '
                                f'{"; ".join(diff)} (restore them, or start a new OUTPUT_DIR)')
        if diff:  # a start that failed before its first checkpoint: nothing trained, a corrected rerun goes on
            notes.append(f'{output_dir} has no checkpoint: its start failed before training; preparing the data '
                         f'again with the new inputs ({"; ".join(diff)})')
            manifest, failed_start = None, True
    checkpoint, skipped = last_complete_checkpoint(output_dir)
    for path, problem in skipped:
        notes.append(f'skipping {path}: incomplete ({problem}; a save that was interrupted)')
    if checkpoint is not None and (done := completion(checkpoint, max_steps)):
        return Plan(checkpoint, manifest is not None, notes,
                    complete=f'{output_dir} is complete ({done}): nothing to train (raise MAX_STEPS to train '
                             'further, or choose another OUTPUT_DIR)')
    if manifest is None and output_dir.is_dir() and not failed_start:
        notes.append(f'{output_dir} has no {MANIFEST} (a start that failed before its data was ready, or an older '
                     'launcher): preparing the data')
    if checkpoint is not None:
        notes.append(f'resuming from {checkpoint}')
    elif output_dir.is_dir():
        notes.append(f'no complete checkpoint in {output_dir}: training starts at step 0')
    return Plan(checkpoint, manifest is not None, notes)


def _inputs(pairs: Sequence[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition('=')
        if not sep:
            raise RunStateError(f'--input wants NAME=VALUE, got {pair!r}')
        out[name] = value
    return out


def _plan_lines(plan: Plan, launcher: str) -> None:
    """Print the plan's notes (stderr) and its ``run_state:`` lines (stdout) for the launcher."""
    for note in plan.notes:
        print(f'{launcher}: {note}', file=sys.stderr)
    if plan.complete:
        print(f'{launcher}: {plan.complete}', file=sys.stderr)
    print(f'{PRINT_PREFIX}checkpoint={plan.checkpoint or ""}')
    print(f'{PRINT_PREFIX}prepared={int(plan.prepared)}')
    print(f'{PRINT_PREFIX}complete={int(plan.complete is not None)}')


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``preflight`` (``lock`` takes the same, and uses those of the folder)."""
    parser.add_argument('--launcher', required=True)
    parser.add_argument('--output_dir', required=True, type=Path)
    parser.add_argument('--resume', type=int, choices=[0, 1], default=0)
    parser.add_argument('--dry_run', type=int, choices=[0, 1], default=0)
    parser.add_argument('--max_steps', default='', help='the MAX_STEPS asked for (empty: the recorded one)')
    parser.add_argument('--input', action='append', default=[], help='NAME=VALUE, an input run.json records')
    parser.add_argument('--reward_funcs', nargs='*', default=None)
    parser.add_argument('--plugins_given', type=int, choices=[0, 1], default=0)
    parser.add_argument('--prompt_type', default=None)
    parser.add_argument('--prompt_modality', default=None)
    parser.add_argument('--modalities', nargs='*', default=None, help='allowed PROMPT_MODALITY values')
    parser.add_argument('--model_preset', default=None)
    parser.add_argument('--need_tiny_twin', type=int, choices=[0, 1], default=0,
                        help='1: the embedded default, whose preset must have a tiny twin')
    parser.add_argument('--resolve_model', default=None,
                        help="fetch this model's configuration files (empty: the preset's checkpoint) from the hub "
                             'the run uses; not on a dry run')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Run-directory checks for the launchers.')
    sub = parser.add_subparsers(dest='command', required=True)
    pre = sub.add_parser('preflight', help='check inputs and OUTPUT_DIR; print the checkpoint to resume')
    _add_plan_arguments(pre)
    lock = sub.add_parser('lock', help="take OUTPUT_DIR's lock on the launcher's descriptor --fd, check again")
    _add_plan_arguments(lock)
    lock.add_argument('--fd', type=int, required=True, help='descriptor of OUTPUT_DIR/.run.lock, opened for writing')
    lock.add_argument('--pid', type=int, required=True, help='the launcher\'s PID (recorded for a refused run)')
    rec = sub.add_parser('record', help='write run.json after the data is prepared')
    rec.add_argument('--launcher', required=True)
    rec.add_argument('--output_dir', required=True, type=Path)
    rec.add_argument('--input', action='append', default=[])
    args = parser.parse_args(argv)
    try:
        inputs = _inputs(args.input)
        if args.command == 'record':
            write_manifest(args.output_dir, args.launcher, inputs)
            return 0
        max_steps = int(args.max_steps) if args.max_steps else None
        if args.command == 'lock':
            acquire_run_lock(args.output_dir, args.fd, args.pid, args.launcher)
            _plan_lines(plan_run(args.output_dir, bool(args.resume), inputs, False, max_steps), args.launcher)
            return 0
        check_settings(args.prompt_type, args.prompt_modality, args.model_preset, args.modalities)
        facts = preset_facts(args.model_preset or DEFAULT_PRESET, bool(args.need_tiny_twin))
        check_not_locked(args.output_dir)
        plan = plan_run(args.output_dir, bool(args.resume), inputs, bool(args.dry_run), max_steps)
        if args.reward_funcs is not None:
            check_rewards(args.reward_funcs, bool(args.plugins_given))
        if args.resolve_model is not None and not args.dry_run and plan.complete is None:
            from trainer.model_loading import ModelLookupError, resolve_model_files
            try:
                resolve_model_files(args.resolve_model or facts['preset_checkpoint'])
            except ModelLookupError as err:
                raise RunStateError(f'MODEL={err}') from None
    except RunStateError as err:
        print(f'{args.launcher}: {err}', file=sys.stderr)
        return 2
    _plan_lines(plan, args.launcher)
    for name, value in facts.items():
        print(f'{PRINT_PREFIX}{name}={value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
