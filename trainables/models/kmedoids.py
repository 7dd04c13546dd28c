"""Batched k-medoids over many small point sets at once (MS-SL++'s length-aware clip clustering).

MS-SL++ keeps, for every video, ``k`` representative proposals out of its 528 multi-scale proposals:
the medoids of a k-medoids clustering of the proposal vectors (``ms-sl-pp:method/fast_kmeans.py``).
This module does the same clustering, vectorised over the videos of a batch:

* **Distances**: Euclidean, from inner products as ``torch.cdist`` computes them for > 25 points
  (|x|^2 + |y|^2 - 2 x.y), with every point's distance to itself set to -1, so a medoid is always the
  unique nearest medoid of itself (the release's ``self_nearest``; it also keeps clusters non-empty
  and medoids distinct when points coincide). ``batch_kmedoids_gram`` takes the inner products
  directly, which is much cheaper when the points are linear in a small basis.
* **KKZ initialisation**: the first medoid is the point of largest L2 norm; each next one is the
  point farthest from its nearest already-chosen medoid.
* **Alternation** (at most ``max_iter`` rounds, the release's 60): assign each point to its nearest
  medoid, then move each medoid to the member of its cluster with the smallest sum of distances to
  the other members. A set stops when none of its medoids moves (it sits at a fixed point, so
  results do not depend on how sets are batched or chunked); converged sets drop out of the work.
* Medoids are returned **sorted ascending** (the release's ``id_sort``) so selected proposals keep
  their original (span length, start) order.

The release shifts all distances by a constant to make them negative and masks with products; that
shift does not change any argmin/argmax, so plain distances are used here. No gradients flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SELF_DISTANCE = -1.0  # distance of a point to itself: strictly below any real distance


@dataclass(frozen=True)
class KMedoids:
    """Result of :func:`batch_kmedoids` for B point sets of N points and k clusters."""

    medoids: torch.Tensor  # (B, k) long, point indices, ascending within each row
    assignment: torch.Tensor  # (B, N) long, column of ``medoids`` each point belongs to
    iterations: int  # alternation rounds run (the largest over the chunks)


def distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """(B, N, N) Euclidean distances from inner products (B, N, N), |x_i|^2 + |x_j|^2 - 2 x_i . x_j
    clamped at 0 (the formula ``torch.cdist`` uses for more than 25 points), diagonal ``SELF_DISTANCE``."""
    squared_norms = gram.diagonal(dim1=-2, dim2=-1)
    distances = gram.mul(-2.0).add_(squared_norms[:, :, None]).add_(squared_norms[:, None, :])
    distances = distances.clamp_min_(0.0).sqrt_()
    distances.diagonal(dim1=-2, dim2=-1).fill_(SELF_DISTANCE)
    return distances


def pairwise_distances(points: torch.Tensor) -> torch.Tensor:
    """(B, N, N) Euclidean distances of (B, N, D) points, the diagonal set to ``SELF_DISTANCE``.

    Each set is centred first (distances are translation-invariant): the inner-product formula then
    loses far less precision to cancellation than ``torch.cdist`` on the raw points.
    """
    centred = points - points.mean(dim=1, keepdim=True)
    return distances_from_gram(centred @ centred.transpose(1, 2))


def _rows(distances: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``distances[b, index[b, ...], :]`` for every b: rows of each set's distance matrix."""
    batch = torch.arange(distances.shape[0], device=distances.device).view(-1, *([1] * (index.dim() - 1)))
    return distances[batch, index]


def kkz_init(squared_norms: torch.Tensor, distances: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) KKZ seeds: largest-norm point first, then repeatedly the point farthest from the seeds."""
    first = squared_norms.argmax(dim=1)  # (B,)
    seeds = [first]
    nearest = _rows(distances, first)  # (B, N) distance of each point to its nearest seed
    for _ in range(1, k):
        nxt = nearest.argmax(dim=1)  # chosen points sit at SELF_DISTANCE, never picked again
        seeds.append(nxt)
        nearest = torch.minimum(nearest, _rows(distances, nxt))
    return torch.stack(seeds, dim=1)


def assign(distances: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """(B, N) index (into each row of ``medoids``) of every point's nearest medoid."""
    return _rows(distances, medoids).argmin(dim=1)


BMM_MAX_K = 256  # below this, per-cluster sums as a (N x N) @ (N x k) product beat an (N x N) mask


def within_cluster_sums(distances: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) sum of each point's distances to the members of its own cluster."""
    if k <= BMM_MAX_K:
        one_hot = torch.nn.functional.one_hot(assignment, k).to(distances.dtype)  # (B, N, k)
        return torch.bmm(distances, one_hot).gather(2, assignment[..., None]).squeeze(2)
    same = assignment[:, :, None] == assignment[:, None, :]  # (B, N, N)
    return torch.where(same, distances, torch.zeros((), dtype=distances.dtype, device=distances.device)).sum(-1)


