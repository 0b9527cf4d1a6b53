"""Per-layer statistics of the layer-similarity analysis (docs/original.md §8).

Two measures per sample and layer, from the response hidden states of the text run ``a`` and the speech
run ``b`` (the same response tokens, teacher-forced):

* token measure (the original's): cosine between ``a_t`` and ``b_t`` for each response token t, then the
  mean over the response tokens;
* pooled measure (the representation reward's, ``trainer.tars_math.pooled_cosine``): mean-pool each run's
  states over the response tokens first (``trainer.tars_math.masked_mean_pool``), then one cosine.

Over samples, per layer: the mean and a 95 % t-interval, mean +- t_{0.975, n-1} * sd / sqrt(n) with the
sample standard deviation (as the original). As in the original, a NaN value (e.g. a sample without response
tokens, or an overflow in half precision) is dropped from its layer only, so n may differ between layers (the
drops are counted), and one value gives the interval (mean, mean). Statistics are accumulated in a streaming
way (Chan et al.'s parallel form of Welford's update, float64), so nothing per sample is kept but the
running moments.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple, Union

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
    """Streaming per-layer count, mean and sum of squared deviations of L per-layer values (float64).

    ``add`` takes a batch of values [L, B]; batches may have any size, the result does not depend on how
    the samples were split into batches (up to rounding). NaN values are dropped per layer and counted.
    """

    def __init__(self, num_layers: int) -> None:
        self.n = 0   # samples added (all layers)
        self.count = torch.zeros(num_layers, dtype=torch.int64)     # non-NaN values per layer
        self.dropped = torch.zeros(num_layers, dtype=torch.int64)   # NaN values dropped per layer
        self.mean = torch.zeros(num_layers, dtype=torch.float64)
        self.m2 = torch.zeros(num_layers, dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().to('cpu', torch.float64)
        if values.dim() != 2 or values.shape[0] != self.mean.shape[0]:
            raise ValueError(f'expected values [L={self.mean.shape[0]}, B], got {tuple(values.shape)}')
        if values.shape[1] == 0:
            return
        valid = ~torch.isnan(values)
        nb = valid.sum(1)                                        # [L] values kept in this batch
        filled = torch.where(valid, values, torch.zeros_like(values))
        batch_mean = filled.sum(1) / nb.clamp(min=1)
        batch_m2 = torch.where(valid, (values - batch_mean.unsqueeze(1)) ** 2, torch.zeros_like(values)).sum(1)
        n_old = self.count.to(torch.float64)
        total = n_old + nb
        delta = batch_mean - self.mean
        share = torch.where(total > 0, nb / total.clamp(min=1), torch.zeros_like(total))
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + batch_m2 + delta ** 2 * n_old * share
        self.count += nb
        self.dropped += values.shape[1] - nb
        self.n += values.shape[1]

    def means(self) -> torch.Tensor:
        """Mean per layer (NaN for a layer without values)."""
        return torch.where(self.count > 0, self.mean, torch.full_like(self.mean, math.nan))

    def std(self) -> torch.Tensor:
        """Sample standard deviation per layer (NaN for a layer with fewer than 2 values)."""
        var = self.m2 / (self.count - 1).clamp(min=1)
        return torch.where(self.count >= 2, var.clamp(min=0).sqrt(), torch.full_like(self.mean, math.nan))


def t_interval(mean: torch.Tensor, std: torch.Tensor, n: Union[int, torch.Tensor],
               confidence: float = CONFIDENCE) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) of the t-interval mean +- t_{(1+c)/2, n-1} * std / sqrt(n) per layer.

    n: the number of values, an int or a tensor [L] of per-layer counts. One value gives (mean, mean), as
    the original; no value gives NaN.
    """
    from scipy.stats import t
    n = torch.as_tensor(n, dtype=torch.float64).expand_as(mean)
    df = (n - 1).clamp(min=1).numpy()
    half = torch.from_numpy(t.ppf((1 + confidence) / 2, df)).to(mean.dtype) * std / n.clamp(min=1).sqrt()
    half = torch.where(n == 1, torch.zeros_like(half), half)
    half = torch.where(n < 1, torch.full_like(half, math.nan), half)
    return mean - half, mean + half


def _floats(x: torch.Tensor) -> List:
    """JSON-ready list: NaN becomes None (JSON has no NaN)."""
    return [None if math.isnan(v) else float(v) for v in x.tolist()]


def summary(token: RunningStats, pooled: RunningStats) -> Dict:
    """The statistics part of layer_stats.json (the original's keys, plus the pooled measure and counts).

    ``layers`` is 0-based as in the original: entry i is layer i + 1 (``hidden_states[i + 1]``).
    ``n_samples`` counts the compared samples; ``n_per_layer`` / ``nan_dropped`` (and their ``pooled_``
    twins) the values each layer kept and the NaN values it dropped.
    """
    out = {'layers': list(range(token.mean.shape[0]))}
    for prefix, acc in (('', token), ('pooled_', pooled)):
        means = acc.means()
        lower, upper = t_interval(means, acc.std(), acc.count)
        out.update({f'{prefix}means': _floats(means), f'{prefix}ci_lower': _floats(lower),
                    f'{prefix}ci_upper': _floats(upper), f'{prefix}stds': _floats(acc.std()),
                    f'{prefix}n_per_layer': acc.count.tolist(), f'{prefix}nan_dropped': acc.dropped.tolist()})
    out['n_samples'] = token.n
    return out
