"""Every place where the project relies on a library's internals, in one list, with the versions it was
written for. ``tests/test_compat.py`` checks each entry against the installed libraries, and fails when an
upgrade removes or changes one, or when a pinned version changes: re-read the entry's upstream code,
update the function here (or the subclass that overrides a hook), then ``WRITTEN_FOR``.

Two kinds of touch:
- functions below that reach into a library (a private attribute, a registry table, an attribute added to
  a library object), used by the rest of the project instead of touching the library itself;
- overrides of protected methods in our subclasses of ms-swift classes (the GRPO trainer's stage hooks,
  the templates' ``_encode``), listed in ``OVERRIDES`` with the parameters we rely on.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import torch

# pip distribution -> the version every entry below was checked against
WRITTEN_FOR = {
    'ms-swift': '4.6.0',
    'transformers': '5.19.0',
    'peft': '0.20.0',
    'toktok-rs': '0.3.0',
}


@dataclass(frozen=True)
class Touch:
    target: str                 # 'module:attribute.path' of the library internal
    used_by: str                # our module(s)
    why: str
    parameters: Optional[Tuple[str, ...]] = None  # for callables: the leading parameters we pass or receive


TOUCHES = (
    Touch('swift.trainers.trainer_factory:TrainerFactory.TRAINER_MAPPING', 'trainer.registry, scripts.bench',
          "ms-swift builds the GRPO trainer from this table's dotted path; --rlhf_type grpo must build ours "
          '(register_trainer). There is no public registration call in ms-swift 4.6.'),
    Touch('transformers.integrations.deepspeed:_hf_deepspeed_config_weak_ref', 'trainer.embedder',
          'while a ZeRO-3 config is registered, transformers partitions every model it builds, which breaks '
          "the behaviour embedder loaded inside reward code ('weight' must be 2-D; TRL #2984/#3326): "
          'outside_zero3_init clears it for the load and restores it.'),
    Touch('swift.rl_core.data:GRPOBatch', 'trainer.grpo_trainer',
          'the loss hook needs each micro-batch row\'s modality (per-modality clip ratios); the batch object '
          'is the only thing that reaches it, so set_batch_modality adds one attribute to it.'),
    Touch('swift.rlhf_trainers.rollout_mixin:DataType', 'trainer.grpo_trainer',
          'the type of the dataset rows ms-swift passes to _rollout_samples (the override is typed with it).'),
    Touch('swift.rlhf_trainers.rollout_mixin:RolloutTrainerMixin._has_teacher_explicit', 'trainer.grpo_trainer',
          'a separate distillation teacher (teacher_model, teacher_model_server) is a second model whose '
          'forwards the TARS trainer does not run; TARSGRPOTrainer refuses it at start with this check (a '
          'teacher_prompt column, the current policy as teacher, is supported).', ()),
    Touch('swift.rlhf_trainers:GRPOTrainer.sample_cls', 'trainer.grpo_trainer',
          "the class ms-swift builds each dataset row's sample from (to_samples -> sample_cls.from_row); "
          'TARSGRPOTrainer sets its own GRPOSample subclass, whose self-distillation teacher view has no audio.'),
    Touch('swift.rl_core.data:GRPOBatch.teacher_per_token_logps', 'trainer.grpo_trainer',
          "the self-distillation teacher's log-probs of the sampled tokens ([B, C], None without a teacher_prompt); "
          'the rollout dump records their mean gap to the policy (teacher_gap).'),
    Touch('peft.utils.transformers_weight_conversion:_convert_peft_config_moe', 'trainer.lora_targets',
          'on model types transformers 5 re-lays (qwen3_omni_moe) peft reduces a regex target to the leaf names it '
          "matches, losing ms-swift's LLM scope (the audio encoder's q/k/v_proj match too); lora_targets passes "
          'full module names, which it keeps (tests/test_qwen3_omni.py shows the regex still reaching the encoder).',
          ('peft_config', 'model')),
    Touch('toktok:_encoding', 'scripts.recipes.phi4_tokenizer',
          "the o200k_base ranks of the offline Phi-4 twin's tokenizer; toktok-rs exposes full token bytes only "
          'through this function (o200k_encoding).', ('name',)),
)

# ms-swift methods our subclasses override (class -> method -> leading parameters after self); the TARS
# trainer's overrides carry ms-swift's types and say what ms-swift calls them with (tests/test_compat.py)
OVERRIDES = {
    'swift.rlhf_trainers:GRPOTrainer': {
        '_prepare_rewards': ('reward_funcs',),
        '_rollout_samples': ('inputs',),
        '_score_completions': ('samples',),
        '_prepare_batch_inputs': ('samples',),
        '_get_per_token_logps_and_entropies': ('model', 'model_inputs', 'grpo_batch'),
        '_compute_rewards_per_func': ('samples',),
        '_postprocess_batch': ('samples', 'batch_encoded_inputs'),
        '_compute_advantages': ('samples', 'rewards_per_func', 'batch_encoded_inputs'),
        '_compute_loss_and_metrics': ('model', 'model_inputs', 'grpo_batch'),
        '_compute_teacher_logps': ('model_inputs', 'grpo_batch', 'origin_data', 'teacher_model_inputs',
                                   'teacher_grpo_batch'),
        'null_ref_context': (),
        'split_by_mini_batches': ('samples',),
        # on vLLM's CPU build only (trainer.vllm_cpu.VllmCpuWeightSync; tests/test_vllm_cpu.py checks vLLM's side)
        '_load_state_dict_to_vllm': ('state_dict',),
    },
    'swift.rl_core.data:GRPOSample': {
        'to_teacher_template_dict': (),
    },
    'swift.template:Template': {
        '_encode': ('inputs',),
        '_data_collator_mm_data': ('batch',),
        '_extend_tokens': ('input_ids', 'labels', 'loss_scale', 'replace_idx_list', 'get_new_tokens'),
    },
}


def register_trainer(rlhf_type: str, dotted_path: str) -> None:
    """Make ms-swift's ``--rlhf_type rlhf_type`` build the trainer class at ``dotted_path``."""
    from swift.trainers.trainer_factory import TrainerFactory
    TrainerFactory.TRAINER_MAPPING[rlhf_type] = dotted_path


@contextmanager
def outside_zero3_init() -> Iterator[None]:
    """Build models in this block as plain modules even while a DeepSpeed ZeRO-3 config is registered."""
    from transformers.integrations import deepspeed as hf_ds
    saved = getattr(hf_ds, '_hf_deepspeed_config_weak_ref', None)
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


_BATCH_MODALITY = 'tars_is_speech'


def set_batch_modality(grpo_batch: Any, is_speech: torch.Tensor) -> None:
    """Attach the rows' modality ([B] bool, True = speech) to an ms-swift ``GRPOBatch``."""
    setattr(grpo_batch, _BATCH_MODALITY, is_speech)


def batch_modality(grpo_batch: Any) -> Optional[torch.Tensor]:
    """The modality attached by ``set_batch_modality``, or None."""
    return getattr(grpo_batch, _BATCH_MODALITY, None)


def o200k_encoding() -> Any:
    """toktok-rs's o200k_base encoding object (``decode_single_token_bytes``)."""
    import toktok
    return toktok._encoding('o200k_base')
