"""Model presets: one row per supported architecture (docs/design.md §4), named by ms-swift model type.

A row carries everything the project needs to know about the architecture: its real checkpoint, its ms-swift
registration, whether vLLM serves it, the transformers class and LLM attribute the layer analysis loads, and
the builder of its tiny random-weight twin. On GPUs a preset runs its real checkpoint; on the CPU its twin,
loaded through the same ms-swift model type and code path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Preset:
    model_type: str      # ms-swift model type (also the template)
    checkpoint: str      # the real checkpoint (hub id)
    # transformers class whose forward gives every layer's hidden states (the layer analysis loads it), and the
    # attribute under which the full model holds it (None: the class is the full model)
    llm_class: str
    llm_attribute: Optional[str] = None
    # module whose register() registers the model type and template with ms-swift (trainer.model_registry);
    # None when ms-swift's own registration works with our transformers
    registration: Optional[str] = None
    # whether the GPU stack's vLLM serves this architecture (rollouts and evaluation); else transformers
    vllm: bool = True
    # 'module:function' building the tiny random-weight twin (a recipe, above the core: named, not imported;
    # scripts.recipes.tiny_models resolves it); None: no twin
    tiny_twin: Optional[str] = None
    # Per-model launch settings, chosen with the memory plan (docs/memory.md §4: the paper's batch on 8 x A100-80
    # with >= 10 % headroom): the colocated vLLM's share of each GPU, and its modality limits (image and video 0
    # let vLLM skip the vision tower, which the speech prompts never use)
    vllm_memory_fraction: float = 0.15
    vllm_limit_mm: str = '{"audio": 1}'
    # ms-swift's --vllm_tensor_parallel_size: the ranks that share one colocated vLLM engine, whose weights and KV
    # cache it splits among them (a 30 B model's bf16 copy, 58 GiB, would otherwise sit whole on every GPU)
    vllm_tensor_parallel: int = 1
    # ms-swift's --max_length and --vllm_max_model_len: the paper's 8192-token prompts + 512 completion tokens,
    # or the model's max_position_embeddings when that is shorter (vLLM refuses a longer max_model_len)
    max_length: int = 8704
    # the DeepSpeed stage the cluster launchers use unless DEEPSPEED is set: ZeRO-2 keeps a full bf16 copy of the
    # weights on every GPU, which a 30 B model (59 GiB) plus its colocated vLLM copy cannot afford
    deepspeed: str = 'zero2'
    # hand ms-swift the LLM's LoRA targets as full module names (trainer.lora_targets): for the MoE model types
    # transformers 5 re-lays, peft reduces ms-swift's LLM-scoped regex to bare leaf names, which the audio
    # encoder's attention also has (huggingface/peft #3232)
    lora_target_names: bool = False
    # other released checkpoints of the same architecture (detected as this preset)
    other_checkpoints: Tuple[str, ...] = ()

    @property
    def has_tiny_twin(self) -> bool:
        return self.tiny_twin is not None


DEFAULT_PRESET = 'qwen2_5_omni'
_TWINS = 'scripts.recipes.tiny_models'

PRESETS: Dict[str, Preset] = {
    'qwen2_5_omni': Preset('qwen2_5_omni', 'Qwen/Qwen2.5-Omni-7B',
                           llm_class='Qwen2_5OmniThinkerForConditionalGeneration', llm_attribute='thinker',
                           tiny_twin=f'{_TWINS}:QWEN2_5_OMNI', vllm_memory_fraction=0.30,
                           vllm_limit_mm='{"audio": 1, "image": 0, "video": 0}'),
    'qwen2_audio': Preset('qwen2_audio', 'Qwen/Qwen2-Audio-7B-Instruct',
                          llm_class='Qwen2AudioForConditionalGeneration', registration='trainer.models.qwen2_audio',
                          tiny_twin=f'{_TWINS}:QWEN2_AUDIO', vllm_memory_fraction=0.40, max_length=8192),
    # vLLM dropped the native Phi4MultimodalForCausalLM (vllm-project/vllm #30049): transformers rollouts
    'phi4_multimodal': Preset('phi4_multimodal', 'microsoft/Phi-4-multimodal-instruct',
                              llm_class='Phi4MultimodalForCausalLM', registration='trainer.models.phi4_multimodal',
                              vllm=False, tiny_twin=f'{_TWINS}:PHI4_MULTIMODAL'),
    # Qwen3-Omni-30B-A3B with its talker disabled (ms-swift loads the thinker only, ENABLE_AUDIO_OUTPUT=0); the
    # -Thinking checkpoint has the same architecture. Its bf16 weights are 59 GiB: the training side shards them
    # (ZeRO-3) and each pair of GPUs shares one vLLM engine (tensor parallel 2), which gets 0.45 of each GPU
    # (docs/memory.md §3)
    'qwen3_omni_moe': Preset('qwen3_omni_moe', 'Qwen/Qwen3-Omni-30B-A3B-Instruct',
                             llm_class='Qwen3OmniMoeThinkerForConditionalGeneration', llm_attribute='thinker',
                             tiny_twin=f'{_TWINS}:QWEN3_OMNI_MOE',
                             vllm_memory_fraction=0.45, vllm_tensor_parallel=2,
                             vllm_limit_mm='{"audio": 1, "image": 0, "video": 0}',
                             deepspeed='zero3', lora_target_names=True,
                             other_checkpoints=('Qwen/Qwen3-Omni-30B-A3B-Thinking',)),
}


def get_preset(model_type: str) -> Preset:
    """The row of ``model_type``; a ValueError listing the presets otherwise."""
    if model_type not in PRESETS:
        raise ValueError(f'unknown MODEL_PRESET {model_type!r}; supported: {sorted(PRESETS)}')
    return PRESETS[model_type]


def detect_model_type(model: str) -> Optional[str]:
    """The preset of a checkpoint: a preset's real checkpoint id or one of its other checkpoints; else, for a
    local directory, ms-swift's ``args.json`` ``model_type`` (LoRA and merged checkpoints), else ``config.json``
    ``model_type`` when it names a preset (the transformers model types of the presets are their ms-swift names);
    else None."""
    for preset in PRESETS.values():
        if model.rstrip('/') in (preset.checkpoint, *preset.other_checkpoints):
            return preset.model_type
    path = Path(model)
    for name in ('args.json', 'config.json'):
        try:
            found = json.loads((path / name).read_text()).get('model_type')
        except (OSError, ValueError):
            continue
        if found in PRESETS:
            return found
    return None
