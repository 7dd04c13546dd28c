"""The ranking losses of ``trainables.losses.ranking`` against hand computations written as plain loops.

Each reference below follows the MS-SL release's definitions (HuiGuanLab/ms-sl ``method/model.py``:
``get_clip_triplet_loss``, ``get_frame_trip_loss``; ``method/loss.py`` clip NCE), paraphrased from the
spec (``/work/shared/specs/backbones.md`` §3), on small score matrices: several queries per video, ties
among the negatives, and the hard-negative pool. The sampled negatives are made deterministic by the
matrix (one negative only, tied negatives, or a pool of 1), or the loss is checked to be one of the
values the pool allows, so no reference reuses the function under test or its random draws.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainables.losses.ranking import clip_nce, clip_triplet, diagonal_triplet, frame_nce

MARGIN = 0.2

# 6 queries of 3 videos (video 0: 2 queries, video 1: 1, video 2: 3), distinct scores, hinges active
SCORES = [
    [0.50, 0.45, 0.10],
    [0.30, 0.40, 0.35],
    [0.05, 0.60, 0.55],
    [0.20, 0.25, 0.70],
    [0.15, 0.65, 0.30],
    [0.45, 0.00, 0.40],
]
LABELS = [0, 0, 1, 2, 2, 2]


def hinge(x: float) -> float:
    return max(0.0, x)


def t2v_negatives(row: list[float], positive: int, pool: int | None) -> list[float]:
    """The scores a query's negative may take: every other video, or (hard) the ``pool`` highest."""
    others = sorted((s for v, s in enumerate(row) if v != positive), reverse=True)
    return others if pool is None else others[:pool]


def reference_t2v(scores: list[list[float]], labels: list[int], margin: float, negatives: list[float]) -> float:
    """mean over queries of max(0, m + S[q, v-] - S[q, y(q)]) for the given per-query negative scores."""
    return sum(hinge(margin + negatives[q] - scores[q][labels[q]]) for q in range(len(scores))) / len(scores)


def reference_v2t_hard(scores: list[list[float]], labels: list[int], margin: float) -> float:
    """(1/Nv) sum over videos of max(0, m + hardest other-video query - mean of the video's own queries)."""
    nv = len(scores[0])
    total = 0.0
    for v in range(nv):
        own = [scores[q][v] for q in range(len(scores)) if labels[q] == v]
        other = [scores[q][v] for q in range(len(scores)) if labels[q] != v]
        total += hinge(margin + max(other) - sum(own) / len(own))
    return total / nv


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- clip_triplet

def test_clip_triplet_hard_pool_of_one_equals_the_hand_loop():
    """Hard phase, pool 1: the t2v negative is each query's hardest other video, the v2t one the hardest
    other-video query (deterministic). Fails if the margin or either direction is dropped."""
    negatives = [t2v_negatives(SCORES[q], LABELS[q], pool=1)[0] for q in range(len(SCORES))]
    expected = reference_t2v(SCORES, LABELS, MARGIN, negatives) + reference_v2t_hard(SCORES, LABELS, MARGIN)
    got = clip_triplet(torch.tensor(SCORES), torch.tensor(LABELS), MARGIN, True, 1, gen())
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # the hand values themselves (so the loops above cannot silently change):
    # t2v hinges 0.15, 0.30, 0.15, 0, 0.55, 0.25; v2t: video 0 0.2+0.45-0.40, video 1 0.2+0.65-0.60,
    # video 2 0.2+0.55-mean(0.70, 0.30, 0.40)
    assert reference_t2v(SCORES, LABELS, MARGIN, negatives) == pytest.approx(1.4 / 6)
    assert reference_v2t_hard(SCORES, LABELS, MARGIN) == pytest.approx((0.25 + 0.25 + 0.75 - 1.4 / 3) / 3)


