"""Model and template registration of every preset with ms-swift (docs/design.md §4).

Presets that ms-swift 4.6 supports as they are (``qwen2_5_omni``) need nothing; a preset whose
``trainer.presets`` row names a ``registration`` module gets that module's ``register()`` called. Called
by ``trainer.registry.register_with_swift`` (the ``--external_plugins`` file and ``python -m trainer.grpo``)
and by every in-process user of ms-swift's model loading (evaluation engines, merge, warm start).
"""
from __future__ import annotations

import importlib

from trainer.presets import PRESETS

_done = False


def register_models() -> None:
    """Run each preset's ms-swift registration once per process."""
    global _done
    if _done:
        return
    for preset in PRESETS.values():
        if preset.registration:
            importlib.import_module(preset.registration).register()
    _done = True
