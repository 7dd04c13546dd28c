"""A corpus index: every video of a corpus encoded once by an exported model, in checksummed shards.

Layout of an index folder::

    index.json           the manifest: format, the model's identity (its export hash, and the registry
                         name/version when built from ``models:/``), the input protocol, the stage-1
                         settings, the encoding keys and every shard (video count, file sha256s and sizes)
    shard-<id>/          one shard per build or append step:
        video_ids.json   the shard's video ids, in row order
        stage1.npy       (V, K, H) float32 unit vectors: the stage-1 search vectors of each video
                         (``Backbone.retrieval_tokens`` L2-normalised, averaged over K contiguous groups,
                         L2-normalised again)
        stage1_token_norms.npy, stage1_span_norms.npy   (V, T), (V, P): for a backbone whose tokens have
                         spans (MS-SL's 528 proposals over its 32 clips), with every token kept: what the
                         exact stage 1 needs to score a video by its best span (``stage1_arrays``)
        enc.<key>.npy    (V, ...) the backbone's video encoding ``key`` (``Backbone.encode_videos``),
                         frame-level tensors zero-padded to the shard's longest video

Every file is a plain ``.npy`` (read with ``allow_pickle=False``, memory-mapped for reranking) or JSON.
A new index is written into a hidden folder next to the target and renamed into place; an append writes
its shard under a hidden name, renames it, then replaces ``index.json`` in one ``os.replace``: a crash
at any point leaves the previous manifest, which names only complete shards, in force (a shard it does
not name is removed by the next append). Appends hold ``index.lock``.

The index is bound to one model and one protocol: :func:`check_model` refuses to query or extend it with
another (``LoadedModel.identity`` is the sha256 of the export's config, weights and protocol files).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data.loader import PreparedSplit, collate_videos
from trainables.data.manifest import sha256_file
from trainables.data.protocol import Protocol
from trainables.errors import InputError
from trainables.models.base import Tensors
from trainables.retrieval.defaults import DEFAULT_SHARD_VIDEOS, DEFAULT_STAGE1_VECTORS

FORMAT, VERSION = "prvr-corpus-index", 1
MANIFEST = "index.json"
LOCK = "index.lock"
IDS, STAGE1, ENCODING_PREFIX = "video_ids.json", "stage1.npy", "enc."
#: a shard's stage-1 arrays (``stage1_arrays``), each in ``<key>.npy``
STAGE1_KEY, TOKEN_NORMS, SPAN_NORMS = "stage1", "stage1_token_norms", "stage1_span_norms"
NORM_EPS = 1e-12


@dataclass(frozen=True)
class ModelIdentity:
    """Which model an index belongs to: its export hash (what is checked), and where it came from."""

    export_sha256: str
    backbone: str
    plugins: tuple[str, ...]
    registered_name: str | None = None
    registered_version: str | None = None

    def describe(self) -> str:
        where = (f"{self.registered_name} version {self.registered_version}, " if self.registered_name else "")
        plugins = ", ".join(self.plugins) or "none"
        return f"{where}export {self.export_sha256[:12]}... ({self.backbone}, plugins {plugins})"


def model_identity(loaded: Any, registered_name: str | None = None,
                   registered_version: str | None = None) -> ModelIdentity:
    """The identity of ``loaded`` (a ``trainables.export.LoadedModel``)."""
    return ModelIdentity(loaded.identity, loaded.config.backbone, tuple(sorted(loaded.config.plugins)),
                         registered_name, registered_version)


def stage1_arrays(tokens: torch.Tensor, groups: int, spans: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A video batch's stage-1 arrays from its (V, T, H) retrieval ``tokens``: ``stage1`` (V, K, H)
    (:func:`stage1_vectors`), and, for a backbone whose tokens have ``spans`` (a (P, T) averaging matrix:
    MS-SL's proposals) with every token kept, ``stage1_token_norms`` (V, T) and ``stage1_span_norms`` (V, P),
    with which the exact stage 1 scores each video by its best span cosine without storing the spans."""
    arrays = {STAGE1_KEY: stage1_vectors(tokens, groups)}
    if spans is not None and groups >= tokens.shape[1]:
        raw = tokens.float()
        arrays[TOKEN_NORMS] = raw.norm(dim=-1)
        arrays[SPAN_NORMS] = torch.matmul(spans.float(), raw).norm(dim=-1).clamp_min(NORM_EPS)
    return arrays


