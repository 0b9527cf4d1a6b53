"""TARS options that ms-swift's argument classes do not have (one place).

``python -m trainer.grpo`` parses them and activates them for the process; the trainer subclass and
the reward functions read ``active()``. Used through ``swift rlhf --external_plugins trainer/plugin.py``
directly, the defaults below apply (the paper's setting).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from trainer.prompts import PROMPT_MODALITIES

# The behaviour embedder: the offline MiniLM package by default, Qwen3-Embedding-0.6B on a cluster.
DEFAULT_EMBEDDER = 'minilm'
PAPER_EMBEDDER = 'Qwen/Qwen3-Embedding-0.6B'


@dataclass
class TARSConfig:
    prompt_modality: str = 'mixed'           # a | t | mixed (reference 2.2)
    target_layers: Optional[List[int]] = None  # 1-based layers of the representation reward; None: all
    embedder: str = DEFAULT_EMBEDDER           # 'minilm', a local path or a hub id
    dump_rollouts: Optional[str] = None        # JSONL path: one line per rollout per step
    length_target: int = 1024                  # reward_len target in characters (reference 3.2)


_ACTIVE = TARSConfig()


def activate(config: TARSConfig) -> None:
    """Make ``config`` the process's TARS configuration."""
    global _ACTIVE
    if config.prompt_modality not in PROMPT_MODALITIES:
        raise ValueError(f'prompt_modality must be one of {PROMPT_MODALITIES}, got {config.prompt_modality!r}')
    _ACTIVE = config


def active() -> TARSConfig:
    return _ACTIVE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The TARS command-line flags (everything else goes to ms-swift)."""
    parser.add_argument('--prompt_modality', default='mixed', choices=PROMPT_MODALITIES)
    parser.add_argument('--target_layers', default=None,
                        help='representation-reward layers, 1-based: "all", "1-10", or "31,32"')
    parser.add_argument('--embedder', default=DEFAULT_EMBEDDER,
                        help=f'behaviour-reward sentence embedder: minilm (offline) or e.g. {PAPER_EMBEDDER}')
    parser.add_argument('--dump_rollouts', default=None, help='JSONL file for one line per rollout per step')
    parser.add_argument('--length_target', type=int, default=1024)


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


def parse_layers(text: Optional[str]) -> Optional[List[int]]:
    """'all' / None -> None; '1-10' -> [1..10]; '31,32' -> [31, 32]."""
    if text is None or text.strip().lower() in ('', 'all'):
        return None
    layers: List[int] = []
    for part in text.split(','):
        if '-' in part:
            lo, hi = part.split('-')
            layers.extend(range(int(lo), int(hi) + 1))
        else:
            layers.append(int(part))
    return layers


def from_namespace(ns: argparse.Namespace) -> TARSConfig:
    names = {f.name for f in dataclasses.fields(TARSConfig)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values['target_layers'] = parse_layers(values.get('target_layers'))
    return TARSConfig(**values)
