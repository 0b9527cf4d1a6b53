"""Uncertainty of reported accuracies (docs/evaluation.md "Intervals"): binomial intervals, a paired
bootstrap over items, the exact McNemar test and the Student-t interval over seeds.

The one place these are computed: ``eval.metrics`` / ``eval.compare`` (per-item results of one or two
runs) and the miniature's report (``scripts.miniature.report``: accuracies over seeds) use them. scipy
computes what it has (``binomtest`` and its ``proportion_ci``, ``t``); the paired bootstrap is written here
because it resamples several strata (datasets) at once, pairing the modes of one item, which
``scipy.stats.bootstrap`` does not (its ``paired=True`` takes one stratum; the tests check ours against it
there). Pure functions on numbers and numpy arrays, no torch.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

Interval = Tuple[float, float]


def binomial_interval(successes: int, n: int, confidence: float = CONFIDENCE,
                      method: str = 'wilson') -> Optional[Interval]:
    """(lo, hi) of the ``confidence`` interval of a proportion ``successes / n`` (fractions in [0, 1]);
    ``method`` 'wilson' (score interval) or 'exact' (Clopper-Pearson), as ``scipy.stats.binomtest``
    computes them; None when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f'binomial_interval: need 0 <= successes <= n, got {successes} of {n}')
    if n == 0:
        return None
    ci = scipy_stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return float(ci.low), float(ci.high)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``only_a`` items right in run A only,
    ``only_b`` right in run B only (a binomial test of ``only_a`` of ``only_a + only_b`` at 1/2, so
    p = min(1, 2 * P[X <= min(only_a, only_b)])); 1.0 when no item is discordant."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f'mcnemar_exact: counts must be >= 0, got {only_a}, {only_b}')
    if only_a + only_b == 0:
        return 1.0
    return float(scipy_stats.binomtest(int(only_a), int(only_a + only_b), 0.5).pvalue)


def paired_bootstrap(statistic: Callable[[Sequence[np.ndarray]], np.ndarray], strata: Sequence[np.ndarray],
                     n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = BOOTSTRAP_SEED) -> Optional[Interval]:
    """Percentile interval of ``statistic`` under resampling of items, pairing within an item.

    ``strata``: one array per stratum (a dataset), shape (items, columns): the per-item values (e.g. 0/1
    correctness of the audio and text modes of one item, or of run A and run B). Each stratum's rows are
    resampled with replacement, independently of the other strata and keeping a row's columns together.
    ``statistic`` receives one array per stratum of shape (resamples, items, columns) and returns shape
    (resamples,); it also receives the original data as shape (1, items, columns). Resamples where the
    statistic is not finite (e.g. an MRR whose text accuracy resampled to 0) are dropped. Seeded: the same
    data give the same interval. None when a stratum is empty or no resample is finite."""
    arrays = [np.asarray(s, dtype=float) for s in strata]
    if not arrays or any(a.ndim != 2 or len(a) == 0 for a in arrays):
        return None
    rng = np.random.default_rng(seed)
    values = []
    batch = max(1, 200_000 // max(sum(len(a) for a in arrays), 1))   # bound memory: resamples x items per batch
    done = 0
    while done < n_resamples:
        size = min(batch, n_resamples - done)
        samples = [a[rng.integers(0, len(a), (size, len(a)))] for a in arrays]
        values.append(np.asarray(statistic(samples), dtype=float))
        done += size
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def t_interval(values: Sequence[Optional[float]], confidence: float = CONFIDENCE) -> Tuple[Optional[float],
                                                                                            Optional[float]]:
    """(mean, half-width) of the Student-t interval of ``values`` (None values skipped); half-width None with
    fewer than 2 values, mean None without values."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    sd = statistics.stdev(xs)
    return mean, float(scipy_stats.t.ppf(0.5 + confidence / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))


def seeds_for_half_width(sd: float, half_width: float, confidence: float = CONFIDENCE,
                         max_seeds: int = 10_000) -> Optional[int]:
    """The smallest number of seeds n >= 2 whose Student-t interval of a mean has a half-width of at most
    ``half_width`` when the values' standard deviation is ``sd``: t(1 - alpha/2, n - 1) * sd / sqrt(n) <=
    half_width (the planning rule of a paired design, with the observed SD taken as the true one); None when more
    than ``max_seeds`` would be needed."""
    if sd < 0 or half_width <= 0:
        raise ValueError(f'seeds_for_half_width: need sd >= 0 and half_width > 0, got {sd}, {half_width}')
    q = 0.5 + confidence / 2
    for n in range(2, max_seeds + 1):
        if float(scipy_stats.t.ppf(q, n - 1)) * sd / math.sqrt(n) <= half_width:
            return n
    return None
