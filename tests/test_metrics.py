"""Retrieval metrics against hand-computed rankings, including ties, NaN and chunking."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.evaluation.metrics import (
    chance_recall,
    chunked_ranks,
    ground_truth_ranks,
    metrics_from_ranks,
    retrieval_metrics,
)


def test_hand_computed_ranks_with_ties_counted_against_the_model():
    scores = np.array([
        [0.9, 0.1, 0.5],  # gt 0 strictly best -> rank 1
        [0.2, 0.2, 0.2],  # gt 1, three-way tie -> rank 3
        [0.1, 0.3, 0.3],  # gt 2 tied with video 1 -> rank 2
        [0.7, 0.8, 0.9],  # gt 0 is the worst -> rank 3
    ])
    assert ground_truth_ranks(scores, np.array([0, 1, 2, 0])).tolist() == [1, 3, 2, 3]


def test_hand_computed_recalls():
    result = metrics_from_ranks([1, 2, 6, 11, 101])
    assert result == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@100": 80.0, "SumR": 200.0,
                      "MedR": 6.0, "MeanR": 24.2}


def test_constant_scorer_gets_no_recall():
    scores = np.zeros((20, 200))
    gt = np.arange(20)
    result = retrieval_metrics(scores, gt)
    assert result["R@1"] == result["R@5"] == result["R@10"] == result["R@100"] == 0.0
    assert result["MedR"] == 200


def test_nan_scores_are_an_error_naming_the_query():
    scores = np.random.default_rng(0).random((30, 10))
    scores[17, 3] = np.nan
    with pytest.raises(ValueError, match="scores of query 17 contain NaN"):
        retrieval_metrics(scores, np.zeros(30, dtype=int), chunk_size=8)


def test_bad_ground_truth_index():
    with pytest.raises(ValueError, match="outside"):
        ground_truth_ranks(np.zeros((2, 3)), np.array([0, 3]))


def test_chunked_equals_independent_argsort_ranking():
    rng = np.random.default_rng(1)
    scores = rng.random((503, 97))  # continuous: no ties
    gt = rng.integers(0, 97, size=503)
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = np.array([int(np.flatnonzero(order[q] == gt[q])[0]) + 1 for q in range(503)])
    np.testing.assert_array_equal(chunked_ranks(lambda rows: scores[rows], gt, chunk_size=64), expected)
    full = retrieval_metrics(scores, gt, chunk_size=10_000)
    assert retrieval_metrics(scores, gt, chunk_size=7) == full
    assert full["R@1"] == pytest.approx(100.0 * np.mean(expected == 1))
    assert full["SumR"] == pytest.approx(sum(100.0 * np.mean(expected <= k) for k in (1, 5, 10, 100)))


def test_score_function_is_asked_one_chunk_at_a_time():
    num_queries, num_videos, chunk = 10_895, 2_179, 1000  # TVR test size
    gt = np.arange(num_queries) % num_videos
    asked = []

    def score_fn(rows: slice) -> np.ndarray:
        asked.append(rows.stop - rows.start)
        block = np.zeros((rows.stop - rows.start, num_videos), dtype=np.float32)
        block[np.arange(block.shape[0]), gt[rows]] = 1.0  # a perfect scorer
        return block

    result = retrieval_metrics(score_fn, gt, chunk_size=chunk)
    assert max(asked) == chunk and sum(asked) == num_queries
    assert result["R@1"] == 100.0 and result["SumR"] == 400.0


def test_score_function_returning_wrong_rows_is_an_error():
    with pytest.raises(ValueError, match="returned 3 rows for queries 0:5"):
        chunked_ranks(lambda rows: np.zeros((3, 4)), np.zeros(5, dtype=int), chunk_size=5)


def test_chance_level():
    assert chance_recall(1, 100) == 1.0
    assert chance_recall(100, 50) == 100.0
