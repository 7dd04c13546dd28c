"""Clip/frame resampling, normalisation and truncation against hand-computed cases and a literal
transcription of the release loop."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.data.protocol import (
    Protocol,
    bin_boundaries,
    clips_of,
    frames_of,
    l2_normalize,
    pool_to_bins,
    prepare_query,
    prepare_video,
)


def release_loop(frames: np.ndarray, num_bins: int) -> np.ndarray:
    """The release's per-bin loop, written out independently (float64 reference)."""
    n = frames.shape[0]
    idxs = np.round(np.arange(0, num_bins + 1, 1.0) / num_bins * n).astype(int)
    idxs[idxs > n - 1] = n - 1
    out = []
    for i in range(num_bins):
        s, e = idxs[i], idxs[i + 1]
        out.append(frames[s:e].mean(axis=0) if s < e else frames[s])
    return np.asarray(out)


def ramp(n: int, d: int = 2) -> np.ndarray:
    """Frame k is (k, 10k, ...): means are easy to read off by hand."""
    return (np.arange(n, dtype=np.float32)[:, None] * (10.0 ** np.arange(d, dtype=np.float32)))


def test_hand_computed_two_bins_drop_the_last_frame():
    # n=4, 2 bins: boundaries round([0, 2, 4]) = [0, 2, 4] -> clipped to [0, 2, 3]
    # bin 0 = mean(f0, f1) = 0.5; bin 1 = mean(f2) = 2 (frame 3 never enters, as released)
    assert bin_boundaries(4, 2).tolist() == [0, 2, 3]
    np.testing.assert_allclose(pool_to_bins(ramp(4), 2)[:, 0], [0.5, 2.0])
    # the clean variant keeps the last frame: bin 1 = mean(f2, f3) = 2.5
    np.testing.assert_allclose(pool_to_bins(ramp(4), 2, exclude_last_frame=False)[:, 0], [0.5, 2.5])


def test_hand_computed_round_half_to_even():
    # n=5, 2 bins: 2.5 rounds to 2 (half to even), 5 -> clipped to 4
    assert bin_boundaries(5, 2).tolist() == [0, 2, 4]
    np.testing.assert_allclose(pool_to_bins(ramp(5), 2)[:, 0], [0.5, 2.5])


def test_hand_computed_short_video_repeats_frames():
    # n=3, 4 bins: round([0, .75, 1.5, 2.25, 3]) = [0, 1, 2, 2, 3] -> [0, 1, 2, 2, 2]
    # bins: f0, f1, then two empty bins that take the single frame f2
    assert bin_boundaries(3, 4).tolist() == [0, 1, 2, 2, 2]
    np.testing.assert_allclose(pool_to_bins(ramp(3), 4)[:, 0], [0.0, 1.0, 2.0, 2.0])


def test_single_frame_video_gives_32_copies():
    clips = clips_of(ramp(1) + 7.0)
    assert clips.shape == (32, 2)
    np.testing.assert_allclose(clips, np.tile([[7.0, 7.0]], (32, 1)))


def test_clean_variant_never_indexes_past_the_end():
    for n in range(1, 70):
        out = pool_to_bins(ramp(n), 32, exclude_last_frame=False)
        assert out.shape == (32, 2) and np.isfinite(out).all()
        assert out[-1, 0] <= n - 1


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 33, 47, 64, 100, 127, 128, 129, 300, 1000])
def test_matches_the_release_loop(n):
    frames = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32)
    np.testing.assert_allclose(clips_of(frames), release_loop(frames.astype(np.float64), 32), rtol=1e-5, atol=1e-6)
    expected = frames if n <= 128 else release_loop(frames.astype(np.float64), 128)
    np.testing.assert_allclose(frames_of(frames), expected, rtol=1e-5, atol=1e-6)


def test_frames_up_to_128_are_kept_as_is():
    frames = ramp(128, 3)
    assert frames_of(frames) is not None and np.array_equal(frames_of(frames), frames)
    assert frames_of(ramp(129, 3)).shape == (128, 3)


def test_l2_normalize_uses_the_release_epsilon():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[3 / 5.00001, 4 / 5.00001], [0.0, 0.0]], rtol=1e-6)


def test_prepare_video_normalises_after_pooling():
    frames = ramp(4) + 1.0  # f_k = (k + 1, 10k + 1)
    clips, seq = prepare_video(frames, Protocol(map_size=2))
    # bin 0 = mean(f0, f1) = (1.5, 6) then normalised
    expected0 = np.array([1.5, 6.0]) / (np.hypot(1.5, 6.0) + 1e-5)
    np.testing.assert_allclose(clips[0], expected0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(seq, axis=1), 1.0, atol=1e-4)
    raw_clips, raw_seq = prepare_video(frames, Protocol(map_size=2, l2_normalize=False))
    np.testing.assert_allclose(raw_clips[0], [1.5, 6.0])
    np.testing.assert_array_equal(raw_seq, frames)


def test_prepare_query_normalises_then_truncates_to_30():
    tokens = np.arange(1, 41, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = prepare_query(tokens)
    assert out.shape == (30, 3)
    np.testing.assert_allclose(out[0], tokens[0] / (np.linalg.norm(tokens[0]) + 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(prepare_query(tokens, Protocol(l2_normalize=False)), tokens[:30])


def test_protocol_rejects_nonsense():
    with pytest.raises(ValueError, match="map_size must be >= 1"):
        Protocol(map_size=0)
    with pytest.raises(ValueError, match="at least one frame"):
        bin_boundaries(0, 32)
