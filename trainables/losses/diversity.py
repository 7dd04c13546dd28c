"""GMMFormer-family query losses: query diverse loss (v1), its revamped focal form (v2), optimal matching (v2).

Notation: ``queries`` (Nq, H) are the pooled query vectors of a batch, ``labels[q]`` the index of query q's
video. Same-video pairs are found by comparing labels (the release builds the mask from contiguous label
blocks, which is the same thing for the training collate).

* ``query_diverse_loss`` (GMMFormer): with C the cosine matrix and N the same-video off-diagonal mask,
  (1/Nq) sum_j log(1 + sum_{i: N_ij} exp(alpha (C_ij + delta))). Pushes a video's queries apart.
* ``revamped_query_diverse_loss`` (GMMFormer v2):
  (1/Nq) sum_{N_ij} (1 + C_ij)^gamma log(1 + exp(alpha (C_ij + delta))).
* ``optimal_matching_loss`` (GMMFormer v2): the queries of each video with >= 2 queries are matched
  one-to-one to its clip tokens by the Hungarian algorithm on -cos; loss = 1 - mean matched cos. The
  assignment is computed without grad on CPU (scipy), the loss on the matched pairs with grad.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def same_video_pairs(labels: torch.Tensor) -> torch.Tensor:
    """(Nq, Nq) bool mask of distinct queries that describe the same video."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def _query_cosine(queries: torch.Tensor) -> torch.Tensor:
    x = F.normalize(queries, dim=-1)
    return x @ x.t()


def query_diverse_loss(queries: torch.Tensor, labels: torch.Tensor, *, alpha: float, delta: float) -> torch.Tensor:
    """GMMFormer's QDL; log(1 + sum exp) is computed as a logsumexp with a zero term (overflow-safe)."""
    cos = _query_cosine(queries)
    logits = (alpha * (cos + delta)).masked_fill(~same_video_pairs(labels), float("-inf"))
    with_one = torch.cat([logits, logits.new_zeros(1, logits.shape[1])], dim=0)  # the "1 +" term
    return with_one.logsumexp(dim=0).sum() / len(queries)


def revamped_query_diverse_loss(queries: torch.Tensor, labels: torch.Tensor, *, alpha: float, delta: float,
                                gamma: float) -> torch.Tensor:
    """GMMFormer v2's QDL: per same-video pair, focal factor (1 + C)^gamma times softplus(alpha (C + delta))."""
    cos = _query_cosine(queries)
    pairs = same_video_pairs(labels)
    terms = (1.0 + cos).clamp(min=0.0).pow(gamma) * F.softplus(alpha * (cos + delta))
    return torch.where(pairs, terms, torch.zeros_like(terms)).sum() / len(queries)


def optimal_assignment(similarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of each video's queries to its tokens, maximising total similarity.

    ``similarity`` (Nq, L): each query against the L tokens of its own video. Videos with a single query
    are skipped. Returns (query indices, token indices) of the matched pairs, on ``similarity``'s device.
    """
    from scipy.optimize import linear_sum_assignment  # here: 0.2 s of every trial's start, for GMMFormer v2 only

    sims = similarity.detach().float().cpu().numpy()
    groups = labels.detach().cpu().numpy()
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for video in np.unique(groups):
        members = np.flatnonzero(groups == video)
        if len(members) < 2:
            continue
        r, c = linear_sum_assignment(-sims[members])
        rows.append(members[r])
        cols.append(c)
    device = similarity.device
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    return (torch.from_numpy(np.concatenate(rows)).to(device), torch.from_numpy(np.concatenate(cols)).to(device))


def optimal_matching_loss(queries: torch.Tensor, clip_tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine of the Hungarian-matched (query, own clip token) pairs; 0 when no video has 2 queries.

    ``queries`` (Nq, H), ``clip_tokens`` (B, L, H); each query is compared with its own video's tokens only.
    """
    q = F.normalize(queries, dim=-1)
    own = torch.bmm(F.normalize(clip_tokens, dim=-1)[labels], q[:, :, None]).squeeze(-1)  # (Nq, L)
    rows, cols = optimal_assignment(own, labels)
    if len(rows) == 0:
        return own.sum() * 0.0
    return 1.0 - own[rows, cols].mean()