def stage1_vectors(tokens: torch.Tensor, groups: int) -> torch.Tensor:
    """(V, K, H) unit vectors from (V, T, H) ``tokens``: unit tokens averaged over K = min(groups, T)
    contiguous groups, then L2-normalised (K = T keeps every token: a video's stage-1 score is then its
    best token cosine)."""
    unit = F.normalize(tokens.float(), dim=-1, eps=NORM_EPS)
    parts = torch.tensor_split(unit, min(groups, unit.shape[1]), dim=1)
    return F.normalize(torch.stack([p.mean(dim=1) for p in parts], dim=1), dim=-1, eps=NORM_EPS)


def pad_cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding every other dim to the largest (frame-level tensors of
    shards with different longest videos; padding is masked out by the tensors' own masks)."""
    if len(parts) == 1:
        return parts[0]
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim)]
    padded = []
    for p in parts:
        pad: list[int] = []
        for d in reversed(range(1, p.ndim)):
            pad += [0, shape[d - 1] - p.shape[d]]
        padded.append(F.pad(p, pad) if any(pad) else p)
    return torch.cat(padded)


# ------------------------------------------------------------------------------------------ build


def encode_corpus(loaded: Any, split: PreparedSplit, rows: range, stage1_groups: int) -> tuple[Tensors, Tensors]:
    """(encodings of ``rows`` of ``split`` padded to their longest video, their stage-1 arrays), the
    videos encoded ``eval_video_batch`` at a time as the evaluator does."""
    from trainables.export import inference_mode

    model, config = loaded.model, loaded.config
    longest = int(max(split.frame_offsets[i + 1] - split.frame_offsets[i] for i in rows))
    parts: dict[str, list[torch.Tensor]] = {}
    vectors: dict[str, list[torch.Tensor]] = {}
    spans = model.retrieval_spans()
    with inference_mode(model, config) as device:
        for start in range(rows.start, rows.stop, config.eval_video_batch):
            items = [{"video_index": i, "clips": split.clips[i], "frames": split.video_frames(i),
                      "frame_scales": split.video_frame_scales(i)}
                     for i in range(start, min(start + config.eval_video_batch, rows.stop))]
            batch = {k: v.to(device) for k, v in collate_videos(items, pad_to=longest).items()}
            encoded = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"],
                                          batch["videos_mask"], batch.get("frame_scales"))
            encoded = {k: v.float().cpu() for k, v in encoded.items()}
            for key, value in stage1_arrays(model.retrieval_tokens(encoded), stage1_groups, spans).items():
                vectors.setdefault(key, []).append(value)
            for key, value in encoded.items():
                parts.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in parts.items()}, {k: torch.cat(v) for k, v in vectors.items()}


def _write_shard(folder: Path, video_ids: Sequence[str], encodings: Tensors, stage1: Tensors) -> dict[str, Any]:
    """Write one shard into the new folder ``folder``; its manifest entry."""
    folder.mkdir()
    (folder / IDS).write_text(json.dumps(list(video_ids)))
    for key, value in stage1.items():
        np.save(folder / f"{key}.npy", value.numpy().astype(np.float32, copy=False), allow_pickle=False)
    for key, value in encodings.items():
        np.save(folder / f"{ENCODING_PREFIX}{key}.npy", value.numpy(), allow_pickle=False)
    files = sorted(p.name for p in folder.iterdir())
    return {"videos": len(video_ids), "files": {name: sha256_file(folder / name) for name in files},
            "bytes": sum((folder / name).stat().st_size for name in files)}


#: one shard's content: (video ids, their encodings (V, ...) each, their stage-1 arrays (``stage1_arrays``;
#: a tensor: the (V, K, H) stage-1 vectors alone))
Chunk = tuple[list[str], Tensors, "Tensors | torch.Tensor"]


