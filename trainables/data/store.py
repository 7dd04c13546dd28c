"""Read a sharded PRVR dataset: open by manifest, verify checksums on demand, load a split once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.manifest import SPLITS_FILE, Manifest, ShardInfo, manifest_path, read_manifest, sha256_file


class RaggedSplit:
    """Accessors shared by raw and prepared splits: variable-length rows stored with offsets."""

    video_ids: list[str]
    query_ids: list[str]
    frames: np.ndarray
    frame_offsets: np.ndarray
    tokens: np.ndarray
    token_offsets: np.ndarray

    def video_frames(self, i: int) -> np.ndarray:
        return self.frames[self.frame_offsets[i] : self.frame_offsets[i + 1]]

    def query_tokens(self, i: int) -> np.ndarray:
        return self.tokens[self.token_offsets[i] : self.token_offsets[i + 1]]

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)


@dataclass
class RawSplit(RaggedSplit):
    """One split's raw features in memory, before the loader's resampling and normalisation.

    ``video_ids`` follow the first appearance of each video among the split's queries (the
    release loaders' ``read_video_ids`` order); ``query_video[i]`` is the index in ``video_ids`` of
    query i's video.
    """

    name: str
    video_ids: list[str]
    frames: np.ndarray  # (total frames, video_dim)
    frame_offsets: np.ndarray  # (num videos + 1,)
    query_ids: list[str]
    query_text: list[str]
    query_video: np.ndarray  # (num queries,) int64
    tokens: np.ndarray  # (total tokens, query_dim)
    token_offsets: np.ndarray  # (num queries + 1,)
    sentence: np.ndarray | None = None  # (num queries, sentence_dim)


@dataclass
class _Rows:
    """Rows read from shards: id -> row, variable-length data chunks, per-row strings and matrices."""

    found: dict[str, int]
    chunks: list[tuple[np.ndarray, np.ndarray]]
    strings: dict[str, list[str]]
    extra: list[np.ndarray]


def _strings(handle: h5py.File, key: str) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in handle[key][()]]


def _offsets(handle: h5py.File, where: str, count: int, rows: int) -> np.ndarray:
    offsets = handle["offsets"][()].astype(np.int64)
    if (offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != rows
            or np.any(np.diff(offsets) < 1)):
        raise DatasetError(f"{where}: offsets are inconsistent with its {count} rows of data")
    return offsets


def _select(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The variable-length rows ``rows`` of ``data`` (row i is ``data[offsets[i]:offsets[i+1]]``)."""
    lengths = np.diff(offsets)[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = np.repeat(offsets[:-1][rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return data[index], new_offsets


def _gather(chunks: list[tuple[np.ndarray, np.ndarray]], order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate chunks of variable-length rows, then take the rows in ``order``."""
    data = np.concatenate([c[0] for c in chunks])
    bases = np.cumsum([0] + [c[0].shape[0] for c in chunks[:-1]])
    offsets = np.concatenate([c[1][:-1] + b for c, b in zip(chunks, bases)] + [[data.shape[0]]])
    return _select(data, offsets, order)


class FeatureStore:
    """A dataset opened by its manifest. Nothing but the manifest is read until asked."""

    def __init__(self, location: str | Path) -> None:
        self.manifest_file = manifest_path(location).resolve()
        self.manifest: Manifest = read_manifest(self.manifest_file)
        self.root = self.manifest_file.parent

    @property
    def splits(self) -> list[str]:
        return list(self.manifest.splits)

    # -- files ---------------------------------------------------------------------------------
    def _check_present(self, shard: ShardInfo) -> Path:
        path = self.root / shard.file
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard.bytes:
            raise DatasetError(f"{path}: shard is {size} bytes, the manifest says {shard.bytes} (truncated or replaced)")
        return path

    def verify(self) -> None:
        """Check every file's size and sha256 against the manifest (reads every byte)."""
        for shard in self.manifest.shards:
            path = self._check_present(shard)
            digest = sha256_file(path)
            if digest != shard.sha256:
                raise DatasetError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {shard.sha256[:12]}...")

    def _open(self, shard: ShardInfo, verify: bool) -> tuple[Path, h5py.File]:
        path = self._check_present(shard)
        if verify and sha256_file(path) != shard.sha256:
            raise DatasetError(f"{path}: sha256 does not match the manifest")
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
        return path, handle

    def _read_matrix(self, path: Path, handle: h5py.File, key: str, dim: int | None) -> np.ndarray:
        if key not in handle:
            raise DatasetError(f"{path}: has no '{key}' dataset")
        try:
            data = handle[key][()]
        except OSError as exc:
            raise DatasetError(f"{path}: '{key}' cannot be read ({exc})") from None
        if data.ndim != 2 or (dim is not None and data.shape[1] != dim):
            raise DatasetError(f"{path}: '{key}' has shape {data.shape}, the manifest says width {dim}")
        return data

    # -- splits --------------------------------------------------------------------------------
    def split_query_ids(self, split: str, verify: bool = False) -> list[str]:
        """The query ids of ``split`` in their stored order."""
        if split not in self.manifest.splits:
            raise DatasetError(f"{self.manifest_file}: no split {split!r} (available: {', '.join(self.splits)})")
        shards = self.manifest.shards_of("splits")
        if len(shards) != 1 or shards[0].file != SPLITS_FILE:
            raise DatasetError(f"{self.manifest_file}: expected exactly one '{SPLITS_FILE}' shard")
        path, handle = self._open(shards[0], verify)
        with handle:
            if split not in handle:
                raise DatasetError(f"{path}: split {split!r} is in the manifest but not in the file")
            ids = _strings(handle, split)
        if not ids:
            raise DatasetError(f"{path}: split {split!r} has no queries")
        if len(ids) != self.manifest.splits[split].num_queries:
            raise DatasetError(f"{path}: split {split!r} has {len(ids)} queries, the manifest says "
                               f"{self.manifest.splits[split].num_queries}")
        return ids

    def _collect(self, kind: str, key: str, dim: int, wanted: dict[str, int], verify: bool,
                 strings: tuple[str, ...] = (), extra: tuple[str, int] | None = None) -> _Rows:
        """Read the rows of ``wanted`` ids from every shard of ``kind``, in shard order."""
        rows = _Rows({}, [], {name: [] for name in strings}, [])
        for shard in self.manifest.shards_of(kind):
            path, handle = self._open(shard, verify)
            with handle:
                ids = _strings(handle, "ids")
                picked = np.asarray([i for i, item in enumerate(ids) if item in wanted], dtype=np.int64)
                if not picked.size:
                    continue
                data = self._read_matrix(path, handle, key, dim)
                offsets = _offsets(handle, path, len(ids), data.shape[0])
                for name in strings:
                    values = _strings(handle, name)
                    rows.strings[name] += [values[i] for i in picked]
                if extra is not None:
                    rows.extra.append(self._read_matrix(path, handle, *extra)[picked])
            base = sum(len(offsets) - 1 for _, offsets in rows.chunks)
            rows.chunks.append(_select(data, offsets, picked))
            rows.found.update({ids[i]: base + j for j, i in enumerate(picked)})
        return rows

    def load_split(self, split: str, verify: bool = False) -> RawSplit:
        """Load one split's queries and videos into memory, checking them against the manifest."""
        m = self.manifest
        query_ids = self.split_query_ids(split, verify)
        sentence = None if m.sentence_dim is None else ("sentence", m.sentence_dim)
        queries = self._collect("queries", "tokens", m.query_dim, dict.fromkeys(query_ids, 0), verify,
                                strings=("video_ids", "text"), extra=sentence)
        missing = [q for q in query_ids if q not in queries.found]
        if missing:
            raise DatasetError(f"{self.manifest_file}: query {missing[0]!r} of the split is in no query shard")
        order = np.asarray([queries.found[q] for q in query_ids], dtype=np.int64)
        tokens, token_offsets = _gather(queries.chunks, order)
        query_videos = [queries.strings["video_ids"][i] for i in order]
        video_ids = list(dict.fromkeys(query_videos))
        video_index = {v: i for i, v in enumerate(video_ids)}

        videos = self._collect("videos", "features", m.video_dim, video_index, verify)
        absent = [v for v in video_ids if v not in videos.found]
        if absent:
            q = query_ids[query_videos.index(absent[0])]
            raise DatasetError(f"{self.manifest_file}: query {q!r} refers to video {absent[0]!r}, "
                               f"which is in no video shard")
        frames, frame_offsets = _gather(videos.chunks, np.asarray([videos.found[v] for v in video_ids]))
        return RawSplit(
            name=split,
            video_ids=video_ids,
            frames=frames,
            frame_offsets=frame_offsets,
            query_ids=query_ids,
            query_text=[queries.strings["text"][i] for i in order],
            query_video=np.asarray([video_index[v] for v in query_videos], dtype=np.int64),
            tokens=tokens,
            token_offsets=token_offsets,
            sentence=np.concatenate(queries.extra)[order] if queries.extra else None,
        )
