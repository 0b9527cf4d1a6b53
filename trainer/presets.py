"""Model presets: one row per supported architecture (design.md section 4), named by ms-swift model type.

On GPUs a preset runs its real checkpoint; on the CPU its tiny random-weight twin
(``scripts.recipes.tiny_models``), loaded through the same ms-swift model type and code path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional


@dataclass(frozen=True)
class Preset:
    model_type: str      # ms-swift model type (also the template)
    checkpoint: str      # the real checkpoint (hub id)
    has_tiny_twin: bool  # whether scripts.recipes.tiny_models can build its twin
    # module whose register() registers the model type and template with ms-swift (trainer.model_registry);
    # None when ms-swift's own registration works with our transformers
    registration: Optional[str] = None
    # whether the GPU stack's vLLM serves this architecture (rollouts and evaluation); else transformers
    vllm: bool = True


DEFAULT_PRESET = 'qwen2_5_omni'

PRESETS: Dict[str, Preset] = {
    'qwen2_5_omni': Preset('qwen2_5_omni', 'Qwen/Qwen2.5-Omni-7B', True),
    'qwen2_audio': Preset('qwen2_audio', 'Qwen/Qwen2-Audio-7B-Instruct', True, 'trainer.models.qwen2_audio'),
    # vLLM dropped the native Phi4MultimodalForCausalLM (vllm-project/vllm #30049): transformers rollouts
    'phi4_multimodal': Preset('phi4_multimodal', 'microsoft/Phi-4-multimodal-instruct', True,
                               'trainer.models.phi4_multimodal', vllm=False),
}


def get_preset(model_type: str) -> Preset:
    if model_type not in PRESETS:
        raise ValueError(f'unknown MODEL_PRESET {model_type!r}; supported: {sorted(PRESETS)}')
    return PRESETS[model_type]


def detect_model_type(model: str) -> Optional[str]:
    """The preset of a checkpoint: a preset's real checkpoint id; else, for a local directory, ms-swift's
    ``args.json`` ``model_type`` (LoRA and merged checkpoints), else ``config.json`` ``model_type`` when it
    names a preset (the transformers model types of the presets are their ms-swift names); else None."""
    for preset in PRESETS.values():
        if model.rstrip('/') == preset.checkpoint:
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
