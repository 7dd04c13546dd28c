"""Read a sharded PRVR dataset: open by manifest, verify checksums on demand, load a split once."""

from __future__ import annotations

import time
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
    """The rows of the wanted ids, in wanted order: variable-length data, per-row strings and matrix."""

    data: np.ndarray
    offsets: np.ndarray
    strings: dict[str, list[str]]
    extra: np.ndarray | None


def _strings(handle: h5py.File, key: str) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in handle[key][()]]


def _offsets(handle: h5py.File, where: Path, count: int, rows: int) -> np.ndarray:
    offsets = handle["offsets"][()].astype(np.int64)
    if (offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != rows
            or np.any(np.diff(offsets) < 1)):
        raise DatasetError(f"{where}: offsets are inconsistent with its {count} rows of data")
    return offsets


class _Missing(Exception):
    """An id asked for is in no shard (turned into a DatasetError that says what referred to it)."""

    def __init__(self, item: str) -> None:
        super().__init__(item)
        self.item = item


#: up to this many contiguous runs of rows per shard are read by HDF5 into place, more read the whole matrix
MAX_DIRECT_READS = 64


def _runs(rows: np.ndarray, positions: np.ndarray, offsets: np.ndarray,
          out_offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """The picked items' feature rows as maximal runs ``(source start, target start, length)``: items
    next to each other in the shard that are also next to each other in the output make one run."""
    order = np.argsort(positions, kind="stable")
    rows, positions = rows[order], positions[order]
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(positions) != 1)) + 1
    runs = []
    for first, last in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]]) - 1):
        source, target = int(offsets[rows[first]]), int(out_offsets[positions[first]])
        runs.append((source, target, int(offsets[rows[last] + 1]) - source))
    return runs


# sha256 of the files this process has hashed, by (resolved path, inode, size, mtime_ns): a file that is
# rewritten, even with the same size, gets a new mtime_ns and is hashed again. File times tick coarsely
# (a few ms), so a file modified less than RACY_SECONDS ago is not remembered (hashed on every check):
# a rewrite within the same tick cannot then go unseen (git's "racy clean" rule)
_SHA256_SEEN: dict[tuple[str, int, int, int], str] = {}
RACY_SECONDS = 2.0


