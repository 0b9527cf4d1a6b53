"""TARS options that ms-swift's argument classes do not have (one place).

``TARSConfig`` is the single declaration: its fields (with their help text) are the command-line flags of
``python -m trainer.grpo``, parsed by transformers' ``HfArgumentParser``; every other flag goes to ms-swift.
The entry point hands the parsed config to the trainer ms-swift builds through ``activate`` (the trainer
class is instantiated by ms-swift from its registered path, so this is the one hand-off); the trainer then
gives it to the TARS rewards it holds. Used through ``swift rlhf --external_plugins
trainer/swift_plugin/tars_plugin.py`` directly, the defaults below apply (the paper's setting).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from trainer.prompts import PROMPT_MODALITIES

# The behaviour embedder: the offline MiniLM package by default, Qwen3-Embedding-0.6B on a cluster.
DEFAULT_EMBEDDER = 'minilm'
PAPER_EMBEDDER = 'Qwen/Qwen3-Embedding-0.6B'


def parse_layers(text: Optional[str]) -> Optional[List[int]]:
    """'all' / None -> None; '1-10' -> [1..10]; '31,32' -> [31, 32]; anything else is a ValueError."""
    if text is None or text.strip().lower() in ('', 'all'):
        return None
    layers: List[int] = []
    try:
        for part in text.split(','):
            if '-' in part:
                lo, hi = part.split('-')
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise ValueError(f'target_layers must be "all", a range like "1-10" or a list like "31,32", '
                         f'not {text!r}') from None
    return layers


@dataclass
class TARSConfig:
    prompt_modality: str = field(default='mixed', metadata={
        'help': 'rollout modality: a (speech only), t (text only) or mixed (half of each question\'s rollouts '
                'from its speech, half from its text; docs/original.md §2.2)', 'choices': list(PROMPT_MODALITIES)})
    target_layers: str = field(default='all', metadata={
        'help': 'layers of the representation reward, 1-based: "all" (the paper), "1-10", "11-20" or "31,32"'})
    embedder: str = field(default=DEFAULT_EMBEDDER, metadata={
        'help': f'behaviour-reward sentence embedder: minilm (offline), a local path, or e.g. {PAPER_EMBEDDER} '
                '(the paper)'})
    dump_rollouts: Optional[str] = field(default=None, metadata={
        'help': 'JSONL file that gets one line per rollout per step (docs/formats.md)'})
    advantage_norm: str = field(default='modality', metadata={
        'help': 'advantage baselines: modality (per question and modality, the paper) or group (per question, '
                'speech and text rollouts together; an ablation)', 'choices': ['modality', 'group']})
    length_target: int = field(default=1024, metadata={
        'help': 'target length in characters of the length reward tars_length (docs/original.md §3.2)'})

    def __post_init__(self) -> None:
        if self.prompt_modality not in PROMPT_MODALITIES:
            raise ValueError(f'prompt_modality must be one of {PROMPT_MODALITIES}, got {self.prompt_modality!r}')
        parse_layers(self.target_layers)  # a malformed layer list fails here, before any model loads
        if self.advantage_norm not in ('modality', 'group'):   # trainer.tars_math.ADVANTAGE_NORMS
            raise ValueError(f'advantage_norm must be modality or group, got {self.advantage_norm!r}')

    @property
    def layers(self) -> Optional[List[int]]:
        """The representation reward's 1-based layers; None for all."""
        return parse_layers(self.target_layers)


def parse_args(argv: Sequence[str], *extra: type) -> Tuple[Any, ...]:
    """``(TARSConfig, *one instance per dataclass in extra, remaining flags)`` from ``argv``: the TARS flags
    (and those of ``extra``) parsed by ``HfArgumentParser``, every other flag left for ms-swift, in order."""
    from transformers import HfArgumentParser

    # allow_abbrev off: an ms-swift flag must never be taken for an abbreviated TARS flag
    parser = HfArgumentParser((TARSConfig, *extra), allow_abbrev=False)
    return tuple(parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=True))


_ACTIVE = TARSConfig()


def activate(config: TARSConfig) -> None:
    """Hand ``config`` to the TARS trainer of this process (see the module docstring)."""
    global _ACTIVE
    _ACTIVE = config


def active() -> TARSConfig:
    """The TARS options of this process (set by ``activate``; the defaults before)."""
    return _ACTIVE


# ms-swift's --scale_rewards values TARS honours, and what each means for the per-modality advantages:
# 'none' (the original's scale_rewards=False, TARS's default) subtracts the modality baseline only;
# 'group' also divides by that (question, modality) cell's population std + 1e-4.
SCALE_REWARDS = {'none': False, 'group': True}


def std_scaling(scale_rewards: Optional[str], advantage_estimator: str = 'grpo', kl_in_reward: Optional[bool] = False,
                beta: float = 0.0) -> bool:
    """Whether TARS's advantages divide by the per-modality std, from ms-swift's GRPO arguments.

    TARS replaces ms-swift's advantage computation, so every ms-swift setting that would change it
    must either map onto the per-modality computation or stop the run: a ValueError names the flag.
    """
    if advantage_estimator != 'grpo':
        raise ValueError(f'--advantage_estimator {advantage_estimator} is not supported by TARS, whose '
                         'advantages are per-modality GRPO baselines; use --advantage_estimator grpo')
    if kl_in_reward and beta != 0.0:
        raise ValueError('--kl_in_reward true is not supported by TARS (its rewards are the TARS rewards '
                         'alone); use --kl_in_reward false, which keeps the KL term in the loss')
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f'--scale_rewards {scale_rewards} is not supported by TARS; use none (the paper) or '
                         'group (divide by the std of the same question and modality)')
    return SCALE_REWARDS[scale_rewards]