def encoded_chunks(loaded: Any, split: PreparedSplit, stage1_groups: int, shard_videos: int = DEFAULT_SHARD_VIDEOS,
                   skip: frozenset[str] = frozenset()) -> Iterator[Chunk]:
    """``split``'s videos not in ``skip``, encoded by ``loaded``, ``shard_videos`` per chunk."""
    if shard_videos < 1:
        raise InputError(f"shard_videos must be >= 1, got {shard_videos}")
    wanted = [i for i, v in enumerate(split.video_ids) if v not in skip]
    for start in range(0, len(wanted), shard_videos):
        chunk = wanted[start:start + shard_videos]
        runs: list[range] = []  # contiguous runs of rows (a whole split is one), encoded run by run
        for i in chunk:
            if runs and runs[-1].stop == i:
                runs[-1] = range(runs[-1].start, i + 1)
            else:
                runs.append(range(i, i + 1))
        encoded = [encode_corpus(loaded, split, r, stage1_groups) for r in runs]
        yield ([split.video_ids[i] for i in chunk], {k: pad_cat([e[0][k] for e in encoded]) for k in encoded[0][0]},
               {k: torch.cat([e[1][k] for e in encoded]) for k in encoded[0][1]})


def _store_shards(chunks: Iterable[Chunk], into: Path, keys: Sequence[str] | None) -> list[dict[str, Any]]:
    """Write each chunk as a shard under ``into`` (a hidden name until complete); their manifest entries.
    Every chunk must hold the encoding ``keys`` (the first chunk's when None)."""
    entries = []
    for ids, encodings, stage1 in chunks:
        stage1 = stage1 if isinstance(stage1, dict) else {STAGE1_KEY: stage1}
        if keys is None:
            keys = sorted(encodings)
        if sorted(encodings) != list(keys):
            raise InputError(f"encodings with keys {sorted(encodings)} cannot join an index of keys {list(keys)}")
        if any(len(v) != len(ids) for v in (*encodings.values(), *stage1.values())):
            raise InputError(f"a chunk of {len(ids)} video ids has encodings of other lengths")
        name = f"shard-{uuid.uuid4().hex[:12]}"
        staging = into / f".{name}.tmp"
        try:
            entry = _write_shard(staging, ids, encodings, stage1)
            os.rename(staging, into / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        entries.append({"name": name, **entry})
    return entries


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _vectors_per_video(shard: Path) -> int:
    return int(np.load(shard / STAGE1, mmap_mode="r", allow_pickle=False).shape[1])


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    staging = folder / f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}"
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(staging, folder / MANIFEST)


def _unique(ids: Sequence[str], present: set[str], where: str) -> None:
    seen = set(present)
    for v in ids:
        if v in seen:
            raise InputError(f"{where}: video id {v!r} appears twice in the index")
        seen.add(v)


def write_index(chunks: Iterable[Chunk], target: str | Path, identity: ModelIdentity, protocol: Protocol,
                stage1_groups: int, source: str | None = None) -> Path:
    """A new index folder ``target`` of ``chunks`` (staged next to it, renamed into place when complete)."""
    from trainables.export import check_target, staged_folder

    target = check_target(target)
    with staged_folder(target, "index") as staging:
        shards = _store_shards(chunks, staging, None)
        if not shards:
            raise InputError(f"{target}: no videos to index")
        ids = [v for s in shards for v in json.loads((staging / s["name"] / IDS).read_text())]
        _unique(ids, set(), str(target))
        keys = sorted(n[len(ENCODING_PREFIX):-4] for n in shards[0]["files"] if n.startswith(ENCODING_PREFIX))
        _write_manifest(staging, {
            "format": FORMAT, "version": VERSION, "model": dataclasses.asdict(identity),
            "protocol": dataclasses.asdict(protocol), "encoding_keys": keys,
            "stage1": {"vectors_per_video": _vectors_per_video(staging / shards[0]["name"]),
                       "groups": stage1_groups, "metric": "max inner product of unit vectors",
                       "spans": f"{SPAN_NORMS}.npy" in shards[0]["files"]},
            "num_videos": len(ids), "shards": shards,
            "sources": [{"source": source, "videos": len(ids), "at": _now()}]})
    return target


