"""The GPU smoke test (docs/memory.md §6): on one GPU, offline, a few minutes; run by ``bash scripts/gpu_smoke.sh``.

1. the embedded GRPO run (the tiny warm-started Qwen2.5-Omni twin and the small MMLU speech set, both built
   offline and cached by ``scripts.recipes.embedded``) in bf16 with colocated vLLM at the memory plan's vLLM
   share, flash-attention when installed, all four TARS rewards;
2. the vLLM evaluation of that model (``eval.qa --backend vllm``, speech and text).

Each runs in its own process under ``python -m scripts.gpu_smoke child``, which records the process's
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` when it ends. vLLM's own figures (model weights,
KV cache) come from its log. ``<out>/gpu_smoke.json`` puts them beside the plan's figures for the same settings
(``trainer.memory_plan`` on the twin's own config.json), with the step times from ms-swift's logging.jsonl.
Nothing is downloaded (HF_HUB_OFFLINE, MODELSCOPE_OFFLINE).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from trainer import memory_plan as mp

PRESET = 'qwen2_5_omni'
# The run's size: a few minutes on one GPU, most of it start-up (vLLM's profiling, CUDA graphs).
SMOKE = {'max_steps': 6, 'batch': 8, 'num_generations': 4, 'max_completion_length': 64, 'max_model_len': 2048,
         'eval_items': 16, 'eval_batch': 16, 'min_fraction': 0.10}
OFFLINE = {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'MODELSCOPE_OFFLINE': '1',
           'USE_HF': '1', 'TOKENIZERS_PARALLELISM': 'false'}
# vLLM's start-up log lines with its own memory figures (GiB)
VLLM_PATTERNS = {'vllm_weights_gib': r'Model loading took ([\d.]+) GiB',
                 'vllm_kv_cache_gib': r'Available KV cache memory: ([\d.]+) GiB'}


def smoke_settings(fraction: float) -> mp.Settings:
    """The plan settings of the smoke run's GRPO command (one GPU, bf16, colocated vLLM, no DeepSpeed)."""
    return mp.Settings(preset=PRESET, kind='grpo', gpus=1, batch_per_gpu=SMOKE['batch'], grad_accum=1,
                       max_completion_length=SMOKE['max_completion_length'], max_length=SMOKE['max_model_len'],
                       max_audio_seconds=0, deepspeed='none', gradient_checkpointing=False, use_vllm=True,
                       vllm_memory_fraction=fraction, vllm_max_model_len=SMOKE['max_model_len'], vllm_vision=False,
                       embedder=None, representation=True)


def smoke_plan(model_dir: Path, gpu_gib: float, fraction: Optional[float] = None) -> mp.Plan:
    """The plan of the smoke run on the twin's own configuration; ``fraction`` None: the plan's smallest vLLM
    share that holds every sequence (at least ``SMOKE['min_fraction']``: vLLM's start-up is not planned finely)."""
    count = mp.count_model(mp.MODEL_SPECS[PRESET], json.loads((model_dir / 'config.json').read_text()))
    plan = mp.make_plan(smoke_settings(fraction or 0.5), gpu_gib, count=count)
    if fraction is None:
        needed = plan.vllm_budget_gib - plan.vllm_kv_gib + plan.vllm_wanted_sequences * SMOKE['max_model_len'] * \
            mp.kv_bytes_per_token(count.shape) / mp.GIB
        fraction = max(SMOKE['min_fraction'], round(needed / gpu_gib + 0.005, 2))
        plan = mp.make_plan(smoke_settings(fraction), gpu_gib, count=count)
    return plan