def test_clip_triplet_margin_enters_the_text_to_video_half():
    """With v2t hinges all inactive (margin 0, positives far above), the loss is the t2v half alone:
    at margin m it must equal mean_q max(0, m + neg - pos)."""
    scores = [[0.9, 0.1], [0.8, 0.75], [0.2, 0.9]]  # queries of videos 0, 0, 1
    labels = [0, 0, 1]
    for margin in (0.0, 0.1, 0.3):
        expected_t2v = reference_t2v(scores, labels, margin, [0.1, 0.75, 0.2])  # 2 videos: one negative each
        # v2t: video 0 pos mean 0.85, neg 0.2; video 1 pos 0.9, neg max 0.75 (hard) -> both inactive below 0.15
        expected = expected_t2v + reference_v2t_hard(scores, labels, margin)
        got = clip_triplet(torch.tensor(scores), torch.tensor(labels), margin, True, 20, gen())
        assert got.item() == pytest.approx(expected, abs=1e-6), margin
    assert reference_t2v(scores, labels, 0.1, [0.1, 0.75, 0.2]) == pytest.approx(0.05 / 3)


def test_clip_triplet_uniform_phase_with_tied_negatives():
    """Uniform phase: every negative score is 0.3 (ties), so any draw gives the same loss, exact whatever
    the generator; video 0 has two queries, so its v2t positive is their mean."""
    positives = {(0, 0): 0.6, (1, 0): 0.2, (2, 1): 0.5, (3, 2): 0.4}
    labels = [0, 0, 1, 2]
    scores = [[positives.get((q, v), 0.3) for v in range(3)] for q in range(4)]
    t2v = sum(hinge(MARGIN + 0.3 - scores[q][labels[q]]) for q in range(4)) / 4
    v2t = 0.0
    for v in range(3):
        own = [scores[q][v] for q in range(4) if labels[q] == v]
        v2t += hinge(MARGIN + 0.3 - sum(own) / len(own))
    v2t /= 3
    assert (t2v, v2t) == (pytest.approx(0.4 / 4), pytest.approx(0.2 / 3))  # the hand values
    for seed in range(5):
        got = clip_triplet(torch.tensor(scores), torch.tensor(labels), MARGIN, False, 20, gen(seed))
        assert got.item() == pytest.approx(t2v + v2t, abs=1e-6), seed


def test_clip_triplet_hard_pool_draws_only_among_the_pool():
    """Hard phase, pool 2 of 3 negatives: over many draws every loss is one of the values the pool allows
    (each query's negative one of its 2 hardest other videos), and more than one value occurs."""
    scores = [
        [0.9, 0.7, 0.5, 0.1],
        [0.6, 0.8, 0.3, 0.75],
        [0.2, 0.4, 0.85, 0.8],
        [0.55, 0.35, 0.45, 0.95],
    ]
    labels = [0, 1, 2, 3]
    margin = 1.0  # every hinge active: each choice of negatives gives its own value
    v2t = reference_v2t_hard(scores, labels, margin)
    pools = [t2v_negatives(scores[q], labels[q], pool=2) for q in range(4)]
    allowed = {round(reference_t2v(scores, labels, margin, list(choice)) + v2t, 6)
               for choice in itertools.product(*pools)}
    outside = {round(reference_t2v(scores, labels, margin, list(choice)) + v2t, 6)
               for choice in itertools.product(*[t2v_negatives(scores[q], labels[q], None) for q in range(4)])}
    assert outside - allowed  # some values are reachable only with a negative outside the pool
    seen = {round(clip_triplet(torch.tensor(scores), torch.tensor(labels), margin, True, 2, gen(s)).item(), 6)
            for s in range(60)}
    assert seen <= allowed and len(seen) > 1


# --------------------------------------------------------------------------- diagonal_triplet

DIAG = [
    [0.8, 0.6, 0.1, 0.7],
    [0.5, 0.4, 0.45, 0.2],
    [0.3, 0.9, 0.6, 0.0],
    [0.65, 0.1, 0.2, 0.5],
]


def reference_diagonal_hard(scores: list[list[float]], margin: float) -> float:
    """(1/N) sum_i [max(0, m + hardest off-diagonal of row i - S_ii) + max(0, m + hardest of column i - S_ii)]."""
    n = len(scores)
    total = 0.0
    for i in range(n):
        row = max(scores[i][j] for j in range(n) if j != i)
        column = max(scores[j][i] for j in range(n) if j != i)
        total += hinge(margin + row - scores[i][i]) + hinge(margin + column - scores[i][i])
    return total / n


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.2])
def test_diagonal_triplet_hard_pool_of_one_equals_the_hand_loop(margin: float):
    got = diagonal_triplet(torch.tensor(DIAG), margin, True, 1, gen())
    assert got.item() == pytest.approx(reference_diagonal_hard(DIAG, margin), abs=1e-6)