def build_index(loaded: Any, split: PreparedSplit, target: str | Path, identity: ModelIdentity, *,
                stage1_groups: int = DEFAULT_STAGE1_VECTORS, shard_videos: int = DEFAULT_SHARD_VIDEOS,
                source: str | None = None) -> Path:
    """Encode every video of ``split`` with ``loaded`` into the new index folder ``target``."""
    from trainables.export import check_target

    if isinstance(stage1_groups, bool) or not isinstance(stage1_groups, int) or stage1_groups < 1:
        raise InputError(f"stage-1 vectors per video must be a whole number >= 1, got {stage1_groups!r}")
    target = check_target(target)
    _check_protocol(loaded.protocol, split.protocol, str(target))
    return write_index(encoded_chunks(loaded, split, stage1_groups, shard_videos), target, identity, loaded.protocol,
                       stage1_groups, source)


def append_chunks(chunks: Callable[[CorpusIndex], Iterable[Chunk]], folder: str | Path,
                  source: str | None = None) -> int:
    """Add the shards of ``chunks(index)`` (the index as of the lock) to the index in ``folder``; how
    many videos were added. The manifest is replaced only after every new shard is complete."""
    from filelock import FileLock

    folder = Path(folder).expanduser().absolute()
    CorpusIndex.open(folder)  # a clear error before creating a lock file in a folder that is no index
    with FileLock(str(folder / LOCK)):
        index = CorpusIndex.open(folder)
        named = {s["name"] for s in index.manifest["shards"]}
        for stale in index.folder.iterdir():  # left by a crashed append
            if stale.is_dir() and stale.name.lstrip(".").startswith("shard-") and stale.name not in named:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            shards = _store_shards(chunks(index), index.folder, index.manifest["encoding_keys"])
            added_ids = [v for s in shards for v in json.loads((index.folder / s["name"] / IDS).read_text())]
            _unique(added_ids, set(index.video_ids), str(index.folder))
            if shards and _vectors_per_video(index.folder / shards[0]["name"]) != index.vectors_per_video:
                raise InputError(f"{index.folder}: new shards have another number of stage-1 vectors per video")
        except BaseException:
            for s in locals().get("shards", []):
                shutil.rmtree(index.folder / s["name"], ignore_errors=True)
            raise
        if not shards:
            return 0
        manifest = {**index.manifest, "shards": [*index.manifest["shards"], *shards],
                    "num_videos": index.num_videos + len(added_ids),
                    "sources": [*index.manifest.get("sources", []),
                                {"source": source, "videos": len(added_ids), "at": _now()}]}
        _write_manifest(index.folder, manifest)
    return len(added_ids)


def append_to_index(loaded: Any, split: PreparedSplit, folder: str | Path, *, shard_videos: int = DEFAULT_SHARD_VIDEOS,
                    source: str | None = None) -> tuple[int, int]:
    """Encode ``split``'s videos that the index in ``folder`` lacks into new shards; (added, already
    there). The index must be ``loaded``'s and its protocol the split's."""
    index = CorpusIndex.open(folder)
    index.check_model(loaded)
    _check_protocol(index.protocol, split.protocol, str(index.folder))

    def chunks(current: CorpusIndex) -> Iterator[Chunk]:
        return encoded_chunks(loaded, split, current.manifest["stage1"]["groups"], shard_videos,
                              frozenset(current.video_ids))

    added = append_chunks(chunks, folder, source)
    return added, split.num_videos - added


def _check_protocol(model: Protocol, data: Protocol, where: str) -> None:
    if model != data:
        raise InputError(f"{where}: the corpus's input protocol {data} is not the model's {model}")


# ------------------------------------------------------------------------------------------- read


