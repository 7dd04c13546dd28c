"""PyTorch datasets and batches of a split, prepared once by the published protocol.

A split is read from the feature store once, every video is resampled (32 clips, <= 128 frames) and
normalised once, and every query is normalised and truncated once; the torch datasets below only
slice those arrays. As in the release code, a **training item is one video with all its queries**:
a batch of B videos flattens their queries into one query batch with ``text_labels[q]`` = index of
q's video in the batch (contiguous blocks), and videos are sorted by their number of queries,
most first, like the release's ``collate_train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.data.protocol import Protocol, prepare_query, prepare_video
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

    def queries_of_video(self) -> list[np.ndarray]:
        """For each video, the indices of its queries in split order."""
        order = np.argsort(self.query_video, kind="stable")
        bounds = np.searchsorted(self.query_video[order], np.arange(self.num_videos + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.num_videos)]


def _offsets(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def prepare_split(raw: RawSplit, protocol: Protocol, dtype: str = "float32") -> PreparedSplit:
    """Apply the protocol to every video and query of a raw split."""
    clips, frames = [], []
    for i in range(raw.num_videos):
        c, f = prepare_video(raw.video_frames(i), protocol)
        clips.append(c.astype(dtype))
        frames.append(f.astype(dtype))
    tokens = [prepare_query(raw.query_tokens(i), protocol).astype(dtype) for i in range(raw.num_queries)]
    return PreparedSplit(
        name=raw.name,
        video_ids=raw.video_ids,
        query_ids=raw.query_ids,
        query_text=raw.query_text,
        query_video=raw.query_video,
        clips=np.stack(clips),
        frames=np.concatenate(frames),
        frame_offsets=_offsets([f.shape[0] for f in frames]),
        tokens=np.concatenate(tokens),
        token_offsets=_offsets([t.shape[0] for t in tokens]),
        protocol=protocol,
        sentence=None if raw.sentence is None else raw.sentence.astype(dtype),
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


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad variable-length (n_i x D) arrays to (B x max n x D) with a 0/1 float mask."""
    longest = max(a.shape[0] for a in arrays)
    out = torch.zeros(len(arrays), longest, arrays[0].shape[1])
    mask = torch.zeros(len(arrays), longest)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        mask[i, : a.shape[0]] = 1.0
    return out, mask


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
            "query_index": queries,
            "tokens": [s.query_tokens(q) for q in queries],
        }


def collate_train(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch videos with all their queries; ``text_labels[q]`` is q's video's row in the batch."""
    items = sorted(items, key=lambda item: len(item["tokens"]), reverse=True)
    frames, videos_mask = _pad([item["frames"] for item in items])
    tokens = [t for item in items for t in item["tokens"]]
    text, text_mask = _pad(tokens)
    labels = [row for row, item in enumerate(items) for _ in item["tokens"]]
    return {
        "clip_video_features": torch.from_numpy(np.stack([item["clips"] for item in items]).astype(np.float32)),
        "frame_video_features": frames,
        "videos_mask": videos_mask,
        "text_feat": text,
        "text_mask": text_mask,
        "text_labels": torch.tensor(labels, dtype=torch.long),
        "video_index": torch.tensor([item["video_index"] for item in items], dtype=torch.long),
        "query_index": torch.from_numpy(np.concatenate([item["query_index"] for item in items]).astype(np.int64)),
    }


class EvalVideos(Dataset):
    """Every video of a split, in split order, for full-corpus evaluation."""

    def __init__(self, split: PreparedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_videos

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"video_index": i, "clips": self.split.clips[i], "frames": self.split.video_frames(i)}


def collate_videos(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    frames, mask = _pad([item["frames"] for item in items])
    return {
        "clip_video_features": torch.from_numpy(np.stack([item["clips"] for item in items]).astype(np.float32)),
        "frame_video_features": frames,
        "videos_mask": mask,
        "video_index": torch.tensor([item["video_index"] for item in items], dtype=torch.long),
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
    """(videos, queries) loaders in split order; queries in batches of 50 as the release evaluates."""
    return (DataLoader(EvalVideos(split), batch_size=video_batch, collate_fn=collate_videos),
            DataLoader(EvalQueries(split), batch_size=query_batch, collate_fn=collate_queries))
