"""Entry point of the DPO and SFT baselines: ``python -m trainer.preference_train dpo|sft [ms-swift flags]``.

The original's ``trainer/dpo.py`` (docs/original.md §4.1), through ms-swift: DPO with ``swift rlhf --rlhf_type dpo``
(the reference model is the policy with its LoRA switched off, as TRL did for the original), SFT with
``swift sft`` on the chosen answers (the original's ``--loss_type sft``: NLL of the chosen answer, here with
ms-swift's label masking instead of ``ignore_index=0``, docs/original.md §11.11). The original's hyper-parameters
come first, so any flag on the command line overrides them. Works under ``torchrun`` unchanged.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional

from trainer.grpo import LORA_DEFAULTS, plugin_args
from trainer.model_loading import OPT_IN, check_swift_argv
from trainer.registry import register_with_swift

# docs/original.md §1.3 and §4.1: batch 1 per GPU (gradient accumulation from the world batch, set by the launcher),
# lr 2e-5, weight decay 0.01, warmup 0.1, one epoch, 8192 tokens kept from the start (the audio tokens are
# never cut: 'right' truncation), saving/eval/logging as in GRPO.
COMMON_DEFAULTS = LORA_DEFAULTS + [
    '--per_device_train_batch_size', '1', '--per_device_eval_batch_size', '1', '--learning_rate', '2e-5',
    '--weight_decay', '0.01', '--warmup_ratio', '0.1', '--num_train_epochs', '1', '--max_length', '8192',
    '--truncation_strategy', 'right', '--max_grad_norm', '1.0', '--save_steps', '100', '--save_total_limit', '50',
    '--eval_steps', '100', '--logging_steps', '5',
]
DPO_DEFAULTS = ['--rlhf_type', 'dpo', '--beta', '0.1', '--loss_type', 'sigmoid'] + COMMON_DEFAULTS
SFT_DEFAULTS = list(COMMON_DEFAULTS)
KINDS = ('dpo', 'sft')


def build_swift_argv(kind: str, swift_args: List[str]) -> List[str]:
    """The full ms-swift argv for ``kind``: the original's defaults, the user's flags, the TARS plugin."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    defaults = DPO_DEFAULTS if kind == 'dpo' else SFT_DEFAULTS
    return defaults + swift_args + plugin_args(swift_args)


def main(argv: Optional[List[str]] = None) -> Any:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in KINDS:
        raise SystemExit(f'usage: python -m trainer.preference_train {{{",".join(KINDS)}}} [{OPT_IN}] [ms-swift flags]')
    kind, swift_args = argv[0], [a for a in argv[1:] if a != OPT_IN]  # ours: ms-swift 4.6 has no such flag
    check_swift_argv(swift_args, OPT_IN in argv[1:])
    register_with_swift()
    # deferred: ms-swift and torch.distributed load in seconds; the command line is checked before them
    from trainer.distributed import run_then_shutdown
    from trainer.lora_targets import rlhf_main, sft_main
    run = rlhf_main if kind == 'dpo' else sft_main
    return run_then_shutdown(run, build_swift_argv(kind, swift_args))


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'trainer.preference_train')
