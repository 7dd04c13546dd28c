"""Relational knowledge distillation (RKD, Park et al. CVPR'19), MSC's Text Correlation Preservation (TCPL).

MSC (``admins97/MSC_PRVR``, ``src/Losses/loss.py`` ``RkdDistance`` / ``RKdAngle``, ``src/Utils/utils.py``
``pdist``) keeps the relations between the learned query embeddings (student, N x H) close to those of a
frozen sentence feature (teacher, N x D; no gradient), over all N queries of a batch:

* **distance**: psi_D(e)_ij = ||e_i - e_j|| / mean_{i != j} ||e_i - e_j||, L_D = SmoothL1(psi_D(s), psi_D(t))
  averaged over all N^2 entries (the zero diagonal included, as released). Distances come from the Gram
  identity ||a||^2 + ||b||^2 - 2 a.b clamped at 1e-12 before the square root (the release's ``pdist``).
* **angle**: psi_A(e)_jik = <(e_i - e_j)/||.||, (e_k - e_j)/||.||> with vertex j (a zero difference
  normalises to the zero vector), L_A = SmoothL1(psi_A(s), psi_A(t)) averaged over all N^3 triplets
  (degenerate ones included, as released).

Both are invariant to a rotation and a scaling of either embedding set. The angle term has N^3 entries
(N = 640 queries on TVR: 262M floats per side), so ``rkd_angle`` processes vertices in blocks of at most
``block`` floats and recomputes each block in backward (activation checkpointing): memory is O(block + N H)
whatever N, and the value is the unblocked one up to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

PDIST_EPS = 1e-12  # the release's pdist clamp of squared distances
#: default largest (vertices x N x N) block of angles materialised at once (64 MB in float32)
ANGLE_BLOCK = 1 << 24


def pairwise_distances(e: torch.Tensor, eps: float = PDIST_EPS) -> torch.Tensor:
    """(N, N) Euclidean distances of the rows of ``e`` (N, D), zero diagonal (the release's ``pdist``)."""
    squares = e.pow(2).sum(dim=1)
    squared = (squares[:, None] + squares[None, :] - 2.0 * e @ e.t()).clamp(min=eps)
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return squared.sqrt() * off_diagonal


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """psi_D: pairwise distances divided by their mean over the N (N - 1) off-diagonal pairs."""
    d = pairwise_distances(e)
    n = len(e)
    return d / (d.sum() / max(n * (n - 1), 1))


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_D: SmoothL1 between the mean-normalised distance matrices of ``student`` (N, H) and ``teacher`` (N, D).

    Zero (still attached to the graph) for fewer than two rows, which have no pair to normalise by.
    """
    if len(student) < 2:
        return student.float().sum() * 0.0
    with torch.no_grad():
        target = _normalised_distances(teacher.float())
    return F.smooth_l1_loss(_normalised_distances(student.float()), target, reduction="mean")


def _angles(e: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """(V, N, N) cosines of the angles at each vertex e_j (``vertices`` (V, D)) between all pairs of rows of e."""
    directions = F.normalize(e[None, :, :] - vertices[:, None, :], p=2, dim=2)  # (V, N, D)
    return directions @ directions.transpose(1, 2)


def _angle_block_sum(student: torch.Tensor, teacher: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Sum of the SmoothL1 angle differences over vertices ``start:stop``."""
    with torch.no_grad():
        target = _angles(teacher, teacher[start:stop])
    return F.smooth_l1_loss(_angles(student, student[start:stop]), target, reduction="sum")


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor, block: int = ANGLE_BLOCK) -> torch.Tensor:
    """L_A: SmoothL1 between the triplet angle tensors of ``student`` (N, H) and ``teacher`` (N, D), mean over N^3.

    Vertices are processed ``max(1, block // N^2)`` at a time; with more than one block and gradients on,
    each block is recomputed in backward instead of keeping its (V, N, N) and (V, N, D) activations.
    """
    student, teacher = student.float(), teacher.float().detach()
    n = len(student)
    step = max(1, block // max(1, n * n))
    if step >= n:
        return _angle_block_sum(student, teacher, 0, n) / n**3
    recompute = torch.is_grad_enabled() and student.requires_grad
    total = student.new_zeros(())
    for start in range(0, n, step):
        stop = min(n, start + step)
        if recompute:
            total = total + checkpoint(_angle_block_sum, student, teacher, start, stop, use_reentrant=False)
        else:
            total = total + _angle_block_sum(student, teacher, start, stop)
    return total / n**3


__all__ = ["ANGLE_BLOCK", "pairwise_distances", "rkd_angle", "rkd_distance"]
