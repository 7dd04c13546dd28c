"""PyTorch datasets and batches of a split, prepared once by the published protocol.

A split is read from the feature store once, every video is resampled (32 clips, <= 128 frames) and
normalised once, and every query is normalised and truncated once; the torch datasets below only
slice those arrays. As in the release code, a **training item is one video with all its queries**:
a batch of B videos flattens their queries into one query batch with ``text_labels[q]`` = index of
q's video in the batch (contiguous blocks), and videos are sorted by their number of queries, most
first (a stable sort). The release's ``collate_train`` (ms-sl ``method/data_provider.py``) sorts a batch
by its videos' frame counts instead (its comment says caption length, but the key is the frame
feature); both only reorder the videos of a batch (not verified here whether the sampled negatives
then differ).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.data.protocol import L2_EPS, Protocol, pooling_matrix, prepare_query
from trainables.data.store import FeatureStore, RaggedSplit, RawSplit


@dataclass
class PreparedSplit(RaggedSplit):
    """A split after the protocol: fixed clips, capped frames, normalised and truncated tokens."""

    name: str
    video_ids: list[str]
    query_ids: list[str]
    query_text: list[str]
    query_video: np.ndarray  # (num queries,) index into video_ids
    clips: np.ndarray  # (num videos, map_size, video_dim)
    frames: np.ndarray  # (total frames, video_dim); video i is frames[frame_offsets[i]:frame_offsets[i+1]]
    frame_offsets: np.ndarray
    tokens: np.ndarray  # (total tokens, query_dim)
    token_offsets: np.ndarray
    protocol: Protocol
    sentence: np.ndarray | None = None
    #: (total frames,) what each frame was divided by when L2-normalised (its norm + 1e-5), so a plugin that
    #: needs the un-normalised features (MSC's OP-ToMe, as released) can restore them; None if not normalised
    frame_scales: np.ndarray | None = None

    def video_frame_scales(self, i: int) -> np.ndarray | None:
        """Video ``i``'s frame scales (n_i,), or None when the protocol does not normalise."""
        if self.frame_scales is None:
            return None
        return self.frame_scales[self.frame_offsets[i] : self.frame_offsets[i + 1]]

    def queries_of_video(self) -> list[np.ndarray]:
        """For each video, the indices of its queries in split order."""
        order = np.argsort(self.query_video, kind="stable")
        bounds = np.searchsorted(self.query_video[order], np.arange(self.num_videos + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.num_videos)]


def _l2_in_place(x: torch.Tensor, rows: int = 65536) -> torch.Tensor:
    """``protocol.l2_normalize`` in place (same formula and epsilon), ``rows`` rows at a time; returns what
    each row was divided by (its norm + eps), shape ``x.shape[:-1]``."""
    flat = x.view(-1, x.shape[-1])
    divisors = torch.empty(flat.shape[0], dtype=torch.float32)
    for first in range(0, flat.shape[0], rows):
        part = flat[first : first + rows]
        divisor = part.norm(dim=-1, keepdim=True) + L2_EPS
        part.div_(divisor)
        divisors[first : first + rows] = divisor[:, 0]
    return divisors.view(x.shape[:-1])


