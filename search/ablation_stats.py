"""Statistics of an ablation: per-cell mean and std over seeds, and each cell's difference to the base.

Two paired tests, named in every table:

- over seeds: the mean difference with a 95% Student-t confidence interval, and the Wilcoxon signed-rank
  test (two-sided, exact) on the per-seed differences: with 3 seeds its smallest possible p is 0.25, so
  it alone can never show significance; it is reported, not hidden;
- over queries: the paired bootstrap (resampling test queries with replacement, the same resample for both
  cells) of the difference in mean per-query SumR, each query's SumR averaged over the seeds first; a
  95% percentile interval and a two-sided p-value.

Per-query SumR: a query whose first relevant video is at rank r contributes 100 * [r <= k] for each k of
R@1/5/10/100, so its mean over queries is the SumR of the metrics module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy import stats

# a cell's mean, std and n over seeds: the statistics a search's confirmation stage reports, too
from tracking.champion import SeedStats as Summary
from tracking.champion import seed_stats as summarize
from trainables.errors import InputError

KS = (1, 5, 10, 100)


@dataclass(frozen=True)
class Difference:
    """A cell minus the base: mean, 95% CI and p-value, from one test."""

    test: str
    mean: float
    low: float
    high: float
    p: float


def per_query_sumr(ranks: np.ndarray) -> np.ndarray:
    """Each query's SumR contribution from the 1-based rank of its first relevant video."""
    ranks = np.asarray(ranks)
    return cast(np.ndarray, sum(100.0 * (ranks <= k) for k in KS))  # an array: KS is not empty


def per_query_metric(ranks: np.ndarray, column: str) -> np.ndarray:
    """Each query's contribution to ``column`` (``R@k``: 100 * [rank <= k]; ``SumR``: their sum)."""
    if column == "SumR":
        return per_query_sumr(ranks)
    k = int(column.removeprefix("R@"))
    return 100.0 * (np.asarray(ranks) <= k)


def seed_difference(cell: list[float], base: list[float]) -> Difference:
    """Paired over seeds (same seeds in both): mean difference, t interval, Wilcoxon signed-rank p."""
    cell_values, base_values = np.asarray(cell, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if cell_values.shape != base_values.shape or cell_values.size == 0:
        raise InputError(f"paired seeds differ: {cell_values.size} values against {base_values.size}")
    diff = cell_values - base_values
    n = diff.size
    mean = float(diff.mean())
    if n < 2:
        return Difference("t / Wilcoxon over seeds", mean, float("nan"), float("nan"), float("nan"))
    half = float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / np.sqrt(n))
    p = 1.0 if np.all(diff == 0) else float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    return Difference("t / Wilcoxon over seeds", mean, mean - half, mean + half, p)


def bootstrap_difference(cell: np.ndarray, base: np.ndarray, resamples: int = 2000, seed: int = 0) -> Difference:
    """Paired bootstrap over queries of mean(cell) - mean(base) (per-query values, same query order)."""
    cell, base = np.asarray(cell, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if cell.shape != base.shape or cell.ndim != 1 or cell.size == 0:
        raise InputError(f"paired queries differ: {cell.shape} against {base.shape}")
    diff = cell - base
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # resample in blocks: bounded memory on large query sets
        stop = min(resamples, start + 256)
        idx = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return Difference("paired bootstrap over queries", float(diff.mean()), float(low), float(high), p)


__all__ = ["Difference", "Summary", "bootstrap_difference", "per_query_metric", "per_query_sumr", "seed_difference",
           "summarize"]
