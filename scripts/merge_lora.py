"""Merge a trained LoRA adapter into its base for vLLM serving (ms-swift's export, reference section 7).

    python -m scripts.merge_lora --adapter output/grpo/RUN/checkpoint-N [--output DIR] [--base_model B] [--model_type T]

The merged model (safetensors, with the processor and tokenizer files) goes to ``DIR`` (default:
``<checkpoint>-merged``); an existing directory is never overwritten.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional


def merge_lora(adapter: str, output: Optional[str] = None, base_model: Optional[str] = None,
               model_type: Optional[str] = None) -> Path:
    """``model_type`` None: the checkpoint's own (``eval.engine.resolve_model``)."""
    from swift.pipelines import export_main

    from eval.engine import resolve_model
    from trainer.model_registry import register_models
    register_models()
    spec = resolve_model(adapter, base_model, model_type)
    if spec.adapter is None:
        raise ValueError(f'{adapter} holds no adapter_config.json: nothing to merge')
    out = Path(output or f'{adapter.rstrip("/")}-merged')
    if out.exists():
        raise FileExistsError(f'{out} exists; choose another --output')
    export_main(['--model', spec.base, '--model_type', spec.model_type, '--adapters', spec.adapter,
                 '--merge_lora', 'true', '--output_dir', str(out)])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--adapter', required=True)
    parser.add_argument('--output', default=None)
    parser.add_argument('--base_model', default=None)
    parser.add_argument('--model_type', default=None,
                        help="ms-swift model type (trainer.presets); default: the checkpoint's own, else qwen2_5_omni")
    args = parser.parse_args(argv)
    print(merge_lora(args.adapter, args.output, args.base_model, args.model_type))


if __name__ == '__main__':
    main()
