"""MSC's Cross-Branch Video Alignment (CBVA) and its adaptive segment count (``admins97/MSC_PRVR``,
``compute_vid_level_contrastive_loss`` in ``src/Losses/loss.py``, ``intra_diff`` in ``src/Models/MSC/model.py``).

Within each video, frame tokens f_l (B, L, H) and segment tokens c_s (B, S, H) (both already through the
shared projection) are aligned; every frame has one segment label, negatives are intra-video only:

* **f2c** (segment side detached): logits f_l . sg(c_s) / tau; for frame l, m+ / m- are the *means* of
  exp(logit) over its segment / the other segments, L_f2c = mean_l -log(m+ / (m+ + m-)).
* **c2f** (frame side detached): logits sg(f_l) . c_s / tau; for segment s, the means over its frames /
  all other frames, L_c2f = mean_s -log(m+ / (m+ + m-)).
* L_CBVA = mean over videos of (L_f2c + L_c2f). The release has no temperature (its ``* temperature`` is
  commented out): tau = 1 on the un-normalised projected features.

Computed in log space (log-mean-exp, softplus), which equals the release's exp(logit - max) ratios (the
max cancels in the ratio; the release's 1e-8 guards are left out) without underflowing to log(0). Only
valid frames and segments take part. A segment with no valid frame (short videos: fewer frames than
clips) has no positive and is left out of the c2f mean; in the release every segment has frames.

**Adaptive segment count** (B.3): per video, from the raw clip features (B, M, D): the graph with edges
cos > ``sim_thr``, its transitive closure, rho = connected off-diagonal pairs / (M (M - 1)), and
rho >= 0.8 -> 5, >= 0.6 -> 8, >= 0.4 -> 12, >= 0.2 -> 20, else 32 segments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: (rho cut-off, segment count), checked from the highest cut-off down; below all of them: NO_MERGE
RHO_CUTOFFS = ((0.8, 5), (0.6, 8), (0.4, 12), (0.2, 20))
NO_MERGE = 32
EMPTY_LOGIT = -1e30  # finite stand-in for "not in the set": log-mean-exp of an empty set ~ -1e30, no NaN


def connectivity_ratio(raw: torch.Tensor, sim_thr: float) -> torch.Tensor:
    """(B,) fraction of the M (M - 1) ordered off-diagonal pairs of each video's ``raw`` (B, M, D) tokens
    that are connected in the transitive closure of the graph cos > ``sim_thr``."""
    unit = F.normalize(raw.float(), dim=-1)
    m = raw.shape[1]
    eye = torch.eye(m, dtype=torch.bool, device=raw.device)
    reach = (unit @ unit.transpose(1, 2) > sim_thr) | eye
    for _ in range(max(1, math.ceil(math.log2(max(m, 2))))):  # paths of length up to 2^k: all of them
        reach = (reach.float() @ reach.float()) > 0
    connected = (reach & ~eye).sum(dim=(1, 2))
    return connected.float() / max(m * (m - 1), 1)


def segment_counts(raw: torch.Tensor, sim_thr: float) -> torch.Tensor:
    """(B,) adaptive segment count of each video from its raw clip features ``raw`` (B, M, D)."""
    rho = connectivity_ratio(raw, sim_thr)
    counts = torch.full_like(rho, NO_MERGE, dtype=torch.long)
    for cutoff, count in reversed(RHO_CUTOFFS):  # ascending cut-offs: the highest one reached wins
        counts = torch.where(rho >= cutoff, count, counts)
    return counts


def _log_mean_exp(logits: torch.Tensor, members: torch.Tensor, dim: int) -> torch.Tensor:
    """log of the mean over ``members`` of exp(logits) along ``dim`` (~EMPTY_LOGIT for an empty set)."""
    total = torch.logsumexp(logits.masked_fill(~members, EMPTY_LOGIT), dim=dim)
    return total - members.sum(dim=dim).clamp(min=1).log()


def _contrast(logits: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, dim: int) -> torch.Tensor:
    """-log(m+ / (m+ + m-)) = softplus(log m- - log m+), reduced along ``dim``; 0 when there is no negative."""
    return F.softplus(_log_mean_exp(logits, negative, dim) - _log_mean_exp(logits, positive, dim))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def cbva_terms(frames: torch.Tensor, frame_mask: torch.Tensor, segments: torch.Tensor, segment_mask: torch.Tensor,
               labels: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video (f2c (B,), c2f (B,)) of projected ``frames`` (B, L, H) with ``frame_mask`` (B, L) and
    ``segments`` (B, S, H) with ``segment_mask`` (B, S); ``labels`` (B, L) segment of each frame (valid frames
    must point at valid segments). f2c does not reach ``segments``, c2f does not reach ``frames``."""
    frames, segments = frames.float(), segments.float()
    valid_frame, valid_segment = frame_mask > 0, segment_mask > 0
    own = labels[..., None] == torch.arange(segments.shape[1], device=labels.device)  # (B, L, S)
    pairs = valid_frame[..., None] & valid_segment[:, None, :]
    positive, negative = own & pairs, ~own & pairs
    f2c_logits = frames @ segments.detach().transpose(1, 2) / temperature
    f2c = _masked_mean(_contrast(f2c_logits, positive, negative, dim=2), valid_frame)
    c2f_logits = frames.detach() @ segments.transpose(1, 2) / temperature
    c2f = _masked_mean(_contrast(c2f_logits, positive, negative, dim=1), positive.any(dim=1))
    return f2c, c2f


def cbva_loss(frames: torch.Tensor, frame_mask: torch.Tensor, segments: torch.Tensor, segment_mask: torch.Tensor,
              labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """L_CBVA = mean over videos of L_f2c + L_c2f (see ``cbva_terms``)."""
    f2c, c2f = cbva_terms(frames, frame_mask, segments, segment_mask, labels, temperature)
    return (f2c + c2f).mean()


__all__ = ["NO_MERGE", "RHO_CUTOFFS", "cbva_loss", "cbva_terms", "connectivity_ratio", "segment_counts"]
