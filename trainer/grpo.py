"""Entry point: ``python -m trainer.grpo [TARS flags] [ms-swift rlhf flags]``.

Parses the TARS flags (``trainer.config``), activates them, registers the TARS plugin and hands every
other flag to ms-swift's ``rlhf_main`` with ``--rlhf_type grpo`` (through ``trainer.lora_targets``, which names the
LoRA targets for the presets that need it). The paper's hyper-parameters
(docs/original.md §2.9, §12) come first, so any flag given on the command line overrides them. Works under
``torchrun`` unchanged (each rank runs this module).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

from trainer import config as tars_config
from trainer.model_loading import RemoteCodeArguments, check_swift_argv
from trainer.registry import register_with_swift

PLUGIN = Path(__file__).resolve().parent / 'swift_plugin' / 'tars_plugin.py'
RUN_LOG_CALLBACK = 'tars_run_logs'  # trainer.run_logs.CALLBACK_NAME (that module imports transformers)
DEFAULT_REWARDS = ['tars_format', 'tars_accuracy', 'tars_representation', 'tars_behaviour']

# The original's adapter (docs/original.md §2.1, also used by DPO/SFT): LoRA r 8 / alpha 32 / dropout 0.05 on every
# linear layer of the LLM, the audio encoder and projector frozen.
LORA_DEFAULTS = ['--tuner_type', 'lora', '--lora_rank', '8', '--lora_alpha', '32', '--lora_dropout', '0.05',
                 '--target_modules', 'all-linear', '--freeze_vit', 'true', '--freeze_aligner', 'true']

# The paper's GRPO run (docs/original.md §1.3, §2.8, §2.9): DAPO token-level loss, no KL, asymmetric clipping,
# truncated completions masked, the LoRA above.
PAPER_DEFAULTS = LORA_DEFAULTS + [
    '--num_generations', '8', '--temperature', '1.0', '--max_completion_length', '512',
    '--learning_rate', '2e-5', '--warmup_ratio', '0.01', '--weight_decay', '0.01', '--max_grad_norm', '1.0',
    '--num_train_epochs', '3', '--loss_type', 'dapo', '--beta', '0', '--epsilon', '0.2', '--epsilon_high', '0.28',
    '--overlong_filter', 'true', '--save_steps', '100', '--save_total_limit', '50', '--logging_steps', '5',
    # Per-modality advantages without std division (the original's scale_rewards=False); ms-swift's own
    # GRPO default would be 'group' (see trainer.config.std_scaling).
    '--scale_rewards', 'none',
    # Left padding: a micro-batch mixes long speech prompts with short text prompts. Padded on the right,
    # the completion window ms-swift keeps logits for starts at the shortest prompt, i.e. almost the whole
    # sequence; on the left, completions share the last positions and the window is the completion length
    # (measured: a mixed step 9.8 s -> 4.7 s on the tiny model; the full-vocabulary logits dominate).
    '--padding_side', 'left',
]


# The original's correction for vLLM rollouts (vllm_importance_sampling_correction=True, cap 2.0): each
# completion token's loss is multiplied by exp(old_logp - sampling_logp), capped at 2.0 from above. That
# is ms-swift's token_truncate mode (min(ratio, threshold) per token); it applies to vLLM rollouts only.
VLLM_IS_DEFAULTS = ['--rollout_importance_sampling_mode', 'token_truncate',
                    '--rollout_importance_sampling_threshold', '2.0']


def flag_value(args: List[str], name: str) -> Optional[str]:
    """The value of the last ``--name VALUE`` (or ``--name=VALUE``) in ``args``; None when absent."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + '='):
            value = arg.split('=', 1)[1]
    return value


def build_swift_argv(swift_args: List[str], plugin: bool = True) -> List[str]:
    """The full ms-swift argv: paper defaults, then the user's flags, then the TARS plugin and callback."""
    argv = ['--rlhf_type', 'grpo'] + PAPER_DEFAULTS
    if (flag_value(swift_args, '--use_vllm') or '').lower() in ('true', '1') \
            and flag_value(swift_args, '--rollout_importance_sampling_mode') is None:
        argv += VLLM_IS_DEFAULTS
    if '--reward_funcs' not in swift_args:
        argv += ['--reward_funcs'] + DEFAULT_REWARDS
    argv += swift_args
    return argv + plugin_args(swift_args) if plugin else argv


def list_flag(swift_args: List[str], flag: str, ours: List[str]) -> List[str]:
    """``flag`` with ``ours`` first, then the values the user passed to it (a later flag wins in ms-swift's
    parser, so this keeps both)."""
    values = list(ours)
    if flag in swift_args:
        i = swift_args.index(flag) + 1
        while i < len(swift_args) and not swift_args[i].startswith('--'):
            values.append(swift_args[i])
            i += 1
    return [flag] + values


def plugin_args(swift_args: List[str]) -> List[str]:
    """``--callbacks`` with the TARS run-log callback first (``trainer.run_logs``: resumed runs log like
    uninterrupted ones), ``--external_plugins`` with the TARS plugin first; then any the user passed."""
    return (list_flag(swift_args, '--callbacks', [RUN_LOG_CALLBACK])
            + list_flag(swift_args, '--external_plugins', [str(PLUGIN)]))


def main(argv: Optional[List[str]] = None) -> Any:
    try:
        tars, loading, swift_args = tars_config.parse_args(sys.argv[1:] if argv is None else argv,
                                                           RemoteCodeArguments)
    except ValueError as error:  # a bad TARS option: its one line, before anything loads
        raise SystemExit(f'trainer.grpo: {error}') from None
    check_swift_argv(swift_args, loading.trust_remote_code)  # before ms-swift sees any model folder
    tars_config.activate(tars)

    register_with_swift()
    # deferred: ms-swift and torch.distributed load in seconds; the command line is checked before them
    from trainer.distributed import run_then_shutdown
    from trainer.lora_targets import rlhf_main
    return run_then_shutdown(rlhf_main, build_swift_argv(swift_args))


if __name__ == '__main__':
    from trainer.cli import run_main
    run_main(main, 'trainer.grpo')
