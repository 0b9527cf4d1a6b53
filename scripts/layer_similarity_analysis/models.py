"""Loading the model under analysis as the thinker: the part of the model that holds the audio encoder
and the LLM whose hidden states are compared (Qwen2.5-Omni's ``thinker``; the whole model for presets
without a talker, such as Qwen2-Audio; docs/original.md §8 runs the whole Phi-4-MM model).

``--model`` may be
* a base or merged checkpoint (a directory with config.json, or a hub id): the thinker is loaded from it;
* a LoRA checkpoint from our GRPO runs (``adapter_config.json`` + ``adapter_model.safetensors``; ms-swift
  trains the adapter on the full ``Qwen2_5OmniForConditionalGeneration``, so its module names start
  with ``thinker.``): the thinker of its base is loaded, the adapter applied under those names, then
  merged (a whole-model thinker takes the adapter as it is). The base is found as the evaluation finds it
  (``trainer.engine.resolve_model``: ``--base_model``,
  else the adapter's ``base_model_name_or_path``, else ms-swift's ``args.json``).
The processor comes from the checkpoint, else from the base.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from trainer.engine import resolve_model
from trainer.model_loading import check_no_remote_code
from trainer.models.phi4_speech_base import merge_speech_lora, speech_lora_dir
from trainer.presets import get_preset

log = logging.getLogger(__name__)

# ms-swift model type -> (transformers class of the part with the LLM, its attribute in the full model;
# None when that part is the full model)
@dataclass
class LoadedModel:
    thinker: nn.Module
    processor: object
    model: str                   # what was asked for
    base_model: Optional[str]    # the base a LoRA adapter was applied to (None otherwise)


def resolve_device(device: str = 'auto') -> torch.device:
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    return getattr(torch, dtype)


class _Holder(nn.Module):
    """Gives the thinker its module path inside the full model, so adapter names like
    ``thinker.model.layers.0.self_attn.q_proj`` match without loading the talker."""

    def __init__(self, attr: str, thinker: nn.Module) -> None:
        super().__init__()
        self.attr = attr
        self.add_module(attr, thinker)


def apply_adapter(thinker: nn.Module, adapter_dir: str, prefix: Optional[str]) -> nn.Module:
    """Apply the LoRA in ``adapter_dir`` to ``thinker`` and merge it; every adapter tensor must load.
    ``prefix``: the thinker's attribute in the full model the adapter was trained on (None: the same model)."""
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    saved = load_peft_weights(adapter_dir, device='cpu')
    nested = prefix is not None and any(k.startswith(f'base_model.model.{prefix}.') for k in saved)
    config = PeftConfig.from_pretrained(adapter_dir)
    config.task_type = None  # a plain PeftModel: the holder below is not a causal LM
    target = _Holder(prefix, thinker) if nested else thinker
    peft_model = PeftModel.from_pretrained(target, adapter_dir, config=config)
    applied = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    if not saved or set(saved) != applied:
        missing = sorted(set(saved) - applied)[:3]
        raise RuntimeError(f'{adapter_dir}: the adapter does not fit the model ({len(saved)} saved tensors, '
                           f'{len(applied)} applied; e.g. not applied: {missing})')
    merged = peft_model.merge_and_unload()
    return getattr(merged, prefix) if nested else merged


def load_model(model: str, base_model: Optional[str] = None, model_type: Optional[str] = None,
               device: str = 'auto', dtype: str = 'auto', trust_remote_code: bool = False) -> LoadedModel:
    """Load the thinker (LoRA merged in) and the processor of ``model``, in eval mode on ``device``.
    ``model_type`` None: the checkpoint's own (``trainer.engine.resolve_model``). A folder that would run its
    own code is refused unless ``trust_remote_code`` (``trainer.model_loading``), which then reaches the loaders."""
    import transformers
    spec = resolve_model(model, base_model, model_type)
    check_no_remote_code([model, spec.base, spec.adapter], trust_remote_code)
    get_preset(spec.model_type)
    preset = get_preset(spec.model_type)  # the class with every layer's states, and where the full model holds it
    cls_name, attr = preset.llm_class, preset.llm_attribute
    cls = getattr(transformers, cls_name)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    thinker = cls.from_pretrained(spec.base, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    # the official speech LoRA merged first, as training did (docs/original.md §2.1)
    if spec.model_type == 'phi4_multimodal':
        if Path(spec.base).is_dir() and speech_lora_dir(spec.base) is not None:
            thinker = merge_speech_lora(thinker, speech_lora_dir(spec.base))
    if spec.adapter:
        log.info('applying the LoRA of %s to %s', spec.adapter, spec.base)
        thinker = apply_adapter(thinker, spec.adapter, attr)
    has_processor = any((Path(model) / f).exists() for f in ('processor_config.json', 'preprocessor_config.json'))
    processor = transformers.AutoProcessor.from_pretrained(model if has_processor else spec.base,
                                                           trust_remote_code=trust_remote_code)
    if getattr(processor, 'chat_template', None) is None and getattr(processor, 'tokenizer', None) is not None:
        processor.chat_template = processor.tokenizer.chat_template  # Phi4MultimodalProcessor drops it on load
    return LoadedModel(thinker.to(dev).eval(), processor, model, spec.base if spec.adapter else None)
