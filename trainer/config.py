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
    scale_std: bool = False                    # divide advantages by the per-modality std
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
    parser.add_argument('--scale_std', action='store_true', help='divide advantages by the per-modality std')
    parser.add_argument('--dump_rollouts', default=None, help='JSONL file for one line per rollout per step')
    parser.add_argument('--length_target', type=int, default=1024)


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