def test_diagonal_triplet_hand_value_and_margin():
    # rows: 0.8 vs 0.7 -> 0.1; 0.4 vs 0.5 -> 0.3; 0.6 vs 0.9 -> 0.5; 0.5 vs 0.65 -> 0.35  (sum 1.25)
    # cols: 0.8 vs 0.65 -> 0.05; 0.4 vs 0.9 -> 0.7; 0.6 vs 0.45 -> 0.05; 0.5 vs 0.7 -> 0.4  (sum 1.2)
    assert reference_diagonal_hard(DIAG, 0.2) == pytest.approx(2.45 / 4)
    got_margin = diagonal_triplet(torch.tensor(DIAG), 0.2, True, 1, gen()).item()
    got_none = diagonal_triplet(torch.tensor(DIAG), 0.0, True, 1, gen()).item()
    assert got_margin == pytest.approx(2.45 / 4, abs=1e-6) and got_none == pytest.approx(1.25 / 4, abs=1e-6)


def test_diagonal_triplet_uniform_with_two_items_is_deterministic():
    """Two pairs: each row and each column has exactly one negative, drawn uniformly or not."""
    scores = [[0.7, 0.6], [0.65, 0.5]]
    expected = (hinge(MARGIN + 0.6 - 0.7) + hinge(MARGIN + 0.65 - 0.5)  # rows
                + hinge(MARGIN + 0.65 - 0.7) + hinge(MARGIN + 0.6 - 0.5)) / 2  # columns
    for seed in range(3):
        got = diagonal_triplet(torch.tensor(scores), MARGIN, False, 20, gen(seed))
        assert got.item() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- NCE

def lse(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def reference_clip_nce(logits: list[list[float]], labels: list[int]) -> tuple[float, float]:
    """(t2v, v2t) halves: mean_q [lse_v Z[q,:] - Z[q,y(q)]] and, over videos with a query,
    mean_v [lse_q Z[:,v] - lse_{q in P(v)} Z[q,v]]."""
    nq, nv = len(logits), len(logits[0])
    t2v = sum(lse(logits[q]) - logits[q][labels[q]] for q in range(nq)) / nq
    present = [v for v in range(nv) if v in labels]
    v2t = sum(lse([logits[q][v] for q in range(nq)]) - lse([logits[q][v] for q in range(nq) if labels[q] == v])
              for v in present) / len(present)
    return t2v, v2t


def test_clip_nce_has_both_halves_with_multi_positive_videos():
    logits = [[3.0 * s - 0.5 * j for j, s in enumerate(row)] for row in SCORES]
    t2v, v2t = reference_clip_nce(logits, LABELS)
    assert v2t > 0.1 and t2v > 0.1  # both halves matter for the value
    got = clip_nce(torch.tensor(logits), torch.tensor(LABELS))
    assert got.item() == pytest.approx(t2v + v2t, abs=1e-5)


def test_clip_nce_with_ties_and_a_single_query_per_video():
    """All logits equal: t2v = log Nv, v2t = log Nq - log |P(v)|, averaged over the videos."""
    logits = [[1.0] * 3 for _ in range(4)]
    labels = [0, 0, 1, 2]
    expected = math.log(3) + (math.log(4 / 2) + math.log(4) + math.log(4)) / 3
    got = clip_nce(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_frame_nce_equals_the_row_and_column_loop():
    """Diagonal InfoNCE: for each i, lse over row i and column i together (2N entries) minus Z_ii."""
    logits = [[2.0 * s for s in row] for row in DIAG]
    n = len(logits)
    expected = sum(lse(logits[i] + [logits[j][i] for j in range(n)]) - logits[i][i] for i in range(n)) / n
    assert frame_nce(torch.tensor(logits)).item() == pytest.approx(expected, abs=1e-5)
