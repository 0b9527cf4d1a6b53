"""LoRA on the LLM only, named module by module, for the presets that need it (docs/design.md §4).

ms-swift resolves ``--target_modules all-linear`` (with ``--freeze_vit/--freeze_aligner true``) on a multimodal
model to one regex scoped to the LLM, e.g. ``^(thinker\\.model(?=\\.).*\\.(q_proj|k_proj|v_proj|o_proj))$``. For the
model types transformers 5 re-lays from v4 checkpoints (the fused MoE experts: ``qwen3_omni_moe`` among them), peft
0.20 converts a string target to the leaf names it matches before injecting (``_convert_peft_config_moe``,
huggingface/peft #3232), so the scope is lost: ``q_proj``/``k_proj``/``v_proj`` then also match the audio
encoder's attention. A list of full module names passes that conversion unchanged, so for a preset with
``Preset.lora_target_names`` the training pipelines below hand ms-swift the same modules its regex selects, as
names. Everything else (regex, freezing flags, other presets) is ms-swift's own.
"""
from __future__ import annotations

import re
from typing import Any, List

from trainer.presets import PRESETS


def llm_target_names(model: Any, args: Any) -> List[str]:
    """The full names of the modules ms-swift's ``all-linear`` regex selects on ``model`` under ``args``'
    freezing flags (its own ``get_multimodal_target_regex``), in module order."""
    from swift.utils import get_multimodal_target_regex
    regex = get_multimodal_target_regex(model, freeze_llm=args.freeze_llm, freeze_vit=args.freeze_vit,
                                        freeze_aligner=args.freeze_aligner,
                                        include_embedding='all-embedding' in args.target_modules)
    return [name for name, _ in model.named_modules() if re.fullmatch(regex, name)]


def resolve_target_names(args: Any, model: Any) -> None:
    """Replace ``args.target_modules == ['all-linear']`` by :func:`llm_target_names` when the preset asks for
    named targets and a new LoRA is about to be made; any other setting is left to ms-swift."""
    preset = PRESETS.get(getattr(args, 'model_type', None))
    if preset is None or not preset.lora_target_names:
        return
    if args.tuner_type != 'lora' or args.resume_from_checkpoint or args.adapters:
        return  # resuming or continuing loads the saved adapter's own targets
    if list(args.target_modules) != ['all-linear'] or not model.model_meta.is_multimodal:
        return
    args.target_modules = llm_target_names(model, args)


def _named_targets(pipeline: type) -> type:
    """``pipeline`` (an ms-swift training pipeline class) whose ``prepare_model`` resolves the targets first."""

    class Pipeline(pipeline):

        @classmethod
        def prepare_model(cls, args, model, **kwargs):
            resolve_target_names(args, model)
            return super().prepare_model(args, model, **kwargs)

    Pipeline.__name__ = Pipeline.__qualname__ = f'Tars{pipeline.__name__}'
    return Pipeline


def rlhf_main(argv: List[str]) -> Any:
    """ms-swift's ``rlhf_main`` (GRPO, DPO) with named LoRA targets for the presets that need them."""
    from swift.pipelines.train import SwiftRLHF
    return _named_targets(SwiftRLHF)(argv).main()


def sft_main(argv: List[str]) -> Any:
    """ms-swift's ``sft_main`` with named LoRA targets for the presets that need them."""
    from swift.pipelines.train import SwiftSft
    return _named_targets(SwiftSft)(argv).main()
