"""Text-to-video PRVR retrieval metrics: R@1, R@5, R@10, R@100, SumR and median rank.

Each query has exactly one relevant video. A query's rank is computed from its row of the
query x video score matrix, **pessimistically**: rank = number of videos whose score is >= the
relevant video's score (so every tie counts against the model; a constant scorer ranks every
query last instead of getting R@1 = 100). The official code breaks ties arbitrarily by an unstable
sort; being pessimistic makes results reproducible and impossible to inflate with degenerate scores.

Scores are consumed in chunks of queries, so a TVR-size test split (10,895 queries x 2,179 videos)
never needs more memory than one chunk: pass a callable that scores a slice of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from trainables.trial_report import RECALL_KS  # the cutoffs every report carries

ScoreFn = Callable[[slice], np.ndarray]


class NonFiniteScores(ValueError):
    """A model's scores hold NaN: what a diverged model evaluates to (a shape or index error is a bug)."""


def ground_truth_ranks(scores: np.ndarray, gt: np.ndarray, first_query: int = 0) -> np.ndarray:
    """1-based pessimistic rank of each query's relevant video.

    ``scores``: (queries, videos) array for a chunk of queries; ``gt``: (queries,) index of the
    relevant video of each row; ``first_query``: index of the chunk's first query, used in errors.
    """
    scores = np.asarray(scores)
    gt = np.asarray(gt, dtype=np.int64)
    if scores.ndim != 2 or gt.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (queries, videos) and gt (queries,), got {scores.shape} and {gt.shape}")
    if gt.size and (gt.min() < 0 or gt.max() >= scores.shape[1]):
        raise ValueError(f"a ground-truth video index is outside [0, {scores.shape[1]})")
    nan_rows = np.flatnonzero(np.isnan(scores).any(axis=1))
    if nan_rows.size:
        raise NonFiniteScores(f"scores of query {first_query + int(nan_rows[0])} contain NaN")
    positive = scores[np.arange(scores.shape[0]), gt][:, None]
    return (scores >= positive).sum(axis=1).astype(np.int64)


def metrics_from_ranks(ranks: Sequence[int] | np.ndarray, ks: Iterable[int] = RECALL_KS) -> dict[str, float]:
    """R@K (percent) for each K, SumR (their sum), median and mean rank."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to evaluate")
    result = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    result["SumR"] = float(sum(result[f"R@{k}"] for k in ks))
    result["MedR"] = float(np.median(ranks))
    result["MeanR"] = float(np.mean(ranks))
    return result


def chunked_ranks(score_fn: ScoreFn, gt: np.ndarray, chunk_size: int = 1000) -> np.ndarray:
    """Ranks of all queries, asking ``score_fn`` for one slice of queries at a time."""
    gt = np.asarray(gt, dtype=np.int64)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    ranks = np.empty(gt.shape[0], dtype=np.int64)
    for start in range(0, gt.shape[0], chunk_size):
        rows = slice(start, min(start + chunk_size, gt.shape[0]))
        chunk = np.asarray(score_fn(rows))
        if chunk.shape[0] != rows.stop - rows.start:
            raise ValueError(f"score_fn returned {chunk.shape[0]} rows for queries {rows.start}:{rows.stop}")
        ranks[rows] = ground_truth_ranks(chunk, gt[rows], first_query=start)
    return ranks


def retrieval_metrics(
    scores: np.ndarray | ScoreFn,
    gt: np.ndarray,
    chunk_size: int = 1000,
    ks: Iterable[int] = RECALL_KS,
) -> dict[str, float]:
    """R@1/5/10/100, SumR, MedR and MeanR from a score matrix or a chunked score function."""
    score_fn = scores if callable(scores) else (lambda rows: scores[rows])
    return metrics_from_ranks(chunked_ranks(score_fn, gt, chunk_size), ks)


def chance_recall(k: int, num_videos: int) -> float:
    """Expected R@k (percent) of a random scorer over ``num_videos`` candidates."""
    return 100.0 * min(k, num_videos) / num_videos
