"""AMDNet's moment losses, as standalone functions any backbone can use (``songpipi/AMDNet``).

* ``moment_diversity`` (L_div, the release's ``mask_div``): K soft temporal masks per video should
  cover different parts of the video. Each mask is normalised to sum 1 over positions (G), and the
  Gram matrix G G^T is pulled towards ``target * I``: off-diagonal overlap is penalised, and the
  diagonal (each mask's concentration, 1/width for a flat window) is pulled towards ``target``.
  L_div = mean_b || target * I_K - G_b G_b^T ||_F^2.
* ``moment_relevance`` (L_rel, the hinge in the release's ``forward``): for each query, the best of its
  own video's K moment features must beat that video's global vector by ``margin`` in cosine:
  L_rel = mean_q max(0, margin + cos(q, g_y(q)) - max_k cos(q, m_y(q),k)).

Both take plain tensors (no model), so a plugin can feed them another backbone's moment features,
e.g. GMMFormer's 32 clip tokens or MS-SL's proposals as moments and a pooled vector as the global one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def moment_diversity(masks: torch.Tensor, target: float) -> torch.Tensor:
    """L_div of non-negative masks ``masks`` (B, K, L): mean over B of ||target*I - G G^T||_F^2.

    G is each mask divided by its sum over the L positions (the release normalises the peak-1
    Gaussians this way before the Gram matrix).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (videos, K, positions), got shape {tuple(masks.shape)}")
    g = masks / masks.sum(dim=-1, keepdim=True)
    gram = g @ g.transpose(1, 2)  # (B, K, K)
    eye = torch.eye(masks.shape[1], dtype=masks.dtype, device=masks.device)
    return (target * eye - gram).pow(2).sum(dim=(1, 2)).mean()


def moment_relevance(
    queries: torch.Tensor,
    global_video: torch.Tensor,
    moments: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    moments_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_rel: mean over queries of max(0, margin + cos(q, global) - max_k cos(q, moment_k)), own video only.

    ``queries`` (Nq, H); ``global_video`` (Nv, H); ``moments`` (Nv, K, H); ``labels`` (Nq,) index of each
    query's video; optional ``moments_mask`` (Nv, K), 1 = a real moment (for padded moment sets, e.g.
    frames); every video needs at least one real moment. Only the positive pairs are needed, so
    memory is O(Nq x K x H).
    """
    q = F.normalize(queries, dim=-1)
    own_global = F.normalize(global_video, dim=-1)[labels]  # (Nq, H)
    own_moments = F.normalize(moments, dim=-1)[labels]  # (Nq, K, H)
    moment_cos = torch.einsum("qh,qkh->qk", q, own_moments)
    if moments_mask is not None:
        moment_cos = moment_cos.masked_fill(moments_mask[labels] <= 0, NEG_INF)
    best_moment = moment_cos.max(dim=1).values
    global_cos = (q * own_global).sum(dim=-1)
    return (margin + global_cos - best_moment).clamp(min=0).mean()
