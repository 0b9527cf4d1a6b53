"""Planned against measured memory on the CPU (docs/memory.md §5): the tiny twins and the miniature model.

For each model, loaded from its cached folder in float32 with LoRA (r 8, dropout 0.05) on every Linear of the
LLM's decoder layers (peft, as ms-swift's ``all-linear``), in train mode, one forward of the LLM over
batch x length random tokens and a backward of its sum:

- measured activations: the bytes of the distinct storages autograd keeps for the backward (recorded with
  ``torch.autograd.graph.saved_tensors_hooks``; the model's parameters excluded) - what the activation formula
  of ``trainer.memory_plan`` counts;
- measured parameters: the loaded model's parameter count, against ``count_model`` on the meta device from the
  folder's config.json;
- measured step peak: a GRPO-like step (log-probabilities of a 128-token completion window, backward) in a
  fresh process per model: the process's peak resident memory (``ru_maxrss``) less its resident memory before
  the step, against the plan's components at float32 (activations, completion logits with their log-softmax and
  gradient, LoRA gradients).

``python -m scripts.memory_check [--batch 2 --length 512] [--out output/bench/memory_check.json]``
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from trainer import memory_plan as mp

FLOAT32 = 4
DROPOUT = 0.05
COMPLETION = 128   # completion tokens the loss reads (the rest of the sequence is prompt)


def _model_dir(name: str) -> Path:
    if name == 'miniature':
        from scripts.miniature.model import miniature_model_dir
        return miniature_model_dir()
    from scripts.recipes.tiny_models import tiny_model_dir
    return tiny_model_dir(name)


def _spec(name: str) -> mp.ModelSpec:
    return mp.MODEL_SPECS['qwen2_5_omni' if name == 'miniature' else name]


def _load(folder: Path, spec: mp.ModelSpec) -> Any:
    import torch
    import transformers
    return getattr(transformers, spec.model_class).from_pretrained(folder, dtype=torch.float32).train()


def _lora(model: Any, spec: mp.ModelSpec, rank: int = 8) -> Any:
    """peft LoRA on every Linear of the decoder layers; everything else frozen (ms-swift's all-linear + freeze)."""
    import torch
    from peft import LoraConfig, get_peft_model
    layers = model.get_submodule(spec.layers)
    targets = sorted({f'{spec.layers}.{n}' for n, m in layers.named_modules() if isinstance(m, torch.nn.Linear)})
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=32, lora_dropout=DROPOUT, target_modules=targets))


def measure(name: str, batch: int, length: int) -> Dict[str, Any]:
    """One model's measured figures beside the plan's (float32, LoRA r 8 with dropout, no checkpointing)."""
    import torch
    folder = _model_dir(name)
    spec = _spec(name)
    config = json.loads((folder / 'config.json').read_text())
    count = mp.count_model(spec, config)
    model = _load(folder, spec)
    n_loaded = sum(p.numel() for p in model.parameters())
    peft_model = _lora(model, spec)
    llm = peft_model.base_model.model.get_submodule(spec.layers.rsplit('.', 1)[0])
    params = {p.untyped_storage().data_ptr() for p in peft_model.parameters()}
    ids = torch.randint(0, count.shape.vocab, (batch, length), generator=torch.Generator().manual_seed(0))

    base = peft_model.base_model.model
    head = next(m for n, m in base.named_modules() if n.split('.')[-1] == 'lm_head')   # the LLM's output layer
    completion = min(COMPLETION, length)

    def step(record: Optional[Dict[int, int]], with_loss: bool) -> None:
        def pack(t: torch.Tensor) -> torch.Tensor:
            if record is not None:
                storage = t.untyped_storage()
                if storage.data_ptr() not in params:
                    record[storage.data_ptr()] = storage.nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            hidden = llm(input_ids=ids, use_cache=False).last_hidden_state
        if with_loss:   # GRPO's loss: log-probabilities of the completion window's tokens
            logp = head(hidden[:, -completion:]).float().log_softmax(-1)
            loss = -logp.gather(-1, ids[:, -completion:, None]).mean()
        else:
            loss = hidden.sum()
        loss.backward()
        peft_model.zero_grad(set_to_none=True)

    rss_before, peak_before = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step(None, with_loss=True)     # first, in a fresh process: the whole step's peak (activations, logits, grads)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    saved: Dict[int, int] = {}
    step(saved, with_loss=False)   # the activations alone (the formula's count)
    # on the CPU dropout keeps its mask as a float (a bool on a GPU)
    planned_act = mp.activation_bytes(count.shape, count.lora(8), batch * length, FLOAT32, checkpointing=False,
                                      dropout=DROPOUT > 0, mask_bytes=FLOAT32)
    planned_logits = batch * completion * count.shape.vocab * 3 * FLOAT32   # logits, log-softmax, gradient
    lora_states = count.lora_per_rank * 8 * 2 * FLOAT32                      # LoRA gradients (no optimizer)
    planned_step = planned_act + planned_logits + lora_states
    measured_step = peak_after - rss_before if peak_after > peak_before else None
    return {'model': name, 'folder': str(folder), 'batch': batch, 'length': length, 'completion': completion,
            'shape': count.shape.__dict__,
            'parameters_loaded': n_loaded, 'parameters_meta_count': sum(count.parts.values()),
            'activations_measured_bytes': sum(saved.values()), 'activations_planned_bytes': planned_act,
            'activations_ratio': round(sum(saved.values()) / planned_act, 3),
            'step_peak_measured_bytes': measured_step, 'step_peak_planned_bytes': planned_step,
            'step_peak_ratio': round(measured_step / planned_step, 3) if measured_step else None}


def _rss_bytes() -> int:
    """The process's resident memory now (Linux /proc/self/statm)."""
    import os
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['qwen2_5_omni', 'qwen2_audio', 'phi4_multimodal', 'miniature'])
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--length', type=int, default=512)
    p.add_argument('--one', help=argparse.SUPPRESS)   # run one model in this process (the parent's child)
    p.add_argument('--out', type=Path, default=Path('output/bench/memory_check.json'))
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.length)))
        return 0
    rows = []
    for name in args.models:   # a fresh process each: the peak RSS is per process
        proc = subprocess.run([sys.executable, '-m', 'scripts.memory_check', '--one', name, '--batch',
                               str(args.batch), '--length', str(args.length)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f'memory_check: {name} failed:\n{proc.stderr[-2000:]}', file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f'{name}: activations measured {r["activations_measured_bytes"] / 2**20:.2f} MiB, planned '
              f'{r["activations_planned_bytes"] / 2**20:.2f} MiB (ratio {r["activations_ratio"]}); parameters '
              f'{r["parameters_loaded"]} loaded, {r["parameters_meta_count"]} on meta; step peak measured '
              f'{(r["step_peak_measured_bytes"] or 0) / 2**20:.1f} MiB, planned '
              f'{r["step_peak_planned_bytes"] / 2**20:.1f} MiB (ratio {r["step_peak_ratio"]})')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(args.out)
    print(f'written: {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