def grpo_command(model: Path, data: Path, out: Path, fraction: float, flash: bool) -> List[str]:
    """The embedded GRPO run on the GPU: bf16, colocated vLLM at ``fraction``, the four TARS rewards."""
    return [sys.executable, '-m', 'scripts.gpu_smoke', 'child', '--measure', str(out / 'measured.json'),
            'trainer.grpo', '--model', str(model), '--model_type', PRESET, '--dataset', str(data),
            '--split_dataset_ratio', '0', '--check_model', 'false', '--add_version', 'false', '--output_dir', str(out),
            '--dump_rollouts', str(out / 'rollouts.jsonl'), '--torch_dtype', 'bfloat16', '--bf16', 'true',
            '--attn_impl', 'flash_attn' if flash else 'sdpa', '--use_vllm', 'true', '--vllm_mode', 'colocate',
            '--vllm_gpu_memory_utilization', f'{fraction:g}', '--vllm_max_model_len', str(SMOKE['max_model_len']),
            '--vllm_limit_mm_per_prompt', '{"audio": 1, "image": 0, "video": 0}', '--sleep_level', '0',
            '--num_generations', str(SMOKE['num_generations']), '--per_device_train_batch_size', str(SMOKE['batch']),
            '--gradient_accumulation_steps', '1', '--max_completion_length', str(SMOKE['max_completion_length']),
            '--max_steps', str(SMOKE['max_steps']), '--learning_rate', '1e-4', '--warmup_ratio', '0',
            '--logging_steps', '1', '--save_strategy', 'no', '--report_to', 'none', '--gradient_checkpointing',
            'false', '--dataloader_num_workers', '0', '--dataset_num_proc', '1', '--seed', '42']


def eval_command(model: Path, dataset: Path, out: Path, fraction: float) -> Tuple[List[str], Dict[str, str]]:
    """The vLLM evaluation (speech and text modes) of the same model on the small set's test split, and the
    environment that sets its vLLM share (trainer.engine reads VLLM_GPU_MEMORY_UTILIZATION)."""
    return [sys.executable, '-m', 'scripts.gpu_smoke', 'child', '--measure', str(out / 'measured.json'),
            'eval.qa', '--model', str(model), '--dataset', f'MMLU={dataset}', '--split', 'test', '--modes', 'audio',
            'text', '--max_items', str(SMOKE['eval_items']), '--max_new_tokens', str(SMOKE['max_completion_length']),
            '--batch_size', str(SMOKE['eval_batch']), '--backend', 'vllm', '--out', str(out)], {
                'VLLM_GPU_MEMORY_UTILIZATION': f'{fraction:g}'}


def vllm_figures(log: str) -> Dict[str, Optional[float]]:
    """vLLM's own memory figures from its log (the last of each; None when absent)."""
    found: Dict[str, Optional[float]] = {}
    for key, pattern in VLLM_PATTERNS.items():
        values = re.findall(pattern, log)
        found[key] = float(values[-1]) if values else None
    return found


def step_times(logging_jsonl: Path) -> List[float]:
    """Seconds of each optimizer step from ms-swift's logging.jsonl: its ``train_speed(s/it)`` is the mean over the
    steps so far, so step k ends at k x speed_k (the first step includes the start of the loop)."""
    if not logging_jsonl.exists():
        return []
    ends = [0.0]
    for line in logging_jsonl.read_text().splitlines():
        entry = json.loads(line)
        if 'global_step/max_steps' in entry and 'train_speed(s/it)' in entry:
            step = int(str(entry['global_step/max_steps']).split('/')[0])
            ends.append(step * float(entry['train_speed(s/it)']))
    return [round(b - a, 3) for a, b in zip(ends[:-1], ends[1:], strict=True)]


