"""The state of a run directory, for the launchers (train_grpo.sh, train_dpo.sh, train_sft.sh).

* Which checkpoint to resume: the newest *complete* one. transformers saves a checkpoint as weights, then
  optimizer and RNG state, then ``trainer_state.json``; a run killed during a save leaves a
  ``checkpoint-N`` folder without (or with a torn) ``trainer_state.json``, which
  ``transformers.trainer_utils.get_last_checkpoint`` would still pick, and every resume would fail.
* What a run was started with: ``run.json`` in the run directory records the launcher's inputs (dataset,
  prompt settings, model, rewards) once the data is prepared; a resume with other inputs is refused,
  naming each difference, and a resume of a prepared run does not prepare again.
* The launcher's input checks (reward names, prompt settings, presets), before any model is loaded.

``python -m trainer.run_state preflight ...`` does all checks at once and prints ``run_state:`` lines for
the launcher; ``python -m trainer.run_state record ...`` writes ``run.json`` after preparation.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


class RunStateError(ValueError):
    """An input or run-directory problem the launcher reports as one line."""


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
    its real checkpoint, whether vLLM serves it, and its launch settings (``trainer.presets``)."""
    preset = PRESETS[model_preset]
    if need_tiny_twin and not preset.has_tiny_twin:
        raise RunStateError(f'no tiny twin for MODEL_PRESET={model_preset} (presets with one: '
                            f'{" ".join(sorted(k for k, p in PRESETS.items() if p.has_tiny_twin))})')
    return {'preset_checkpoint': preset.checkpoint, 'preset_vllm': str(int(preset.vllm)),
            'preset_vllm_fraction': f'{preset.vllm_memory_fraction:g}', 'preset_vllm_limit_mm': preset.vllm_limit_mm,
            'preset_max_length': str(preset.max_length)}


@dataclass
class Plan:
    """What the launcher does: resume from ``checkpoint`` (None: from the start); skip data preparation
    when ``prepared``; ``notes`` to print."""
    checkpoint: Optional[Path]
    prepared: bool
    notes: List[str]


def plan_run(output_dir: Path, resume: bool, inputs: Dict[str, str], dry_run: bool = False) -> Plan:
    """Check ``output_dir`` against the request and decide how to start.

    A new run needs an absent or empty ``output_dir`` (a dry run only prints). A resume needs the inputs
    recorded in ``run.json`` (when there is one) to be the same; it continues from the newest complete
    checkpoint, and names the incomplete ones it skips."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise RunStateError(f'OUTPUT_DIR {output_dir} exists and is not a directory')
    notes: List[str] = []
    if not resume:
        if output_dir.is_dir() and any(output_dir.iterdir()) and not dry_run:
            raise RunStateError(f'{output_dir} exists; set RESUME=1 to resume it or choose another OUTPUT_DIR')
        return Plan(None, False, notes)
    manifest = read_manifest(output_dir)
    if manifest is not None:
        diff = input_differences(manifest['inputs'], inputs)
        if diff:
            raise RunStateError(f'RESUME=1 with other inputs than {output_dir / MANIFEST} records: '
                                f'{"; ".join(diff)} (restore them, or start a new OUTPUT_DIR)')
    elif output_dir.is_dir():
        notes.append(f'{output_dir} has no {MANIFEST} (a start that failed before its data was ready, or an older '
                     'launcher): preparing the data')
    checkpoint, skipped = last_complete_checkpoint(output_dir)
    for path, problem in skipped:
        notes.append(f'skipping {path}: incomplete ({problem}; a save that was interrupted)')
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Run-directory checks for the launchers.')
    sub = parser.add_subparsers(dest='command', required=True)
    pre = sub.add_parser('preflight', help='check inputs and OUTPUT_DIR; print the checkpoint to resume')
    pre.add_argument('--launcher', required=True)
    pre.add_argument('--output_dir', required=True, type=Path)
    pre.add_argument('--resume', type=int, choices=[0, 1], default=0)
    pre.add_argument('--dry_run', type=int, choices=[0, 1], default=0)
    pre.add_argument('--input', action='append', default=[], help='NAME=VALUE, an input run.json records')
    pre.add_argument('--reward_funcs', nargs='*', default=None)
    pre.add_argument('--plugins_given', type=int, choices=[0, 1], default=0)
    pre.add_argument('--prompt_type', default=None)
    pre.add_argument('--prompt_modality', default=None)
    pre.add_argument('--modalities', nargs='*', default=None, help='allowed PROMPT_MODALITY values')
    pre.add_argument('--model_preset', default=None)
    pre.add_argument('--need_tiny_twin', type=int, choices=[0, 1], default=0,
                     help='1: the embedded default, whose preset must have a tiny twin')
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
        check_settings(args.prompt_type, args.prompt_modality, args.model_preset, args.modalities)
        facts = preset_facts(args.model_preset or DEFAULT_PRESET, bool(args.need_tiny_twin))
        plan = plan_run(args.output_dir, bool(args.resume), inputs, bool(args.dry_run))
        if args.reward_funcs is not None:
            check_rewards(args.reward_funcs, bool(args.plugins_given))
    except RunStateError as err:
        print(f'{args.launcher}: {err}', file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f'{args.launcher}: {note}', file=sys.stderr)
    print(f'{PRINT_PREFIX}checkpoint={plan.checkpoint or ""}')
    print(f'{PRINT_PREFIX}prepared={int(plan.prepared)}')
    for name, value in facts.items():
        print(f'{PRINT_PREFIX}{name}={value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