@dataclass
class Shard:
    """One shard of an opened index: its folder, ids, and its arrays memory-mapped on first use."""

    folder: Path
    video_ids: list[str]
    keys: tuple[str, ...]

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.load(self.folder / f"{ENCODING_PREFIX}{key}.npy", mmap_mode="r", allow_pickle=False)
                for key in self.keys}

    def stage1(self, key: str = STAGE1_KEY) -> np.ndarray:
        return np.load(self.folder / f"{key}.npy", allow_pickle=False)

    @cached_property
    def stage1_maps(self) -> dict[str, np.ndarray]:
        """This shard's stage-1 arrays, memory-mapped (an approximate stage 1 rescores its pool from them)."""
        return {key: np.load(self.folder / f"{key}.npy", mmap_mode="r", allow_pickle=False)
                for key in (STAGE1_KEY, TOKEN_NORMS, SPAN_NORMS) if (self.folder / f"{key}.npy").is_file()}

    def rows(self, rows: np.ndarray) -> Tensors:
        """The encodings of rows ``rows`` (ascending) of this shard, copied out of the memory maps."""
        return {key: torch.from_numpy(np.ascontiguousarray(array[rows])) for key, array in self.arrays.items()}


class CorpusIndex:
    """An index folder opened by its manifest (files checked by size, and by sha256 with ``verify``)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], shards: list[Shard]) -> None:
        self.folder, self.manifest, self.shards = folder, manifest, shards
        self.video_ids = [v for s in shards for v in s.video_ids]
        self.shard_starts = np.cumsum([0] + [len(s.video_ids) for s in shards])
        self.protocol = Protocol(**manifest["protocol"])
        self.identity = ModelIdentity(**{**manifest["model"], "plugins": tuple(manifest["model"]["plugins"])})

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def vectors_per_video(self) -> int:
        return int(self.manifest["stage1"]["vectors_per_video"])

    @classmethod
    def open(cls, folder: str | Path, verify: bool = False) -> CorpusIndex:
        folder = Path(folder).expanduser().absolute()
        path = folder / MANIFEST
        if not path.is_file():
            raise InputError(f"{folder}: no corpus index there (no {MANIFEST}); build one with "
                             f"`python search/export.py index`")
        try:
            manifest = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{path}: not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise InputError(f"{path}: index format version {manifest.get('version')}, this code reads {VERSION}")
        keys = tuple(manifest["encoding_keys"])
        shards = []
        for entry in manifest["shards"]:
            shard_folder = folder / entry["name"]
            for name, digest in entry["files"].items():
                file = shard_folder / name
                if not file.is_file():
                    raise InputError(f"{folder}: shard file {entry['name']}/{name} is missing")
                if verify and sha256_file(file) != digest:
                    raise InputError(f"{folder}: shard file {entry['name']}/{name} does not match its sha256")
            ids = json.loads((shard_folder / IDS).read_text())
            if len(ids) != entry["videos"]:
                raise InputError(f"{folder}: shard {entry['name']} has {len(ids)} ids, "
                                 f"its manifest says {entry['videos']}")
            shards.append(Shard(shard_folder, ids, keys))
        if not verify:
            sizes = sum(f.stat().st_size for s in shards for f in s.folder.iterdir() if f.is_file())
            expected = sum(e["bytes"] for e in manifest["shards"])
            if sizes != expected:
                raise InputError(f"{folder}: shard files hold {sizes} bytes, the manifest says {expected}: "
                                 f"a file was changed or truncated (open with verify=True to find it)")
        return cls(folder, manifest, shards)

    def check_model(self, loaded: Any) -> None:
        """InputError unless this index was built by ``loaded`` (same export hash) with its protocol."""
        if loaded.identity != self.identity.export_sha256:
            raise InputError(f"index {self.folder} was built with {self.identity.describe()}, not with this model "
                             f"(export {loaded.identity[:12]}...): rebuild it with `python search/export.py index`")
        _check_protocol(loaded.protocol, self.protocol, str(self.folder))

    def stage1(self) -> np.ndarray:
        """(N x K, H) float32: every video's stage-1 vectors, video-major (row r belongs to video r // K),
        filled from the shards' memory maps (one copy in memory)."""
        maps = [s.stage1_maps[STAGE1_KEY] for s in self.shards]
        out = np.empty((sum(m.shape[0] * m.shape[1] for m in maps), maps[0].shape[-1]), dtype=np.float32)
        start = 0
        for m in maps:
            out[start:start + m.shape[0] * m.shape[1]] = m.reshape(-1, m.shape[-1])
            start += m.shape[0] * m.shape[1]
        return out

    def stage1_sample(self, count: int, seed: int = 0) -> np.ndarray:
        """(<= count, H) float32: stage-1 vectors drawn evenly from every shard (what an approximate faiss
        index is trained on)."""
        share = max(1, count // len(self.shards))
        rng = np.random.default_rng(seed)
        parts = []
        for shard in self.shards:
            vectors = shard.stage1_maps[STAGE1_KEY].reshape(-1, shard.stage1_maps[STAGE1_KEY].shape[-1])
            pick = np.sort(rng.choice(len(vectors), size=min(share, len(vectors)), replace=False))
            parts.append(np.asarray(vectors[pick], dtype=np.float32))
        return np.ascontiguousarray(np.concatenate(parts))

    def stage1_spans(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(token norms (N, T), span norms (N, P)) of every video when the index has them (see
        :func:`stage1_arrays`), else None."""
        if not self.manifest["stage1"].get("spans"):
            return None
        return (np.concatenate([s.stage1(TOKEN_NORMS) for s in self.shards]),
                np.concatenate([s.stage1(SPAN_NORMS) for s in self.shards]))

    def stage1_rows(self, videos: np.ndarray) -> dict[str, np.ndarray]:
        """The stage-1 arrays (``stage1_arrays``' keys) of index rows ``videos``, in that order."""
        return {k: v.numpy() for k, v in self._gather(videos, lambda shard, rows: {
            key: torch.from_numpy(np.ascontiguousarray(array[rows])) for key, array in shard.stage1_maps.items()
        }).items()}

    def encodings(self, videos: np.ndarray) -> Tensors:
        """The encodings of index rows ``videos`` (any order), in that order, padded to one frame length."""
        return self._gather(videos, lambda shard, rows: shard.rows(rows))

    def _gather(self, videos: np.ndarray, read: Callable[[Shard, np.ndarray], Tensors]) -> Tensors:
        """``read(shard, its ascending local rows)`` over the shards holding index rows ``videos``, put back
        in the order of ``videos`` (padded to one frame length)."""
        videos = np.asarray(videos, dtype=np.int64)
        order = np.argsort(videos, kind="stable")
        sorted_rows = videos[order]
        shard_of = np.searchsorted(self.shard_starts, sorted_rows, side="right") - 1
        parts: dict[str, list[torch.Tensor]] = {}
        for s in np.unique(shard_of):
            local = sorted_rows[shard_of == s] - self.shard_starts[s]
            for key, value in read(self.shards[s], local).items():
                parts.setdefault(key, []).append(value)
        gathered = {k: pad_cat(v) for k, v in parts.items()}
        inverse = torch.from_numpy(np.argsort(order, kind="stable"))
        return {k: v[inverse] for k, v in gathered.items()}

    def shard_encodings(self, shard: int) -> Tensors:
        """Every encoding of shard ``shard`` (for exhaustive scoring shard by shard)."""
        s = self.shards[shard]
        return {key: torch.from_numpy(np.array(array)) for key, array in s.arrays.items()}

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk: the whole index, and its stage-1 vectors (what a retriever holds in memory)."""
        stage1 = sum((self.folder / e["name"] / name).stat().st_size for e in self.manifest["shards"]
                     for name in e["files"] if name.startswith(STAGE1_KEY))
        return {"total": sum(e["bytes"] for e in self.manifest["shards"]), "stage1": stage1}


__all__ = ["MANIFEST", "Chunk", "CorpusIndex", "ModelIdentity", "append_chunks",
           "append_to_index", "build_index", "encode_corpus", "encoded_chunks", "model_identity", "pad_cat",
           "stage1_arrays", "stage1_vectors", "write_index"]