def report(plan: mp.Plan, runs: Dict[str, Dict[str, Any]], device: str) -> Dict[str, Any]:
    """The JSON of the smoke test: the plan (GiB) beside each run's measured figures."""
    return {'device': device, 'plan': mp.plan_dict(plan),
            'planned_training_gib': round(plan.train_peak_gib - plan.vllm_budget_gib - mp.CUDA_RESERVE_GIB, 3),
            'planned_vllm_gib': round(plan.vllm_budget_gib, 3), 'runs': runs}


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Write ``data`` atomically (a kill never leaves a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def child(argv: List[str]) -> int:
    """Run ``module args...`` in this process, then record its CUDA peak memory in ``--measure`` (also on failure)."""
    p = argparse.ArgumentParser()
    p.add_argument('--measure', type=Path, required=True)
    p.add_argument('module')
    args, rest = p.parse_known_args(argv)
    import torch
    code, start, argv_before = 0, time.time(), sys.argv
    sys.argv = [args.module] + rest
    try:
        runpy.run_module(args.module, run_name='__main__')
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = argv_before
        gib = 2 ** 30
        write_json(args.measure, {
            'exit_code': code, 'wall_s': round(time.time() - start, 1),
            'max_memory_allocated_gib': round(torch.cuda.max_memory_allocated() / gib, 3),
            'max_memory_reserved_gib': round(torch.cuda.max_memory_reserved() / gib, 3)})
    return code


def run_logged(cmd: List[str], env: Dict[str, str], log: Path) -> int:
    """Run ``cmd`` with its output in ``log`` (and a line on the console)."""
    print('+', ' '.join(cmd), flush=True)
    with log.open('w') as handle:
        return subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'child':
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path(f'output/gpu_smoke/{time.strftime("%Y%m%d_%H%M%S")}'))
    p.add_argument('--vllm_fraction', type=float, default=None, help="default: the plan's")
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print('gpu_smoke: no CUDA device visible; this test needs one GPU', file=sys.stderr)
        return 2
    if args.out.exists():
        print(f'gpu_smoke: {args.out} exists; give a new --out', file=sys.stderr)
        return 2
    from scripts.recipes.embedded import prepare
    from scripts.recipes.tiny_models import default_cache_dir
    from trainer.data import prepare_grpo_dataset
    embedded = prepare(default_cache_dir())
    model, dataset = Path(embedded['model']), Path(embedded['dataset'])
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / mp.GIB
    device = f'{torch.cuda.get_device_name(0)}, {gpu_gib:.1f} GiB'
    plan = smoke_plan(model, gpu_gib, args.vllm_fraction)
    print(mp.format_plan(plan), flush=True)
    fraction = plan.settings.vllm_memory_fraction
    data = prepare_grpo_dataset(str(dataset), args.out / 'data', max_rows=SMOKE['batch'] * SMOKE['max_steps'])
    env = dict(os.environ, **OFFLINE)
    flash = importlib.util.find_spec('flash_attn') is not None
    runs: Dict[str, Dict[str, Any]] = {}
    grpo_out, eval_out = args.out / 'grpo', args.out / 'eval'
    grpo_out.mkdir(parents=True)
    eval_out.mkdir(parents=True)
    code = run_logged(grpo_command(model, data, grpo_out, fraction, flash), env, grpo_out / 'log.txt')
    runs['grpo'] = {'exit_code': code, 'flash_attn': flash, 'step_times_s': step_times(grpo_out / 'logging.jsonl'),
                    'swift_memory_gib': _last(grpo_out / 'logging.jsonl', 'memory(GiB)'),
                    **vllm_figures((grpo_out / 'log.txt').read_text(errors='replace')),
                    **_read(grpo_out / 'measured.json')}
    cmd, extra = eval_command(model, dataset, eval_out, fraction)
    code = run_logged(cmd, dict(env, **extra), eval_out / 'log.txt')
    runs['eval'] = {'exit_code': code, **vllm_figures((eval_out / 'log.txt').read_text(errors='replace')),
                    **_read(eval_out / 'measured.json')}
    result = report(plan, runs, device)
    write_json(args.out / 'gpu_smoke.json', result)
    print(json.dumps(result['runs'], indent=1))
    print(f'written: {args.out / "gpu_smoke.json"}')
    return 0 if all(r['exit_code'] == 0 for r in runs.values()) else 1


def _last(logging_jsonl: Path, key: str) -> Optional[float]:
    """The last value of ``key`` in a logging.jsonl (ms-swift's ``memory(GiB)``: its max reserved memory)."""
    values = [json.loads(line).get(key) for line in logging_jsonl.read_text().splitlines()] \
        if logging_jsonl.exists() else []
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def _read(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


if __name__ == '__main__':
    sys.exit(main())
