"""Write a PRVR dataset as HDF5 shards plus a manifest, atomically.

Everything is written into a hidden temporary folder next to the destination and renamed into place
only when the dataset is complete, so a crash or a bad record never leaves a partial dataset behind.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import h5py
import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.manifest import (
    DTYPES,
    MANIFEST_NAME,
    SPLITS_FILE,
    Manifest,
    ShardInfo,
    SplitInfo,
    sha256_file,
)
from trainables.data.split_overlap import overlap_of_splits
from trainables.errors import InputError

STR = h5py.string_dtype(encoding="utf-8")


def _check_matrix(array: np.ndarray, dim: int, what: str) -> np.ndarray:
    """A finite 2-D float array of width ``dim`` with at least one row, or a DatasetError."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0:
        raise DatasetError(f"{what}: expected a non-empty 2-D array, got shape {array.shape}")
    if array.shape[1] != dim:
        raise DatasetError(f"{what}: feature dim {array.shape[1]} disagrees with the dataset's {dim}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DatasetError(f"{what}: features must be floating point, got {array.dtype}")
    if not np.isfinite(array).all():
        raise DatasetError(f"{what}: features contain NaN or infinity")
    return array


def _recorded_overlap(splits: dict[str, list[str]], query_video: dict[str, str]) -> dict[str, int] | None:
    """What the manifest records of the val/test overlap (None unless both splits exist)."""
    overlap = overlap_of_splits(splits, query_video)
    return None if overlap is None else overlap.to_dict()


def _write_rows(path: Path, kind: str, arrays: dict[str, Any]) -> None:
    with h5py.File(path, "w") as handle:
        handle.attrs["kind"] = kind
        for key, value in arrays.items():
            if isinstance(value, list):
                handle.create_dataset(key, data=value, dtype=STR)
            else:
                handle.create_dataset(key, data=value)


class DatasetWriter:
    """Accumulates videos, queries and splits and writes them as shards.

    Use as a context manager; ``close()`` (or leaving the ``with`` block normally) publishes the
    dataset at ``out_dir``; an exception discards everything written so far.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        name: str,
        video_dim: int,
        query_dim: int,
        dtype: str = "float32",
        videos_per_shard: int = 1000,
        queries_per_shard: int = 5000,
        l2_normalize: bool = True,
        sentence_dim: int | None = None,
        source: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if videos_per_shard < 1 or queries_per_shard < 1:
            raise InputError("videos_per_shard and queries_per_shard must be >= 1")
        if video_dim < 1 or query_dim < 1:
            raise InputError(f"video_dim and query_dim must be >= 1, got {video_dim}, {query_dim}")
        self.out_dir = Path(out_dir).expanduser().resolve()
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not overwrite:
            raise DatasetError(f"{self.out_dir}: already exists and is not empty (pass overwrite to replace it)")
        self.overwrite = overwrite
        self.name = name
        self.video_dim, self.query_dim, self.sentence_dim = video_dim, query_dim, sentence_dim
        self.dtype = np.dtype(dtype)
        self.videos_per_shard, self.queries_per_shard = videos_per_shard, queries_per_shard
        self.l2_normalize = l2_normalize
        self.source = dict(source or {})
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._shards: list[ShardInfo] = []
        self._video_ids: set[str] = set()
        self._query_video: dict[str, str] = {}
        self._splits: dict[str, list[str]] = {}
        self._videos: list[tuple[str, np.ndarray]] = []
        self._queries: list[tuple[str, str, str, np.ndarray, np.ndarray | None]] = []
        self._num_frames = 0
        self._num_tokens = 0
        self._closed = False

    @property
    def tmp_dir(self) -> Path:
        """The hidden folder shards are written to, created on first use (so an unused writer leaves nothing)."""
        self._tmp_dir.mkdir(exist_ok=True)
        return self._tmp_dir

    # -- records -------------------------------------------------------------------------------
    def add_video(self, video_id: str, frames: np.ndarray) -> None:
        """Add one video's ``n_frames x video_dim`` features."""
        if not video_id or video_id in self._video_ids:
            raise DatasetError(f"video {video_id!r}: empty or duplicate video id")
        frames = _check_matrix(frames, self.video_dim, f"video {video_id!r}")
        self._video_ids.add(video_id)
        self._videos.append((video_id, frames.astype(self.dtype, copy=False)))
        self._num_frames += frames.shape[0]
        if len(self._videos) >= self.videos_per_shard:
            self._flush_videos()

    def add_query(
        self,
        query_id: str,
        video_id: str,
        tokens: np.ndarray,
        text: str = "",
        sentence: np.ndarray | None = None,
    ) -> None:
        """Add one query: its ``n_tokens x query_dim`` features, its video, text and sentence feature."""
        if not query_id or query_id in self._query_video:
            raise DatasetError(f"query {query_id!r}: empty or duplicate query id")
        tokens = _check_matrix(tokens, self.query_dim, f"query {query_id!r}")
        if (sentence is None) != (self.sentence_dim is None):
            raise DatasetError(f"query {query_id!r}: sentence feature given iff the dataset has sentence_dim")
        if sentence is not None:
            sentence = _check_matrix(np.asarray(sentence).reshape(1, -1), self.sentence_dim or 0,
                                     f"query {query_id!r} sentence")[0]
        self._query_video[query_id] = video_id
        self._queries.append((query_id, video_id, text, tokens.astype(self.dtype, copy=False), sentence))
        self._num_tokens += tokens.shape[0]
        if len(self._queries) >= self.queries_per_shard:
            self._flush_queries()

    def set_split(self, split: str, query_ids: Iterable[str]) -> None:
        """Declare the query ids of a split (a query may belong to several splits)."""
        ids = list(query_ids)
        if not split or "/" in split:
            raise DatasetError(f"split {split!r}: invalid split name")
        if not ids:
            raise DatasetError(f"split {split!r}: has no queries")
        if len(set(ids)) != len(ids):
            raise DatasetError(f"split {split!r}: lists a query id twice")
        self._splits[split] = ids

    def attach(self, name: str, path: str | Path) -> None:
        """Copy an extra file (e.g. annotations) into the dataset; it is checksummed like a shard."""
        if Path(name).name != name or name in (MANIFEST_NAME, SPLITS_FILE):
            raise DatasetError(f"extra file {name!r}: must be a plain file name, not a reserved one")
        shutil.copyfile(path, self.tmp_dir / name)
        self._record(name, "extra", 1)

    # -- shards --------------------------------------------------------------------------------
    def _record(self, file: str, kind: str, count: int) -> None:
        path = self.tmp_dir / file
        self._shards.append(ShardInfo(file, kind, count, path.stat().st_size, sha256_file(path)))

    def _flush_videos(self) -> None:
        if not self._videos:
            return
        ids = [vid for vid, _ in self._videos]
        lengths = [f.shape[0] for _, f in self._videos]
        file = f"videos-{len(self.shards_of('videos')):05d}.h5"
        _write_rows(self.tmp_dir / file, "videos", {
            "ids": ids,
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "features": np.concatenate([f for _, f in self._videos]),
        })
        self._record(file, "videos", len(ids))
        self._videos = []

    def _flush_queries(self) -> None:
        if not self._queries:
            return
        rows = self._queries
        arrays: dict[str, Any] = {
            "ids": [r[0] for r in rows],
            "video_ids": [r[1] for r in rows],
            "text": [r[2] for r in rows],
            "offsets": np.concatenate([[0], np.cumsum([r[3].shape[0] for r in rows])]).astype(np.int64),
            "tokens": np.concatenate([r[3] for r in rows]),
        }
        if self.sentence_dim is not None:
            # add_query takes a sentence feature exactly when the dataset has sentence_dim
            arrays["sentence"] = np.stack([cast(np.ndarray, r[4]) for r in rows]).astype(self.dtype)
        file = f"queries-{len(self.shards_of('queries')):05d}.h5"
        _write_rows(self.tmp_dir / file, "queries", arrays)
        self._record(file, "queries", len(rows))
        self._queries = []

    def shards_of(self, kind: str) -> list[ShardInfo]:
        return [s for s in self._shards if s.kind == kind]

    # -- publish -------------------------------------------------------------------------------
    def _split_infos(self) -> dict[str, SplitInfo]:
        infos = {}
        for split, ids in self._splits.items():
            unknown = [q for q in ids if q not in self._query_video]
            if unknown:
                raise DatasetError(f"split {split!r}: query {unknown[0]!r} was never added")
            videos = {self._query_video[q] for q in ids}
            infos[split] = SplitInfo(num_queries=len(ids), num_videos=len(videos))
        return infos

    def close(self) -> Path:
        """Validate, write the remaining shards, the splits and the manifest; publish atomically."""
        if self._closed:
            return self.out_dir
        try:
            if not self._video_ids:
                raise DatasetError(f"{self.out_dir}: no videos were added")
            orphans = [q for q, v in self._query_video.items() if v not in self._video_ids]
            if orphans:
                q = orphans[0]
                raise DatasetError(f"query {q!r}: its video {self._query_video[q]!r} is not in the dataset")
            if not self._splits:
                raise DatasetError(f"{self.out_dir}: no split was declared")
            splits = self._split_infos()
            self._flush_videos()
            self._flush_queries()
            _write_rows(self.tmp_dir / SPLITS_FILE, "splits", dict(self._splits))
            self._record(SPLITS_FILE, "splits", len(self._splits))
            manifest = Manifest(
                name=self.name,
                video_dim=self.video_dim,
                query_dim=self.query_dim,
                dtype=self.dtype.name,
                num_videos=len(self._video_ids),
                num_queries=len(self._query_video),
                num_frames=self._num_frames,
                num_tokens=self._num_tokens,
                l2_normalize=self.l2_normalize,
                splits=splits,
                shards=self._shards,
                sentence_dim=self.sentence_dim,
                source=self.source,
                val_test_overlap=_recorded_overlap(self._splits, self._query_video),
            )
            manifest.write(self.tmp_dir / MANIFEST_NAME)
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.out_dir

    def _publish(self) -> None:
        old = None
        if self.out_dir.exists():
            if not self.overwrite and any(self.out_dir.iterdir()):
                raise DatasetError(f"{self.out_dir}: appeared while writing; not replacing it")
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            self.out_dir.rename(old)
        self.tmp_dir.rename(self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written so far."""
        self._closed = True
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
