"""The Phi-4-multimodal "speech base": the official speech LoRA merged into the base (docs/original.md §2.1, §7).

The original merges the checkpoint's speech LoRA (r 320, alpha 640, on qkv_proj/o_proj/gate_up_proj/
down_proj of every decoder layer) into the base weights before adding its own r 8 adapter, and serves
the result as a merged "speech base" with the trained adapter as vLLM's only LoRA, because vLLM can
switch LoRAs but not stack them. In transformers' native format the speech LoRA is a PEFT adapter
folder, ``speech-lora/``, next to the weights. This module merges it:

* in memory, when ms-swift loads a checkpoint that still has ``speech-lora/`` (the preset's loader);
* on disk, ``python -m trainer.models.phi4_speech_base --model DIR_OR_HUB_ID --out DIR``: safetensors
  weights plus the tokenizer, processor and generation files (the original's script forgot them), and
  ``speech_base.json`` recording the source and the merged adapter. An existing ``--out`` is never
  overwritten. The output has no ``speech-lora/`` folder, so it is never merged twice.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

SPEECH_LORA = 'speech-lora'
LORA_SUFFIXES = ('.lora_A.weight', '.lora_B.weight')
PEFT_PREFIX = 'base_model.model.'


def speech_lora_dir(model_dir: Union[str, Path]) -> Optional[Path]:
    """``<model_dir>/speech-lora`` when it holds a PEFT adapter, else None."""
    path = Path(model_dir) / SPEECH_LORA
    return path if (path / 'adapter_config.json').exists() else None


def _adapter_weights(lora_dir: Path) -> Dict[str, Any]:
    from safetensors.torch import load_file
    file = lora_dir / 'adapter_model.safetensors'
    if not file.exists():
        raise FileNotFoundError(f'{lora_dir} has adapter_config.json but no adapter_model.safetensors '
                                '(weights must be safetensors)')
    return load_file(str(file))


def lora_module_names(weights: Iterable[str]) -> List[str]:
    """Names (relative to the model) of the modules an adapter's weights belong to."""
    names = set()
    for key in weights:
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f'unexpected tensor {key!r} in the speech LoRA (only LoRA A/B weights are merged)')
        name = key[:-len(suffix)]
        names.add(name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name)
    return sorted(names)


def merge_speech_lora(model: Any, lora_dir: Union[str, Path]) -> Any:
    """Merge the PEFT adapter in ``lora_dir`` into ``model``'s weights; return the plain (unwrapped) model.

    The adapter is applied exactly to the modules its weights name (not to every module that shares a
    target name: the native audio encoder has its own ``o_proj``/``down_proj``), and every one of its
    tensors must load.
    """
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict
    lora_dir = Path(lora_dir)
    weights = _adapter_weights(lora_dir)
    config = LoraConfig.from_pretrained(str(lora_dir))
    config.target_modules = lora_module_names(weights)
    config.inference_mode = True
    missing = [n for n in config.target_modules if _get(model, n) is None]
    if missing:
        raise ValueError(f'the speech LoRA in {lora_dir} names modules the model does not have: {missing[:5]}')
    peft_model = PeftModel(model, config, adapter_name='speech')
    result = set_peft_model_state_dict(peft_model, weights, adapter_name='speech')
    lora_missing = [k for k in result.missing_keys if 'lora_' in k]
    if result.unexpected_keys or lora_missing:
        raise ValueError(f'the speech LoRA in {lora_dir} did not load cleanly: unexpected '
                         f'{list(result.unexpected_keys)[:5]}, missing {lora_missing[:5]}')
    merged = peft_model.merge_and_unload()
    logging.getLogger(__name__).warning('merged the speech LoRA %s (r %s, alpha %s) into %d modules '
                                        '(docs/original.md §2.1)',
                                        lora_dir, config.r, config.lora_alpha, len(config.target_modules))
    return merged  # peft's merge_and_unload also removes its peft_config (tests/test_compat.py)


def _get(model, name):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


PROCESSOR_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json',
                   'vocab.json', 'merges.txt', 'chat_template.jinja', 'chat_template.json',
                   'preprocessor_config.json', 'processor_config.json', 'generation_config.json')


def resolve_checkpoint(model: str, revision: Optional[str] = None) -> Path:
    """A local checkpoint directory, or a hub id downloaded with ``huggingface_hub`` (on a cluster)."""
    if Path(model).is_dir():
        return Path(model)
    if Path(model).exists() or model.startswith(('/', '.')):
        raise FileNotFoundError(f'{model} is not a checkpoint directory')
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(model, revision=revision))


def write_speech_base(model: str, out: Union[str, Path], revision: Optional[str] = None, dtype: str = 'auto') -> Path:
    """Merge ``model``'s ``speech-lora/`` into its weights and save the speech base to ``out``."""
    import shutil

    import torch
    from transformers import Phi4MultimodalForCausalLM, Phi4MultimodalProcessor
    out = Path(out)
    if out.exists():
        raise FileExistsError(f'{out} exists; the speech base is never overwritten (choose another --out)')
    src = resolve_checkpoint(model, revision)
    lora = speech_lora_dir(src)
    if lora is None:
        raise FileNotFoundError(f'{src} has no {SPEECH_LORA}/adapter_config.json: it is not a native-format '
                                'Phi-4-multimodal checkpoint with its speech LoRA (or it is a speech base already)')
    torch_dtype = dtype if dtype == 'auto' else getattr(torch, dtype)
    base = Phi4MultimodalForCausalLM.from_pretrained(str(src), dtype=torch_dtype)
    merged = merge_speech_lora(base, lora)
    lora_config = json.loads((lora / 'adapter_config.json').read_text())
    tmp = out.with_name(f'.{out.name}.partial-{os.getpid()}')
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        Phi4MultimodalProcessor.from_pretrained(str(src)).save_pretrained(str(tmp))
        for name in PROCESSOR_FILES:  # the source's own files win over re-serialised ones
            if (src / name).is_file():
                shutil.copy(src / name, tmp / name)
        (tmp / 'speech_base.json').write_text(json.dumps({
            'source': model, 'revision': revision, 'speech_lora': {
                k: lora_config.get(k) for k in ('r', 'lora_alpha', 'lora_dropout', 'target_modules')},
            'merged_modules': len(lora_module_names(_adapter_weights(lora))),
        }, indent=1))
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='native-format checkpoint: a directory or a hub id')
    parser.add_argument('--out', required=True, help='new directory for the speech base')
    parser.add_argument('--revision', default=None, help='hub revision holding the native format')
    parser.add_argument('--dtype', default='auto', choices=['auto', 'bfloat16', 'float16', 'float32'])
    args = parser.parse_args(argv)
    print(write_speech_base(args.model, args.out, args.revision, args.dtype))


if __name__ == '__main__':
    main()
