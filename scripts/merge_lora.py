"""Merge a trained LoRA adapter into its base for vLLM serving (ms-swift's export, docs/original.md §7).

    python -m scripts.merge_lora --adapter output/grpo/RUN/checkpoint-N [--output DIR] [--base_model B] [--model_type T]

The merged model (safetensors, with the processor and tokenizer files) goes to ``DIR`` (default:
``<checkpoint>-merged``); an existing directory is never overwritten. A base or checkpoint folder that would
run its own code is refused unless ``--trust_remote_code`` (``trainer.model_loading``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from trainer.engine import resolve_model
from trainer.grpo import PLUGIN
from trainer.model_loading import add_trust_remote_code_argument, check_no_remote_code
from trainer.model_registry import register_models


def merge_lora(adapter: str, output: Optional[str] = None, base_model: Optional[str] = None,
               model_type: Optional[str] = None, trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into its base with ms-swift's export; return the merged model's folder.

    ``model_type`` None: the checkpoint's own (``trainer.engine.resolve_model``)."""
    spec = resolve_model(adapter, base_model, model_type)
    if spec.adapter is None:
        raise ValueError(f'{adapter} holds no adapter_config.json: nothing to merge')
    out = Path(output or f'{adapter.rstrip("/")}-merged')
    if out.exists():
        raise FileExistsError(f'{out} exists; choose another --output')
    check_no_remote_code([spec.base, spec.adapter], trust_remote_code)
    from swift.pipelines import export_main  # deferred: ms-swift takes seconds to import; checks run first
    register_models()
    export_main(export_argv(spec.base, spec.model_type, spec.adapter, out))
    return out


def export_argv(base: str, model_type: str, adapter: str, out: Path) -> List[str]:
    """``swift export`` flags of the merge. The TARS plugin is passed explicitly: without plugins on the
    command line ms-swift would import the ``external_plugins`` listed in the checkpoint's ``args.json``."""
    return ['--model', base, '--model_type', model_type, '--adapters', adapter, '--merge_lora', 'true',
            '--output_dir', str(out), '--external_plugins', str(PLUGIN)]


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
    main()
