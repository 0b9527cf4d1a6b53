"""The embedded default of ``bash train_grpo.sh``: everything a CPU run needs, built offline and cached.

1. the tiny twin of a preset (``scripts.recipes.tiny_models``; Qwen2.5-Omni by default, any preset with a twin);
2. a small real speech QA set: MMLU questions with espeak-ng speech (``scripts.dataset_building.mmlu``);
3. a short SFT warm start (``swift sft``) on the set's text prompts with systhink answers, because a
   random model never writes the answer format and the format, accuracy and alignment rewards would
   all be zero.

Each artefact sits in the cache under a name hashed from its recipe and the content of its inputs (never
their paths: a clone in another folder, or a cache moved elsewhere, finds them), and is rebuilt only when
those change. ``python -m scripts.recipes.embedded [--model_type T]`` prints the model and dataset paths.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from trainer.presets import DEFAULT_PRESET, PRESETS, get_preset
from scripts.recipes.tiny_models import default_cache_dir, tiny_model_dir

SMALL_SET = {'n_rows': 300, 'max_chars': 140, 'seed': 0, 'test_rows': 40, 'espeak_wpm': 220}
WARM_START = {
    'steps': 64, 'learning_rate': 5e-3, 'batch_size': 8, 'prompt_type': 'systhink', 'seed': 0,
    'builder': 2,  # bump when the warm-start answer text changes
}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def folder_digest(folder: Path) -> str:
    """A key of the content of ``folder``: the relative path and bytes of every file under it (sorted), never
    where the folder is (an absent folder: the key of nothing). Hidden files and the ``cache-*.arrow`` files that
    ``datasets`` adds beside a loaded set's own are left out (they change on use, not with the content).
    About 0.2 s for the 72 MB small speech set."""
    digest = hashlib.sha256()
    root = Path(folder)
    files = sorted(Path(d, f) for d, _, names in os.walk(root) for f in names
                   if not f.startswith(('.', 'cache-'))) if root.is_dir() else []
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b'\0')
        with open(path, 'rb') as fh:
            for block in iter(lambda: fh.read(1 << 20), b''):
                digest.update(block)
        digest.update(b'\0')
    return digest.hexdigest()[:12]


def small_speech_set(cache: Path) -> Path:
    """The cached small MMLU speech set (a ``save_to_disk`` DatasetDict with train and test splits)."""
    from scripts.dataset_building.mmlu import build_speech_set
    from scripts.dataset_building.tts import EspeakTTS
    out = cache / 'data' / f'mmlu-speech-{_digest(SMALL_SET)}'
    if not (out / 'hf' / 'dataset_dict.json').exists():
        build_speech_set(out, n_rows=SMALL_SET['n_rows'], seed=SMALL_SET['seed'], max_chars=SMALL_SET['max_chars'],
                         test_rows=SMALL_SET['test_rows'], tts=EspeakTTS(rate=SMALL_SET['espeak_wpm']),
                         overwrite=True)
    return out / 'hf'


def warm_start_argv(model_dir: Path, data_jsonl: Path, output_dir: Path, recipe: Dict,
                    model_type: str = DEFAULT_PRESET, extra: Sequence[str] = ()) -> List[str]:
    """``swift sft`` flags of the warm start: full fine-tuning at a high constant rate (recipes/README).

    ``extra``: more ms-swift flags appended at the end (the miniature's stages: its schedule, the frozen parts);
    a flag given twice takes its last value, as in any argparse command line."""
    return [
        '--model', str(model_dir), '--model_type', model_type, '--dataset', str(data_jsonl),
        '--tuner_type', 'full', '--torch_dtype', 'float32', '--fp16', 'false', '--bf16', 'false',
        '--learning_rate', str(recipe['learning_rate']), '--lr_scheduler_type', 'constant_with_warmup',
        '--warmup_ratio', '0.05', '--per_device_train_batch_size', str(recipe['batch_size']),
        '--max_steps', str(recipe['steps']), '--save_steps', str(recipe['steps']), '--save_only_model', 'true',
        '--logging_steps', '10', '--gradient_checkpointing', 'false', '--dataloader_num_workers', '0',
        '--dataset_num_proc', '1', '--split_dataset_ratio', '0', '--report_to', 'none', '--check_model', 'false',
        '--seed', str(recipe['seed']), '--output_dir', str(output_dir), *extra,
    ]


def warm_started_model(model_dir: Path, dataset_dir: Path, cache: Path, recipe: Dict = WARM_START,
                       model_type: str = DEFAULT_PRESET) -> Path:
    """The tiny model after the SFT warm start, cached by (model, dataset, recipe): the model's folder name (the
    tiny twins' names are hashes of their recipes) and the dataset's content (``folder_digest``)."""
    out = cache / 'models' / f'{model_dir.name}-warm-{_digest(recipe, model_dir.name, folder_digest(dataset_dir))}'
    return sft_checkpoint(model_dir, dataset_dir, out, recipe, model_type)


def sft_checkpoint(model_dir: Path, dataset_dir: Path, out: Path, recipe: Dict, model_type: str = DEFAULT_PRESET,
                   *, modality: str = 'text', extra: Sequence[str] = (), max_rows: Optional[int] = None,
                   speech_answers: int = 0, speech_thinking: Optional[int] = None,
                   probe: Optional[Callable[[Dict, str], Dict]] = None) -> Path:
    """Full SFT of ``model_dir`` (``swift sft``, ``warm_start_argv`` + ``extra``) on the rows that
    ``trainer.data.prepare_warmstart_dataset`` writes from the train split of ``dataset_dir`` (its ``modality``,
    ``speech_answers``, ``speech_thinking`` and ``probe``, the first ``max_rows`` items); the last checkpoint is
    moved to ``out`` with ``warm_start.json`` (recipe, losses, wall seconds). Skipped when ``out`` holds one already;
    a killed run leaves only a temporary folder (removed), so a rerun starts over.

    The embedded default's warm start and the miniature's stages (scripts.miniature.stages) are such runs."""
    if (out / 'warm_start.json').exists():
        return out
    from trainer.model_loading import check_no_remote_code
    check_no_remote_code([str(model_dir)])  # our own twin; checked like any folder ms-swift loads
    from swift.pipelines import sft_main

    from trainer.data import prepare_warmstart_dataset
    from trainer.model_registry import register_models
    register_models()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix='.warm-', dir=out.parent))
    try:
        t0 = time.perf_counter()
        jsonl = prepare_warmstart_dataset(str(dataset_dir), work, recipe['prompt_type'], max_rows=max_rows,
                                          modality=modality, speech_answers=speech_answers,
                                          speech_thinking=speech_thinking, probe=probe)
        result = sft_main(warm_start_argv(model_dir, jsonl, work / 'sft', recipe, model_type, extra))
        checkpoint = Path(result['last_model_checkpoint'])
        losses = [e['loss'] for e in result.get('log_history', []) if 'loss' in e]
        (checkpoint / 'warm_start.json').write_text(json.dumps(
            {'recipe': recipe, 'extra': list(extra), 'modality': modality, 'speech_answers': speech_answers,
             'speech_thinking': speech_thinking, 'probe': getattr(probe, '__qualname__', None), 'losses': losses,
             'wall_seconds': round(time.perf_counter() - t0, 1)}, indent=1))
        if not out.exists():
            shutil.move(str(checkpoint), str(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def prepare(cache: Path, model_type: str = DEFAULT_PRESET) -> Dict[str, Path]:
    """Build (or find) the three artefacts for the preset ``model_type``; return their paths."""
    if not get_preset(model_type).has_tiny_twin:
        raise ValueError(f'MODEL_PRESET {model_type!r} has no tiny twin; the embedded default needs one '
                         f'(with twins: {sorted(k for k, p in PRESETS.items() if p.has_tiny_twin)})')
    model = tiny_model_dir(model_type, cache)
    data = small_speech_set(cache)
    return {'base_model': model, 'dataset': data, 'model': warm_started_model(model, data, cache,
                                                                             model_type=model_type)}


def run_cli(description: str, build: Callable[[Path, str], Dict[str, Path]], argv: Optional[List[str]] = None) -> None:
    """The recipes' command line: ``--cache_dir``, ``--model_type`` (or ``--preset_of CHECKPOINT``: the preset that
    checkpoint was trained with); prints ``model_type=T`` and ``NAME=PATH`` lines (read by the launchers) for
    what ``build(cache, model_type)`` returns."""
    from trainer.presets import detect_model_type
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--cache_dir', type=Path, default=None)
    parser.add_argument('--model_type', default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument('--preset_of', default=None, help="a checkpoint: build for its preset (its args.json's)")
    args = parser.parse_args(argv)
    model_type = args.model_type
    if args.preset_of:
        model_type = detect_model_type(args.preset_of) or parser.error(
            f'{args.preset_of}: no preset found (args.json / config.json model_type); pass --model_type')
    print(f'model_type={model_type}')
    for name, path in build(args.cache_dir or default_cache_dir(), model_type).items():
        print(f'{name}={path}')


def main(argv: Optional[List[str]] = None) -> None:
    run_cli('Build the embedded default (tiny model, speech set, warm start).', prepare, argv)


if __name__ == '__main__':
    main()