def update_medoids(distances: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) new medoids: in each cluster, the member with the smallest sum of distances to the
    members of its cluster (first index on ties). Clusters are never empty (each medoid is its own
    nearest medoid), so the segment minima below always exist."""
    b, n = assignment.shape
    cost = within_cluster_sums(distances, assignment, k)
    lowest = cost.new_full((b, k), float("inf")).scatter_reduce(1, assignment, cost, "amin")
    positions = torch.arange(n, device=cost.device).expand(b, n)
    candidates = torch.where(cost == lowest.gather(1, assignment), positions, n)
    return positions.new_full((b, k), n).scatter_reduce(1, assignment, candidates, "amin")


def _kmedoids(distances: torch.Tensor, squared_norms: torch.Tensor, k: int,
              max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """k-medoids of a chunk of point sets from their distances; converged sets drop out of the
    working tensors once at most half of them are still moving."""
    medoids = kkz_init(squared_norms, distances, k)
    active = torch.arange(len(distances), device=distances.device)  # sets still moving
    work, work_medoids = distances, medoids  # working copies restricted to (a superset of) active
    where = active  # row of each active set in ``work``
    rounds = 0
    for rounds in range(1, max_iter + 1):  # noqa: B007 - the count after the loop is what it returns
        moved = update_medoids(work, assign(work, work_medoids), k)
        changed = (moved != work_medoids).any(dim=1)
        medoids[active] = moved[where]
        work_medoids = moved
        keep = changed[where]
        active, where = active[keep], where[keep]
        if not len(active):
            break
        if 2 * len(active) <= len(work):
            work, work_medoids = work[where], work_medoids[where]
            where = torch.arange(len(active), device=distances.device)
    medoids = medoids.sort(dim=1).values
    return medoids, assign(distances, medoids), rounds


def _gather(parts: list[tuple[torch.Tensor, torch.Tensor, int]], k: int, n: int, device: torch.device) -> KMedoids:
    if not parts:
        return KMedoids(torch.zeros(0, k, dtype=torch.long, device=device),
                        torch.zeros(0, n, dtype=torch.long, device=device), 0)
    return KMedoids(medoids=torch.cat([p[0] for p in parts]), assignment=torch.cat([p[1] for p in parts]),
                    iterations=max(p[2] for p in parts))


def _validate(shape: torch.Size, k: int, max_iter: int, what: str) -> None:
    if len(shape) != 3:
        raise ValueError(f"{what} must be 3-D (sets, points, ...), got shape {tuple(shape)}")
    if not 1 <= k <= shape[1]:
        raise ValueError(f"k must be in 1..{shape[1]}, got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


@torch.no_grad()
def batch_kmedoids_gram(gram: torch.Tensor, k: int, *, max_iter: int = 60, chunk_size: int | None = None,
                        distance_dtype: torch.dtype | None = None) -> KMedoids:
    """k-medoids of B point sets given only their inner products ``gram`` (B, N, N) = X X^T.

    Useful when points are linear in a small basis (MS-SL++: proposals = A C, so X X^T =
    A (C C^T) A^T); pass float64 for precise small distances, and ``distance_dtype`` float32 to
    run the iterations on those distances rounded to float32 (half the time). ``chunk_size``
    bounds memory (each chunk holds (chunk, N, N) distances); results do not depend on it.
    """
    _validate(gram.shape, k, max_iter, "gram")
    if gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must be square per set, got shape {tuple(gram.shape)}")
    gram = gram if gram.is_floating_point() else gram.float()
    dtype = distance_dtype or gram.dtype
    parts = [_kmedoids(distances_from_gram(chunk).to(dtype), chunk.diagonal(dim1=-2, dim2=-1), k, max_iter)
             for chunk in gram.split(chunk_size or max(len(gram), 1), dim=0)]
    return _gather(parts, k, gram.shape[1], gram.device)


@torch.no_grad()
def batch_kmedoids(points: torch.Tensor, k: int, *, max_iter: int = 60, chunk_size: int | None = None) -> KMedoids:
    """k-medoids (Euclidean) of each of B point sets ``points`` (B, N, D), vectorised over the sets.

    ``chunk_size`` bounds memory (each chunk holds (chunk, N, N) distances); results do not depend
    on it. Raises ValueError unless 1 <= k <= N and max_iter >= 1.
    """
    _validate(points.shape, k, max_iter, "points")
    points = points if points.is_floating_point() else points.float()
    parts = [_kmedoids(pairwise_distances(chunk), chunk.pow(2).sum(dim=-1), k, max_iter)
             for chunk in points.split(chunk_size or max(len(points), 1), dim=0)]
    return _gather(parts, k, points.shape[1], points.device)
