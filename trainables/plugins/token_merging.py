"""Token merging of MSC (``admins97/MSC_PRVR``): OP-ToMe on the clip-branch input and CBVA's loss-side merging.

Plain functions (no plugin is registered here), vectorised over the videos of a batch; only the fixed
merge levels (and, for the greedy matching, the fixed number of pairs merged per level) are Python loops.

* ``frame_bins`` / ``average_to_fixed_length``: the release's ``average_to_fixed_length`` rule (also this
  project's protocol, ``trainables/data/protocol.py``): bin boundaries b_j = min(round(j n / N), n - 1) for
  j = 0..N over a video's n valid frames; bin j is the mean of frames[b_j:b_{j+1}], or the single frame b_j
  when that range is empty. ``frame_bins`` gives each frame the largest j < N with b_j <= f, i.e. the bin
  whose mean contains it (the last frame, which the release's clipped last boundary leaves out of every
  mean, goes to the last bin).
* **OP-ToMe** (B.2, ``token_merge`` in ``src/Datasets/data_provider.py``): a video's frames are averaged
  to 128 uniform tokens, then merged 128 -> 80 -> 52 -> 32. Each step splits the sequence into fixed
  adjacent pairs (2i, 2i+1), scores each pair by the dot product of its two current features (as given:
  the release feeds it the un-normalised means of the raw frames and L2-normalises the 32 results only
  afterwards; ``op_tome(normalize=True)`` normalises the uniform tokens first, scoring pairs by cosine)
  and merges the N - target best pairs into their size-weighted mean; the other tokens stay.
  Merging only inside adjacent pairs keeps the temporal order. Outputs: the 32 tokens, their sizes (the
  number of uniform tokens each covers, summing to 128) and the label (merged token) of each uniform token.
  Ties between pair scores go to the lower pair (stable sort); the release's ``argsort`` fixes no order
  for ties. They do occur: in a short video's 128 bins one frame can fill two whole pairs, which then
  score exactly alike.
* **Loss-side bipartite merging** (B.3, ``token_merge`` in ``compute_vid_level_contrastive_loss``): tokens
  split into even / odd positions; similarity = cosine of their raw clip features; pairs are taken
  greedily in descending similarity, each even and each odd token at most once, until N - target pairs are
  merged (an even token may pair with any odd one). A merged pair takes the even token's place, the odd
  token disappears, features and raw features become size-weighted means. Levels 32 -> 20 -> 12 -> 8 -> 5.

A chain of size-weighted means is the size-weighted mean of the original tokens of the group, so every
merge here is expressed as a group index per original token (``merge_by_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.data.protocol import L2_EPS

UNIFORM_TOKENS = 128  # OP-ToMe's uniform tokens before merging (the release's frame count)
TOME_SCHEDULE = (80, 52, 32)  # OP-ToMe's merge targets
SEGMENT_LEVELS = (32, 20, 12, 8, 5)  # CBVA's loss-side merge levels (first = no merging)
SIZE_FLOOR = 1e-12  # merged sizes are >= 1; the floor only keeps empty padding slots at 0 instead of 0/0


def bin_bounds(lengths: torch.Tensor, num_bins: int) -> torch.Tensor:
    """(B, num_bins + 1) boundaries min(round(j * n / num_bins), n - 1) of the release's pooling rule
    (round half to even, as numpy / torch); ``lengths`` (B,) valid frames per video (>= 1)."""
    n = lengths.to(torch.float64).clamp(min=1)
    fractions = torch.arange(num_bins + 1, dtype=torch.float64, device=lengths.device) / num_bins
    bounds = torch.round(fractions[None, :] * n[:, None]).long()
    return torch.minimum(bounds, (n.long() - 1)[:, None])


def frame_bins(lengths: torch.Tensor, num_bins: int, length: int) -> torch.Tensor:
    """(B, length) bin of each frame position: the largest j < num_bins with b_j <= f (padding positions
    get some valid bin; callers mask them)."""
    bounds = bin_bounds(lengths, num_bins)[:, 1:num_bins]  # b_1 .. b_{N-1}
    positions = torch.arange(length, device=lengths.device)
    return (bounds[:, None, :] <= positions[None, :, None]).sum(dim=-1)


def average_to_fixed_length(frames: torch.Tensor, frames_mask: torch.Tensor, num_bins: int) -> torch.Tensor:
    """(B, num_bins, D) bin means of the valid frames of ``frames`` (B, L, D) (the release's rule, batched)."""
    lengths = frames_mask.sum(dim=1).round().long().clamp(min=1)
    bounds = bin_bounds(lengths, num_bins)
    start, end = bounds[:, :-1], bounds[:, 1:]
    end = torch.where(start < end, end, start + 1)  # an empty bin holds the single frame at its start
    positions = torch.arange(frames.shape[1], device=frames.device)
    inside = (positions[None, None, :] >= start[..., None]) & (positions[None, None, :] < end[..., None])
    weights = inside.to(frames.dtype) / (end - start)[..., None].to(frames.dtype)
    return weights @ frames


def merge_by_index(tokens: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor,
                   count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted means of groups: token i of ``tokens`` (B, N, D) with size ``sizes`` (B, N) goes to
    group ``index`` (B, N) in [0, count). Returns ((B, count, D) means, (B, count) summed sizes); a group
    with no token is zero with size 0."""
    weights = sizes.to(tokens.dtype)
    sums = tokens.new_zeros(tokens.shape[0], count, tokens.shape[2])
    sums = sums.scatter_add(1, index[..., None].expand(-1, -1, tokens.shape[2]), tokens * weights[..., None])
    merged_sizes = sizes.new_zeros(sizes.shape[0], count).scatter_add(1, index, sizes)
    return sums / merged_sizes.clamp(min=SIZE_FLOOR)[..., None].to(tokens.dtype), merged_sizes


def adjacent_merge_index(tokens: torch.Tensor, target: int) -> torch.Tensor:
    """(B, N) new position of each token after one OP-ToMe step N -> ``target`` on ``tokens`` (B, N, D).

    The N - target adjacent pairs (2i, 2i+1) with the largest dot product are merged (ties: lower pair
    first); positions stay in temporal order.
    """
    batch, n, _ = tokens.shape
    if n % 2 or not n // 2 <= target <= n:
        raise ValueError(f"an adjacent-pair merge step needs an even token count n and n/2 <= target <= n, "
                         f"got n={n}, target={target}")
    pair_scores = (tokens[:, 0::2] * tokens[:, 1::2]).sum(dim=-1)  # (B, n/2)
    best = torch.sort(pair_scores, dim=1, descending=True, stable=True).indices[:, : n - target]
    merged = torch.zeros_like(pair_scores, dtype=torch.bool).scatter(1, best, True)
    width = 2 - merged.long()  # tokens each pair becomes
    start = width.cumsum(dim=1) - width
    return torch.stack([start, start + (~merged).long()], dim=2).reshape(batch, n)


@dataclass
class MergedTokens:
    """OP-ToMe output: ``tokens`` (B, T, D), ``sizes`` (B, T) uniform tokens per merged token (sum 128),
    ``labels`` (B, 128) merged token of each uniform token (non-decreasing: the order is kept)."""

    tokens: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor


def op_tome(frames: torch.Tensor, frames_mask: torch.Tensor, uniform_tokens: int = UNIFORM_TOKENS,
            schedule: Sequence[int] = TOME_SCHEDULE, *, normalize: bool = False) -> MergedTokens:
    """Order-preserving token merging of ``frames`` (B, L, D) with 0/1 ``frames_mask`` (B, L): the valid
    frames averaged to ``uniform_tokens`` tokens, then merged down ``schedule`` (see the module docstring).

    The features are merged as given (the release merges un-normalised means); ``normalize`` first
    L2-normalises each uniform token (x / (||x|| + 1e-5)), so pairs are scored by their cosine."""
    tokens = average_to_fixed_length(frames, frames_mask, uniform_tokens)
    if normalize:
        tokens = tokens / (tokens.norm(dim=-1, keepdim=True) + L2_EPS)
    batch = tokens.shape[0]
    sizes = tokens.new_ones(batch, uniform_tokens)
    labels = torch.arange(uniform_tokens, device=tokens.device).expand(batch, -1)
    for target in schedule:
        index = adjacent_merge_index(tokens, target)
        tokens, sizes = merge_by_index(tokens, sizes, index, target)
        labels = index.gather(1, labels)
    return MergedTokens(tokens, sizes, labels)


def bipartite_merge_index(raw: torch.Tensor, target: int) -> torch.Tensor:
    """(B, N) new position of each token after one loss-side step N -> ``target``, from the cosine of the
    raw features ``raw`` (B, N, D) of the even (rows) and odd (columns) tokens.

    Greedy: N - target times, take the most similar pair whose even and odd tokens are both unused (ties:
    first in (even, odd) row-major order, as the release's stable sort of its candidate list).
    """
    batch, n, _ = raw.shape
    if n % 2 or not n // 2 <= target <= n:
        raise ValueError(f"a bipartite merge step needs an even token count n and n/2 <= target <= n, "
                         f"got n={n}, target={target}")
    half = n // 2
    metric = F.normalize(raw.float(), dim=-1)
    available = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # (B, even, odd)
    partner = torch.full((batch, half), -1, dtype=torch.long, device=raw.device)  # even partner of each odd
    rows = torch.arange(batch, device=raw.device)
    for _ in range(n - target):
        best = available.flatten(1).argmax(dim=1)
        even, odd = best // half, best % half
        partner[rows, odd] = even
        available[rows, even, :] = float("-inf")
        available[rows, :, odd] = float("-inf")
    matched = partner >= 0
    kept = torch.ones(batch, n, dtype=torch.bool, device=raw.device)
    kept[:, 1::2] = ~matched
    position = kept.long().cumsum(dim=1) - 1
    index = position.clone()
    index[:, 1::2] = torch.where(matched, position.gather(1, 2 * partner.clamp(min=0)), position[:, 1::2])
    return index


def bipartite_merge_groups(raw: torch.Tensor, sizes: torch.Tensor,
                           levels: Sequence[int] = SEGMENT_LEVELS[1:]) -> list[torch.Tensor]:
    """Group (B, N) of each of the N original tokens at each level of the loss-side schedule.

    ``raw`` (B, N, D) raw features (the similarity metric, merged size-weighted along), ``sizes`` (B, N)
    initial sizes. Returns [identity, groups after ``levels[0]``, after ``levels[1]``, ...].
    """
    batch, n, _ = raw.shape
    groups = [torch.arange(n, device=raw.device).expand(batch, -1)]
    current, current_sizes = raw, sizes
    for target in levels:
        index = bipartite_merge_index(current, target)
        current, current_sizes = merge_by_index(current, current_sizes, index, target)
        groups.append(index.gather(1, groups[-1]))
    return groups


def merge_to_counts(tokens: torch.Tensor, raw: torch.Tensor, sizes: torch.Tensor, counts: torch.Tensor,
                    levels: Sequence[int] = SEGMENT_LEVELS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each video's tokens down the loss-side schedule to its own count.

    ``tokens`` (B, N, H) encoded tokens, ``raw`` (B, N, D) raw features, ``sizes`` (B, N) initial sizes,
    ``counts`` (B,) target count of each video, one of ``levels`` (``levels[0]`` = N: no merging). Only the
    levels down to the smallest count of the batch are computed. Returns (segments (B, N, H) padded with
    zeros beyond each video's count, segment_mask (B, N), groups (B, N) segment of each original token).
    """
    n = tokens.shape[1]
    if levels[0] != n:
        raise ValueError(f"the merge schedule {tuple(levels)} starts at {levels[0]} tokens, got {n}")
    level_of = torch.zeros_like(counts)
    for i, level in enumerate(levels):
        level_of = torch.where(counts == level, i, level_of)
    if not torch.isin(counts, torch.tensor(levels, device=counts.device)).all():
        raise ValueError(f"segment counts must be among {tuple(levels)}, got {sorted(set(counts.tolist()))}")
    deepest = int(level_of.max())
    groups = torch.stack(bipartite_merge_groups(raw, sizes, levels[1:deepest + 1]))  # (levels, B, N)
    group = groups[level_of, torch.arange(len(counts), device=counts.device)]
    segments, _ = merge_by_index(tokens, sizes, group, n)
    segment_mask = torch.arange(n, device=counts.device)[None, :] < counts[:, None]
    return segments, segment_mask, group


__all__ = ["SEGMENT_LEVELS", "TOME_SCHEDULE", "UNIFORM_TOKENS", "MergedTokens", "adjacent_merge_index",
           "average_to_fixed_length", "bin_bounds", "bipartite_merge_groups", "bipartite_merge_index",
           "frame_bins", "merge_by_index", "merge_to_counts", "op_tome"]
