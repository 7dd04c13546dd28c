"""Triplet ranking and InfoNCE losses of the MS-SL family (reused by GMMFormer v1/v2 and the plugins).

Notation: ``scores`` is (Nq, Nv) for Nq queries and Nv videos of a batch; ``labels[q]`` is the index
of query q's video. Negatives are sampled with an explicit ``torch.Generator`` so that a resumed run
draws the same negatives. Vectorised versions of the release code's loops, same semantics:

* ``clip_triplet`` (``get_clip_triplet_loss``): t2v, for each query one negative video drawn uniformly
  among all other videos, or (hard phase) among the ``hard_pool_size`` highest-scoring ones;
  v2t, for each video the positive is the mean score of its queries and the negative one query of
  another video, drawn uniformly or (hard phase) the hardest. Sum of both hinge means.
* ``diagonal_triplet`` (``get_frame_trip_loss``): on a square matrix whose diagonal holds the
  positives, one negative column per row and one negative row per column, drawn the same way.
* ``clip_nce``: multi-positive InfoNCE without temperature on un-normalised scores:
  mean_q [lse_v Z[q,:] - Z[q,y(q)]] + mean_v [lse_q Z[:,v] - lse_{q in P(v)} Z[q,v]].
* ``frame_nce``: the diagonal version over a square matrix, denominator over row and column.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def _uniform_rank(rows: int, low: int, high: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, (rows,), generator=generator).to(device)


def _sampled_negatives(scores: torch.Tensor, positive: torch.Tensor, hard: bool, pool: int,
                       generator: torch.Generator) -> torch.Tensor:
    """For each row, the score of one negative column: uniform among all negatives, or among the
    ``pool`` highest ones when ``hard`` (the release sorts with the positive masked to the top)."""
    rows, cols = scores.shape
    masked = scores.detach().clone()
    masked[positive] = float("inf")
    order = masked.argsort(dim=1, descending=True)
    high = min(1 + pool, cols) if hard else cols
    pick = order[torch.arange(rows, device=scores.device), _uniform_rank(rows, 1, high, generator, scores.device)]
    return scores[torch.arange(rows, device=scores.device), pick]


def clip_triplet(scores: torch.Tensor, labels: torch.Tensor, margin: float, hard: bool, pool: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Triplet loss of a query x video score matrix, both directions (see the module docstring)."""
    nq, nv = scores.shape
    rows = torch.arange(nq, device=scores.device)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[rows, labels] = True
    t2v_neg = _sampled_negatives(scores, positive, hard, pool, generator)
    t2v = (margin + t2v_neg - scores[rows, labels]).clamp(min=0).mean()

    by_video = scores.t()  # (Nv, Nq)
    own = positive.t()
    pos = (by_video * own).sum(dim=1) / own.sum(dim=1).clamp(min=1)
    if hard:
        neg = by_video.masked_fill(own, NEG_INF).max(dim=1).values
    else:
        keys = torch.rand(by_video.shape, generator=generator).to(scores.device).masked_fill(own, -1.0)
        neg = by_video.gather(1, keys.argmax(dim=1, keepdim=True)).squeeze(1)
    v2t = (margin + neg - pos).clamp(min=0).sum() / nv
    return t2v + v2t


def diagonal_triplet(scores: torch.Tensor, margin: float, hard: bool, pool: int,
                     generator: torch.Generator) -> torch.Tensor:
    """Triplet loss of a square matrix whose diagonal holds the positive pairs."""
    n = scores.shape[0]
    diagonal = torch.eye(n, dtype=torch.bool, device=scores.device)
    pos = scores.diagonal()
    neg_columns = _sampled_negatives(scores, diagonal, hard, pool, generator)
    neg_rows = _sampled_negatives(scores.t(), diagonal, hard, pool, generator)
    return ((margin + neg_columns - pos).clamp(min=0).sum() + (margin + neg_rows - pos).clamp(min=0).sum()) / n


def clip_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE (no temperature) of a query x video matrix of raw scores."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    t2v = (logits.logsumexp(dim=1) - logits[rows, labels]).mean()
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[rows, labels] = True
    present = own.any(dim=0)  # videos with at least one query in the batch
    positives = logits.masked_fill(~own, NEG_INF).logsumexp(dim=0)
    v2t = (logits.logsumexp(dim=0) - positives)[present].mean()
    return t2v + v2t


def frame_nce(logits: torch.Tensor) -> torch.Tensor:
    """Diagonal InfoNCE of a square matrix: each diagonal entry against its row and column."""
    denominator = torch.cat([logits, logits.t()], dim=1).logsumexp(dim=1)
    return (denominator - logits.diagonal()).mean()