def checked_sha256(path: Path, rehash: bool = False) -> str:
    """The sha256 of ``path``, computed once per process for each (path, inode, size, mtime_ns) of the file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if rehash or key not in _SHA256_SEEN:
        digest = sha256_file(path)
        after = path.stat()
        if (after.st_ino, after.st_size, after.st_mtime_ns) != key[1:] \
                or time.time_ns() - after.st_mtime_ns < RACY_SECONDS * 1e9:
            return digest  # changed while being read, or too recently to trust its mtime: not remembered
        _SHA256_SEEN[key] = digest
    return _SHA256_SEEN[key]


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
    def _check_present(self, shard: ShardInfo, rehash: bool = False) -> Path:
        """The shard's path, checked against the manifest's size and sha256.

        The sha256 is computed once per process for each (path, inode, size, mtime_ns) of a file (see
        ``checked_sha256``); ``rehash`` reads the file again even if it was checked before.
        """
        path = self.root / shard.file
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard.bytes:
            raise DatasetError(f"{path}: shard is {size} bytes, the manifest says {shard.bytes} (truncated or "
                               f"replaced)")
        digest = checked_sha256(path, rehash=rehash)
        if digest != shard.sha256:
            raise DatasetError(f"{path}: sha256 {digest[:12]}... does not match the manifest's {shard.sha256[:12]}... "
                               f"(the file was changed or corrupted)")
        return path

    def verify(self) -> None:
        """Check every file's size and sha256 against the manifest (reads every byte again)."""
        for shard in self.manifest.shards:
            self._check_present(shard, rehash=True)

    def check(self) -> None:
        """Check every file's size and sha256 against the manifest, hashing each file once per process."""
        for shard in self.manifest.shards:
            self._check_present(shard)

    def _open(self, shard: ShardInfo, verify: bool) -> tuple[Path, h5py.File]:
        path = self._check_present(shard, rehash=verify)
        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None
        return path, handle

    def _matrix(self, path: Path, handle: h5py.File, key: str, dim: int) -> h5py.Dataset:
        """The 2-D dataset ``key`` of a shard, checked against the manifest's width (not read yet)."""
        if key not in handle:
            raise DatasetError(f"{path}: has no '{key}' dataset")
        matrix = handle[key]
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise DatasetError(f"{path}: '{key}' has shape {matrix.shape}, the manifest says width {dim}")
        return matrix

    def _read(self, path: Path, handle: h5py.File, key: str, dim: int) -> np.ndarray:
        try:
            return self._matrix(path, handle, key, dim)[()]
        except OSError as exc:
            raise DatasetError(f"{path}: '{key}' cannot be read ({exc})") from None

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

    def query_videos(self, verify: bool = False) -> dict[str, str]:
        """Every stored query's video, read from the query shards' ids (no features are read)."""
        videos: dict[str, str] = {}
        for shard in self.manifest.shards_of("queries"):
            _, handle = self._open(shard, verify)
            with handle:
                videos.update(zip(_strings(handle, "ids"), _strings(handle, "video_ids")))
        return videos

    def _collect(self, kind: str, key: str, dim: int, wanted: list[str], verify: bool,
                 strings: tuple[str, ...] = (), extra: tuple[str, int] | None = None) -> _Rows:
        """Read the rows of the ``wanted`` ids (unique) from the shards of ``kind``, in wanted order.

        Two passes keep memory at the result plus one shard: the first reads only ids, offsets and
        strings to size the result, the second copies each shard's rows straight into place.
        """
        position = {item: i for i, item in enumerate(wanted)}
        lengths = np.zeros(len(wanted), dtype=np.int64)
        found = np.zeros(len(wanted), dtype=bool)
        values: dict[str, list[str]] = {name: [""] * len(wanted) for name in strings}
        plan = []
        for shard in self.manifest.shards_of(kind):
            path, handle = self._open(shard, verify)
            with handle:
                ids = _strings(handle, "ids")
                picked = [(row, position[item]) for row, item in enumerate(ids) if item in position]
                if not picked:
                    continue
                offsets = _offsets(handle, path, len(ids), self._matrix(path, handle, key, dim).shape[0])
                for name in strings:
                    column = _strings(handle, name)
                    for row, pos in picked:
                        values[name][pos] = column[row]
            rows, positions = (np.asarray(x, dtype=np.int64) for x in zip(*picked))
            twice = positions[found[positions]]
            if twice.size:
                raise DatasetError(f"{path}: {kind} id {wanted[twice[0]]!r} is also in another shard")
            found[positions] = True
            lengths[positions] = np.diff(offsets)[rows]
            plan.append((shard, rows, positions, offsets))
        if not found.all():
            raise _Missing(wanted[int(np.flatnonzero(~found)[0])])
        out_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out = np.empty((int(out_offsets[-1]), dim), dtype=self.manifest.dtype)
        out_extra = None if extra is None else np.empty((len(wanted), extra[1]), dtype=self.manifest.dtype)
        for shard, rows, positions, offsets in plan:
            path, handle = self._open(shard, verify=False)  # checked in the first pass
            with handle:
                self._copy_rows(path, handle, key, dim, _runs(rows, positions, offsets, out_offsets), out)
                if extra is not None:
                    assert out_extra is not None  # allocated above whenever extra is given
                    out_extra[positions] = self._read(path, handle, *extra)[rows]
        return _Rows(out, out_offsets, values, out_extra)

    def _copy_rows(self, path: Path, handle: h5py.File, key: str, dim: int,
                   runs: list[tuple[int, int, int]], out: np.ndarray) -> None:
        """Copy each run ``(source start, target start, length)`` of ``key``'s rows into ``out``.

        Few runs (a split that takes a shard's items in stored order is one run) are read by HDF5 straight
        into their slice of ``out``: one pass over the bytes, as fast as a plain file read. Many scattered
        runs read the matrix once and copy, since each HDF5 read has a fixed cost."""
        if len(runs) > MAX_DIRECT_READS:
            data = self._read(path, handle, key, dim)
            for source, target, length in runs:
                out[target : target + length] = data[source : source + length]
            return
        matrix = self._matrix(path, handle, key, dim)
        try:
            for source, target, length in runs:
                if length:
                    matrix.read_direct(out, np.s_[source : source + length], np.s_[target : target + length])
        except OSError as exc:
            raise DatasetError(f"{path}: '{key}' cannot be read ({exc})") from None

    def load_split(self, split: str, verify: bool = False) -> RawSplit:
        """Load one split's queries and videos into memory, checking them against the manifest."""
        m = self.manifest
        query_ids = self.split_query_ids(split, verify)
        sentence = None if m.sentence_dim is None else ("sentence", m.sentence_dim)
        try:
            queries = self._collect("queries", "tokens", m.query_dim, query_ids, verify,
                                    strings=("video_ids", "text"), extra=sentence)
        except _Missing as missing:
            raise DatasetError(f"{self.manifest_file}: query {missing.item!r} of the split is in no query "
                               "shard") from None
        query_videos = queries.strings["video_ids"]
        video_ids = list(dict.fromkeys(query_videos))
        try:
            videos = self._collect("videos", "features", m.video_dim, video_ids, verify)
        except _Missing as missing:
            q = query_ids[query_videos.index(missing.item)]
            raise DatasetError(f"{self.manifest_file}: query {q!r} refers to video {missing.item!r}, "
                               f"which is in no video shard") from None
        video_index = {v: i for i, v in enumerate(video_ids)}
        return RawSplit(
            name=split,
            video_ids=video_ids,
            frames=videos.data,
            frame_offsets=videos.offsets,
            query_ids=query_ids,
            query_text=queries.strings["text"],
            query_video=np.asarray([video_index[v] for v in query_videos], dtype=np.int64),
            tokens=queries.data,
            token_offsets=queries.offsets,
            sentence=queries.extra,
        )
