"""Model presets: one row per supported architecture (design.md section 4), named by ms-swift model type.

On GPUs a preset runs its real checkpoint; on the CPU its tiny random-weight twin
(``trainer.tiny_models``), loaded through the same ms-swift model type and code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Preset:
    model_type: str      # ms-swift model type (also the template)
    checkpoint: str      # the real checkpoint (hub id)
    has_tiny_twin: bool  # whether trainer.tiny_models can build its twin


PRESETS: Dict[str, Preset] = {
    'qwen2_5_omni': Preset('qwen2_5_omni', 'Qwen/Qwen2.5-Omni-7B', True),
}


def get_preset(model_type: str) -> Preset:
    if model_type not in PRESETS:
        raise ValueError(f'unknown MODEL_PRESET {model_type!r}; supported: {sorted(PRESETS)}')
    return PRESETS[model_type]
