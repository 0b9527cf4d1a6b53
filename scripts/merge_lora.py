"""Merge a trained LoRA adapter into its base for vLLM serving (ms-swift's export, docs/original.md §7).

    python -m scripts.merge_lora --adapter output/grpo/RUN/checkpoint-N [--output DIR] [--base_model B] [--model_type T]

The merged model (safetensors, with the processor and tokenizer files) goes to ``DIR`` (default:
``<checkpoint>-merged``); an existing directory is never overwritten. A base or checkpoint folder that would
run its own code is refused unless ``--trust_remote_code`` (``trainer.model_loading``), and a damaged weight file
(cut short) is refused before anything loads.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from trainer.engine import resolve_model
from trainer.merge import export_argv, merge_into
from trainer.model_loading import add_trust_remote_code_argument

__all__ = ['export_argv', 'merge_lora', 'main']


def merge_lora(adapter: str, output: Optional[str] = None, base_model: Optional[str] = None,
               model_type: Optional[str] = None, trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into its base with ms-swift's export (``trainer.merge.merge_into``); return the merged
    model's folder.

    ``model_type`` None: the checkpoint's own (``trainer.engine.resolve_model``)."""
    spec = resolve_model(adapter, base_model, model_type)
    if spec.adapter is None:
        raise ValueError(f'{adapter} holds no adapter_config.json: nothing to merge')
    out = Path(output or f'{adapter.rstrip("/")}-merged')
    return merge_into(spec.base, spec.model_type, spec.adapter, out, trust_remote_code)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--adapter', required=True)
    parser.add_argument('--output', default=None)
    parser.add_argument('--base_model', default=None)
    parser.add_argument('--model_type', default=None,
                        help="ms-swift model type (trainer.presets); default: the checkpoint's own, else qwen2_5_omni")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    print(merge_lora(args.adapter, args.output, args.base_model, args.model_type, args.trust_remote_code))


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'scripts.merge_lora')
