"""vLLM serving of a trained Phi-4-multimodal adapter (docs/original.md §7).

vLLM switches LoRAs per request but cannot stack them, so the original serves the *speech base* (the
official speech LoRA merged into the weights, ``trainer.models.phi4_speech_base``) with the trained
r 8 adapter as vLLM's only LoRA; or the fully merged model (``python -m scripts.merge_lora``) with no
LoRA at all. ``vllm_serve_command`` builds either command line with the original's evaluation
settings (max_model_len 6400, gpu_memory_utilization 0.45, one audio per prompt).

Caveat (not run here, no GPU): the checkpoints this preset writes are in transformers' native format
(``Phi4MultimodalForCausalLM``). vLLM implemented that class only until it dropped it (vllm-project/vllm
#30049, Dec 2025, "no longer compatible with vLLM on the latest Transformers (v5)"); later vLLM releases,
including the GPU stack's pin, load Phi-4-MM only in its remote-code layout (``Phi4MMForCausalLM``).
Serve with a vLLM release that still lists ``Phi4MultimodalForCausalLM``, or evaluate this preset with
the transformers backend (``--backend transformers``).

    python -m trainer.models.phi4_serving --adapter output/grpo/RUN/checkpoint-N [--merged DIR]
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

from trainer.models.phi4_speech_base import speech_lora_dir

ADAPTER_NAME = 'tars'
ENGINE_SETTINGS = {'--max-model-len': '6400', '--gpu-memory-utilization': '0.45', '--dtype': 'bfloat16',
                   '--limit-mm-per-prompt': json.dumps({'audio': 1})}


def adapter_base(adapter: str) -> str:
    """The base an adapter checkpoint was trained on (``base_model_name_or_path``, else ms-swift's args.json)."""
    path = Path(adapter)
    config = path / 'adapter_config.json'
    if not config.exists():
        raise FileNotFoundError(f'{adapter} has no adapter_config.json: not a LoRA checkpoint')
    base = json.loads(config.read_text()).get('base_model_name_or_path')
    if (not base or not Path(base).exists()) and (path / 'args.json').exists():
        base = json.loads((path / 'args.json').read_text()).get('model') or base
    if not base:
        raise ValueError(f'{adapter}: cannot tell its base model; pass --base')
    return base


def vllm_serve_command(adapter: Optional[str] = None, base: Optional[str] = None, merged: Optional[str] = None,
                       port: int = 8000, tensor_parallel_size: int = 1) -> List[str]:
    """``vllm serve`` argv: the speech base + ``adapter`` as the only LoRA, or a fully ``merged`` model alone."""
    if merged:
        model, lora = merged, []
    else:
        if adapter is None:
            raise ValueError('give an adapter checkpoint (served on its speech base) or a merged model')
        model = base or adapter_base(adapter)
        if Path(model).is_dir() and speech_lora_dir(model) is not None:
            raise ValueError(f'{model} still holds the official speech LoRA as {model}/speech-lora; vLLM cannot '
                             'stack it under the trained adapter. Write the speech base first: python -m '
                             f'trainer.models.phi4_speech_base --model {model} --out SPEECH_BASE, '
                             'then pass --base SPEECH_BASE')
        rank = json.loads((Path(adapter) / 'adapter_config.json').read_text()).get('r', 8)
        lora = ['--enable-lora', '--max-loras', '1', '--max-lora-rank', str(_vllm_rank(rank)),
                '--lora-modules', f'{ADAPTER_NAME}={adapter}']
    argv = ['vllm', 'serve', str(model), '--port', str(port), '--tensor-parallel-size', str(tensor_parallel_size)]
    for key, value in ENGINE_SETTINGS.items():
        argv += [key, value]
    return argv + lora


def _vllm_rank(rank: int) -> int:
    """vLLM accepts max_lora_rank from a fixed set; the smallest that holds ``rank``."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f'LoRA rank {rank} exceeds what vLLM serves (512)')


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--adapter', default=None, help='trained LoRA checkpoint')
    parser.add_argument('--base', default=None, help='speech base (default: the adapter\'s own base)')
    parser.add_argument('--merged', default=None, help='a fully merged model instead (scripts.merge_lora)')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--tensor_parallel_size', type=int, default=1)
    args = parser.parse_args(argv)
    print(shlex.join(vllm_serve_command(args.adapter, args.base, args.merged, args.port, args.tensor_parallel_size)))


if __name__ == '__main__':
    main()
