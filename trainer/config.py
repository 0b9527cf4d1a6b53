"""TARS options that ms-swift's argument classes do not have (one place).

``TARSConfig`` is the single declaration: its fields (with their help text) are the command-line flags of
``python -m trainer.grpo``, parsed by transformers' ``HfArgumentParser``; every other flag goes to ms-swift.
The entry point hands the parsed config to the trainer ms-swift builds through ``activate`` (the trainer
class is instantiated by ms-swift from its registered path, so this is the one hand-off); the trainer then
gives it to its TARS rewards with each step's rollout view (``TARSReward.given``). Every field is checked
in ``__post_init__`` with a one-line error, so a bad value stops the run the same way from the command
line and from Python. Used through ``swift rlhf --external_plugins
trainer/swift_plugin/tars_plugin.py`` directly, the defaults below apply (the paper's setting).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from trainer.prompts import PROMPT_MODALITIES
from trainer.tars_math import ADVANTAGE_NORMS

# The behaviour embedder: the offline MiniLM package by default, Qwen3-Embedding-0.6B on a cluster.
DEFAULT_EMBEDDER = 'minilm'
PAPER_EMBEDDER = 'Qwen/Qwen3-Embedding-0.6B'


LAYERS_FORM = '"all", a range like "1-10" or a list like "31,32" (1-based layer numbers)'


def parse_layers(text: Optional[str]) -> Optional[List[int]]:
    """'all' / None -> None; '1-10' -> [1..10]; '31,32' -> [31, 32]; anything else (a list, 0, '3-1') is a
    ValueError naming the form."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f'target_layers must be {LAYERS_FORM} as one string, not {text!r}')
    if text.strip().lower() in ('', 'all'):
        return None
    layers: List[int] = []
    try:
        for part in text.split(','):
            if '-' in part:
                lo, hi = (int(p) for p in part.split('-'))
                if hi < lo:
                    raise ValueError
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise ValueError(f'target_layers must be {LAYERS_FORM}, not {text!r}') from None
    if min(layers) < 1:
        raise ValueError(f'target_layers must be {LAYERS_FORM}, not {text!r} (layer 0 is the embeddings)')
    return layers


def _one_of(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f'{name} must be one of {", ".join(choices)}, not {value!r}')


@dataclass
class TARSConfig:
    prompt_modality: str = field(default='mixed', metadata={
        'help': 'rollout modality: a (speech only), t (text only) or mixed (half of each question\'s rollouts '
                'from its speech, half from its text; docs/original.md §2.2)'})
    target_layers: str = field(default='all', metadata={
        'help': 'layers of the representation reward, 1-based: "all" (the paper), "1-10", "11-20" or "31,32"'})
    embedder: str = field(default=DEFAULT_EMBEDDER, metadata={
        'help': f'behaviour-reward sentence embedder: minilm (offline), a local path, or e.g. {PAPER_EMBEDDER} '
                '(the paper)'})
    dump_rollouts: Optional[str] = field(default=None, metadata={
        'help': 'JSONL file that gets one line per rollout per step (docs/formats.md)'})
    advantage_norm: str = field(default='modality', metadata={
        'help': 'advantage baselines: modality (per question and modality, the paper) or group (per question, '
                'speech and text rollouts together; an ablation)'})
    length_target: int = field(default=1024, metadata={
        'help': 'target length in characters of the length reward tars_length (docs/original.md §3.2)'})

    def __post_init__(self) -> None:
        """Refuse a bad value of any field with a one-line ValueError naming the field, before any model
        loads. The same check runs for the command line (``parse_args``: no argparse ``choices``, so the
        message is this one) and for a config built in Python."""
        _one_of('prompt_modality', self.prompt_modality, PROMPT_MODALITIES)
        parse_layers(self.target_layers)
        if not isinstance(self.embedder, str) or not self.embedder.strip():
            raise ValueError(f'embedder must be minilm, a local path or a model id, not {self.embedder!r}')
        if self.dump_rollouts is not None and (not isinstance(self.dump_rollouts, str)
                                               or not self.dump_rollouts.strip()):
            raise ValueError(f'dump_rollouts must be a file path, not {self.dump_rollouts!r}')
        _one_of('advantage_norm', self.advantage_norm, ADVANTAGE_NORMS)
        if isinstance(self.length_target, bool) or not isinstance(self.length_target, int) \
                or self.length_target < 1:
            raise ValueError(f'length_target must be a positive number of characters, not {self.length_target!r}')

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
