"""Per-layer statistics of the layer-similarity analysis (reference section 8).

Two measures per sample and layer, from the response hidden states of the text run ``a`` and the speech
run ``b`` (the same response tokens, teacher-forced):

* token measure (the original's): cosine between ``a_t`` and ``b_t`` for each response token t, then the
  mean over the response tokens;
* pooled measure (the representation reward's, ``trainer.tars_math.pooled_cosine``): mean-pool each run's
  states over the response tokens first (``trainer.tars_math.masked_mean_pool``), then one cosine.

Over samples: the mean and a 95 % t-interval, mean +- t_{0.975, n-1} * sd / sqrt(n) with the sample
standard deviation (as the original). Statistics are accumulated in a streaming way (Chan et al.'s
parallel form of Welford's update, float64), so nothing per sample is kept but the running moments.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from trainer.tars_math import masked_mean_pool

CONFIDENCE = 0.95


def pair_similarities(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two measures of one layer for B sample pairs.

    a, b [B, T, D]: hidden states of the text and the speech run, aligned so that token t of a row is the
    same response token in both; mask [B, T] marks the response tokens (the same positions in a and b).
    Returns (token [B], pooled [B]) float32; a row without response tokens gives NaN.
    """
    mask = mask.to(a.device, torch.bool)
    token_cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)  # [B, T]
    weights = mask.float()
    token = (token_cos * weights).sum(1) / weights.sum(1)
    pooled = torch.nn.functional.cosine_similarity(masked_mean_pool(a, mask), masked_mean_pool(b, mask), dim=-1)
    return token, pooled


class RunningStats:
    """Streaming count, mean and sum of squared deviations of L per-layer values (float64).

    ``add`` takes a batch of values [L, B]; batches may have any size, the result does not depend on how
    the samples were split into batches (up to rounding).
    """

    def __init__(self, num_layers: int):
        self.n = 0
        self.mean = torch.zeros(num_layers, dtype=torch.float64)
        self.m2 = torch.zeros(num_layers, dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().to('cpu', torch.float64)
        if values.dim() != 2 or values.shape[0] != self.mean.shape[0]:
            raise ValueError(f'expected values [L={self.mean.shape[0]}, B], got {tuple(values.shape)}')
        nb = values.shape[1]
        if nb == 0:
            return
        batch_mean = values.mean(1)
        batch_m2 = ((values - batch_mean.unsqueeze(1)) ** 2).sum(1)
        total = self.n + nb
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + batch_m2 + delta ** 2 * (self.n * nb / total)
        self.n = total

    def std(self) -> torch.Tensor:
        """Sample standard deviation per layer (NaN with fewer than 2 samples)."""
        if self.n < 2:
            return torch.full_like(self.mean, math.nan)
        return (self.m2 / (self.n - 1)).clamp(min=0).sqrt()


def t_interval(mean: torch.Tensor, std: torch.Tensor, n: int, confidence: float = CONFIDENCE):
    """(lower, upper) of the t-interval mean +- t_{(1+c)/2, n-1} * std / sqrt(n); NaN when n < 2."""
    if n < 2:
        nan = torch.full_like(mean, math.nan)
        return nan, nan.clone()
    from scipy.stats import t
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def _floats(x: torch.Tensor) -> List:
    """JSON-ready list: NaN becomes None (JSON has no NaN)."""
    return [None if math.isnan(v) else float(v) for v in x.tolist()]


def summary(token: RunningStats, pooled: RunningStats) -> Dict:
    """The statistics part of layer_stats.json (the original's keys, plus the pooled measure and counts).

    ``layers`` is 0-based as in the original: entry i is layer i + 1 (``hidden_states[i + 1]``).
    """
    out = {'layers': list(range(token.mean.shape[0]))}
    for prefix, acc in (('', token), ('pooled_', pooled)):
        lower, upper = t_interval(acc.mean, acc.std(), acc.n)
        out.update({f'{prefix}means': _floats(acc.mean if acc.n else acc.mean * math.nan),
                    f'{prefix}ci_lower': _floats(lower), f'{prefix}ci_upper': _floats(upper),
                    f'{prefix}stds': _floats(acc.std())})
    out['n_samples'] = token.n
    return out
