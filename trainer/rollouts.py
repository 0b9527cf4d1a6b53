"""One typed view of a generation batch's rollouts, built and gathered once per step.

The TARS trainer builds it after the old-policy forward (so each rollout has its pooled hidden state and
its trained-token count) and before the rewards; the rewards, the advantages, the metrics and the
rollout dump all read it. Each rollout is judged exactly once (on the rank that generated it) and the
rows travel between ranks once. Rows are in ms-swift's global order (rank 0's local samples first), the
order of the gathered reward matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from trainer.distributed import gather_lists


@dataclass(frozen=True)
class Rollout:
    """One rollout: its question, modality, completion, the judge's verdict and its pooled state."""
    key: str                        # question key (groups are matched by it)
    modality: str                   # tars_math.SPEECH | tars_math.TEXT
    completion: str
    options: List[str]
    gold: int                       # 0-based index of the correct option
    correct: bool                   # the rule-based judge's verdict (trainer.answer.is_correct)
    length: int                     # completion tokens in the loss (ms-swift's completion mask)
    hidden: Optional[torch.Tensor]  # pooled [L, D] float32 on the CPU, None without the representation reward


@dataclass(frozen=True)
class RolloutBatch:
    """The rollouts of one generation batch over all ranks, and which of them are this rank's."""
    rows: List[Rollout]
    offset: int   # index of this rank's first rollout in ``rows``
    n_local: int  # number of this rank's rollouts

    @classmethod
    def gather(cls, local: Sequence[Rollout]) -> 'RolloutBatch':
        """All ranks' rollouts in rank order (every rank must call this)."""
        rows, offset = gather_lists(list(local))
        return cls(rows=rows, offset=offset, n_local=len(local))

    def __len__(self) -> int:
        return len(self.rows)

    def local(self, values: Sequence) -> List:
        """This rank's slice of a per-rollout list in global order."""
        return list(values[self.offset:self.offset + self.n_local])

    @property
    def keys(self) -> List[str]:
        return [r.key for r in self.rows]

    @property
    def modalities(self) -> List[str]:
        return [r.modality for r in self.rows]

    @property
    def correct(self) -> List[bool]:
        return [r.correct for r in self.rows]

    def matches(self, completions: Sequence[str]) -> bool:
        """Whether ``completions`` are this rank's rollouts (the rewards' guard against a stale view)."""
        return len(completions) == self.n_local and all(
            c == r.completion for c, r in zip(completions, self.rows[self.offset:], strict=False))


def judge_all(completions: Sequence[str], options: Sequence[Sequence[str]], gold: Sequence[int],
              judge: Callable[[str, Sequence[str], int], bool]) -> List[bool]:
    """The judge's verdict for each rollout (used once per rollout per step)."""
    return [bool(judge(c, o, int(g))) for c, o, g in zip(completions, options, gold, strict=True)]
