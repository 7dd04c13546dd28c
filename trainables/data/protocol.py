"""The published PRVR input protocol: 32 clips, at most 128 frames, L2 norms, 30 query tokens.

Reproduces the release loaders (MS-SL, GMMFormer v1/v2, AMDNet share them):

* clips: ``average_to_fixed_length`` — bin boundaries ``b_i = round(i * n / 32)`` for i = 0..32
  (round half to even, as torch/numpy round), clipped to ``n - 1``; clip i is the mean of
  ``frames[b_i:b_{i+1}]`` when ``b_i < b_{i+1}``, else the single frame ``frames[b_i]`` (short
  videos repeat frames). Because the last boundary is clipped to ``n - 1``, **the last frame never
  enters a mean** in the released code; ``exclude_last_frame=False`` is the clean variant.
* frames: ``uniform_feature_sampling`` — videos of at most 128 frames are kept as they are, longer
  ones are pooled into 128 bins by the same rule.
* both are then L2-normalised per vector with ``x / (||x|| + 1e-5)``; query tokens are
  L2-normalised the same way, then truncated to 30 tokens. AMDNet's CLIP layout skips every
  normalisation (the manifest's ``l2_normalize`` is False there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainables.errors import InputError

MAP_SIZE = 32
MAX_FRAMES = 128
MAX_TOKENS = 30
L2_EPS = 1e-5


@dataclass(frozen=True)
class Protocol:
    """Settings of the input protocol; the defaults are the published ones."""

    map_size: int = MAP_SIZE
    max_frames: int = MAX_FRAMES
    max_tokens: int = MAX_TOKENS
    l2_normalize: bool = True
    exclude_last_frame: bool = True

    def __post_init__(self) -> None:
        for name in ("map_size", "max_frames", "max_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"Protocol.{name} must be >= 1, got {getattr(self, name)}")


def bin_boundaries(num_frames: int, num_bins: int, exclude_last_frame: bool = True) -> np.ndarray:
    """The ``num_bins + 1`` boundaries of the release's pooling rule (see the module docstring)."""
    if num_frames < 1:
        raise InputError("a video needs at least one frame")
    bounds = np.round(np.arange(num_bins + 1, dtype=np.float64) / num_bins * num_frames).astype(np.int64)
    return np.minimum(bounds, num_frames - 1 if exclude_last_frame else num_frames)


def pooling_matrix(num_frames: int, num_bins: int, exclude_last_frame: bool = True) -> np.ndarray:
    """The (num_bins x num_frames) averaging matrix of the release's pooling rule.

    Row i averages ``frames[b_i:b_{i+1}]``; an empty bin holds the single frame at its start (the
    last frame if its start is past the end, which only the clean variant can produce).
    """
    bounds = bin_boundaries(num_frames, num_bins, exclude_last_frame)
    start, end = bounds[:-1], bounds[1:]
    empty = start >= end
    lo = np.where(empty, np.minimum(start, num_frames - 1), start)
    hi = np.where(empty, lo + 1, end)
    position = np.arange(num_frames)
    inside = (position >= lo[:, None]) & (position < hi[:, None])
    return (inside / (hi - lo)[:, None]).astype(np.float32)


def pool_to_bins(frames: np.ndarray, num_bins: int, exclude_last_frame: bool = True) -> np.ndarray:
    """Mean-pool ``frames`` (n x D) into ``num_bins`` rows by the release's boundary rule.

    One small matrix product instead of the release's Python loop over bins.
    """
    frames = np.asarray(frames, dtype=np.float32)
    return pooling_matrix(frames.shape[0], num_bins, exclude_last_frame) @ frames


def clips_of(frames: np.ndarray, protocol: Protocol = Protocol()) -> np.ndarray:
    """The clip sequence (always ``map_size`` rows) of one video."""
    return pool_to_bins(frames, protocol.map_size, protocol.exclude_last_frame)


def frames_of(frames: np.ndarray, protocol: Protocol = Protocol()) -> np.ndarray:
    """The frame sequence (at most ``max_frames`` rows) of one video."""
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[0] <= protocol.max_frames:
        return frames
    return pool_to_bins(frames, protocol.max_frames, protocol.exclude_last_frame)


def l2_normalize(x: np.ndarray, eps: float = L2_EPS) -> np.ndarray:
    """Per-row ``x / (||x|| + eps)``, as the release loaders do."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(eps))


def prepare_video(frames: np.ndarray, protocol: Protocol = Protocol()) -> tuple[np.ndarray, np.ndarray]:
    """(clips, frames) of one video after resampling and, if the protocol says so, L2 norm."""
    clips, seq = clips_of(frames, protocol), frames_of(frames, protocol)
    if protocol.l2_normalize:
        clips, seq = l2_normalize(clips), l2_normalize(seq)
    return clips, seq


def prepare_query(tokens: np.ndarray, protocol: Protocol = Protocol()) -> np.ndarray:
    """A query's tokens: L2-normalised (if the protocol says so), then truncated to ``max_tokens``."""
    tokens = np.asarray(tokens, dtype=np.float32)
    if protocol.l2_normalize:
        tokens = l2_normalize(tokens)
    return tokens[: protocol.max_tokens]