def _prepare_videos(raw: RawSplit, protocol: Protocol, dtype: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(clips, frames, frame_offsets, frame_scales) of every video by ``protocol.prepare_video``'s rule;
    ``frame_scales`` (total frames,) float32 is what each frame was divided by (None if not normalised).

    Written straight into the preallocated outputs with torch (numpy's float16 -> float32
    conversion and large temporaries dominated the load time of TVR-size splits).
    """
    lengths = np.diff(raw.frame_offsets)
    frame_offsets = np.concatenate([[0], np.cumsum(np.minimum(lengths, protocol.max_frames))]).astype(np.int64)
    clips = np.empty((raw.num_videos, protocol.map_size, raw.frames.shape[1]), dtype=dtype)
    frames = np.empty((int(frame_offsets[-1]), raw.frames.shape[1]), dtype=dtype)
    clips_out, frames_out = torch.from_numpy(clips), torch.from_numpy(frames)
    for i in range(raw.num_videos):
        video = torch.from_numpy(raw.video_frames(i)).float()
        pool = pooling_matrix(int(lengths[i]), protocol.map_size, protocol.exclude_last_frame)
        clips_out[i] = torch.from_numpy(pool) @ video
        if lengths[i] > protocol.max_frames:
            pool = pooling_matrix(int(lengths[i]), protocol.max_frames, protocol.exclude_last_frame)
            video = torch.from_numpy(pool) @ video
        frames_out[frame_offsets[i] : frame_offsets[i + 1]] = video
    frame_scales = None
    if protocol.l2_normalize:
        _l2_in_place(clips_out)
        frame_scales = _l2_in_place(frames_out).numpy()
    return clips, frames, frame_offsets, frame_scales


def prepare_split(raw: RawSplit, protocol: Protocol, dtype: str = "float32") -> PreparedSplit:
    """Apply the protocol to every video and query of a raw split (``prepare_video`` and
    ``prepare_query`` item by item)."""
    clips, frames, frame_offsets, frame_scales = _prepare_videos(raw, protocol, dtype)
    num_tokens = np.minimum(np.diff(raw.token_offsets), protocol.max_tokens)
    token_offsets = np.concatenate([[0], np.cumsum(num_tokens)]).astype(np.int64)
    tokens = np.empty((int(token_offsets[-1]), raw.tokens.shape[1]), dtype=dtype)
    for i in range(raw.num_queries):
        tokens[token_offsets[i] : token_offsets[i + 1]] = prepare_query(raw.query_tokens(i), protocol)
    return PreparedSplit(
        name=raw.name,
        video_ids=raw.video_ids,
        query_ids=raw.query_ids,
        query_text=raw.query_text,
        query_video=raw.query_video,
        clips=clips,
        frames=frames,
        frame_offsets=frame_offsets,
        tokens=tokens,
        token_offsets=token_offsets,
        protocol=protocol,
        sentence=None if raw.sentence is None else raw.sentence.astype(dtype),
        frame_scales=frame_scales,
    )


def load_split(
    location: str | Path,
    split: str,
    protocol: Protocol | None = None,
    *,
    verify: bool = False,
    dtype: str = "float32",
) -> PreparedSplit:
    """Read ``split`` of the dataset at ``location`` and prepare it.

    Without a ``protocol`` the published one is used, with L2 normalisation as the manifest says
    (on for the MS-SL/GMMFormer layout, off for AMDNet's CLIP features).
    """
    store = FeatureStore(location)
    if protocol is None:
        protocol = Protocol(l2_normalize=store.manifest.l2_normalize)
    return prepare_split(store.load_split(split, verify=verify), protocol, dtype)


# splits shared through Ray's object store are read-only numpy arrays; the loader only ever reads them
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _pad(arrays: list[np.ndarray], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad variable-length (n_i x D) arrays to float32 (B x length x D) with a 0/1 float mask
    (``length`` defaults to the longest array). Each array is converted once, straight into the batch,
    and only padding rows are zeroed: collation is memory-bound and runs before every forward pass."""
    longest = length if length is not None else max(a.shape[0] for a in arrays)
    out = torch.empty(len(arrays), longest, arrays[0].shape[1])
    mask = torch.zeros(len(arrays), longest)
    for i, a in enumerate(arrays):
        n = a.shape[0]
        out[i, :n].copy_(torch.from_numpy(np.ascontiguousarray(a)))
        out[i, n:].zero_()
        mask[i, :n] = 1.0
    return out, mask


def _frame_scales(items: list[dict[str, Any]], length: int) -> dict[str, torch.Tensor]:
    """``{"frame_scales": (B, length)}`` zero-padded, when the items carry them (an L2-normalised split)."""
    if items[0].get("frame_scales") is None:
        return {}
    return {"frame_scales": _pad([item["frame_scales"][:, None] for item in items], length)[0][..., 0]}


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    """Same-shape arrays as one float32 tensor, converted once."""
    out = torch.empty(len(arrays), *arrays[0].shape)
    for i, a in enumerate(arrays):
        out[i].copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return out


class TrainVideos(Dataset):
    """Training items: one video with all of its queries."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split
        self.video_queries = split.queries_of_video()

    def __len__(self) -> int:
        return self.split.num_videos

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.split
        queries = self.video_queries[i]
        return {
            "video_index": i,
            "clips": s.clips[i],
            "frames": s.video_frames(i),
            "frame_scales": s.video_frame_scales(i),
            "query_index": queries,
            "tokens": [s.query_tokens(q) for q in queries],
            **({} if s.sentence is None else {"sentence": s.sentence[queries]}),
        }


def collate_train(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch videos with all their queries; ``text_labels[q]`` is q's video's row in the batch (plus
    ``sentence_feat`` (Nq, Ds) when the split has external sentence features, and ``frame_scales`` (B, L)
    when its frames were L2-normalised)."""
    items = sorted(items, key=lambda item: len(item["tokens"]), reverse=True)
    frames, videos_mask = _pad([item["frames"] for item in items])
    tokens = [t for item in items for t in item["tokens"]]
    text, text_mask = _pad(tokens)
    labels = [row for row, item in enumerate(items) for _ in item["tokens"]]
    # external sentence features (Nq, Ds), in the query order of text_feat (MSC's TCPL teacher)
    sentence = {} if "sentence" not in items[0] else \
        {"sentence_feat": torch.from_numpy(np.concatenate([item["sentence"] for item in items]).astype(np.float32))}
    return {
        "clip_video_features": _stack([item["clips"] for item in items]),
        "frame_video_features": frames,
        "videos_mask": videos_mask,
        "text_feat": text,
        "text_mask": text_mask,
        "text_labels": torch.tensor(labels, dtype=torch.long),
        "video_index": torch.tensor([item["video_index"] for item in items], dtype=torch.long),
        "query_index": torch.from_numpy(np.concatenate([item["query_index"] for item in items]).astype(np.int64)),
        **sentence,
        **_frame_scales(items, frames.shape[1]),
    }


class EvalVideos(Dataset):
    """Every video of a split, in split order, for full-corpus evaluation."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_videos

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"video_index": i, "clips": self.split.clips[i], "frames": self.split.video_frames(i),
                "frame_scales": self.split.video_frame_scales(i)}


def collate_videos(items: list[dict[str, Any]], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Batch videos; frames padded to ``pad_to`` (so batches of one split concatenate) or the batch max
    (with ``frame_scales`` (B, L) when the split's frames were L2-normalised)."""
    frames, mask = _pad([item["frames"] for item in items], pad_to)
    return {
        "clip_video_features": _stack([item["clips"] for item in items]),
        "frame_video_features": frames,
        "videos_mask": mask,
        "video_index": torch.tensor([item["video_index"] for item in items], dtype=torch.long),
        **_frame_scales(items, frames.shape[1]),
    }


class EvalQueries(Dataset):
    """Every query of a split, in split order, with the index of its relevant video."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_queries

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"query_index": i, "tokens": self.split.query_tokens(i), "video": int(self.split.query_video[i])}


def collate_queries(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    text, mask = _pad([item["tokens"] for item in items])
    return {
        "text_feat": text,
        "text_mask": mask,
        "query_index": torch.tensor([item["query_index"] for item in items], dtype=torch.long),
        "gt_video": torch.tensor([item["video"] for item in items], dtype=torch.long),
    }


def train_loader(split: PreparedSplit, batch_size: int, *, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """Batches of ``batch_size`` videos (with all their queries), reshuffled each epoch from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TrainVideos(split), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=collate_train, generator=generator)


def eval_loaders(split: PreparedSplit, video_batch: int = 128, query_batch: int = 50) -> tuple[DataLoader, DataLoader]:
    """(videos, queries) loaders in split order; queries in batches of 50 as the release evaluates.

    Every video batch is padded to the split's longest video, so encodings concatenate across batches.
    """
    longest = int(np.diff(split.frame_offsets).max())
    return (DataLoader(EvalVideos(split), batch_size=video_batch, collate_fn=partial(collate_videos, pad_to=longest)),
            DataLoader(EvalQueries(split), batch_size=query_batch, collate_fn=collate_queries))
