"""The manifest of a sharded PRVR dataset: what the shards hold and how to check them.

On-disk format (version 1), one folder per dataset::

    manifest.json          this file's content (see ``Manifest``)
    videos-00000.h5 ...    video shards: ``ids`` (str, n), ``offsets`` (int64, n+1),
                           ``features`` (sum of frames x video_dim, float16/float32);
                           video i's frames are ``features[offsets[i]:offsets[i+1]]``
    queries-00000.h5 ...   query shards: ``ids``, ``video_ids``, ``text`` (str, n),
                           ``offsets`` (int64, n+1), ``tokens`` (sum of tokens x query_dim),
                           optional ``sentence`` (n x sentence_dim): an external sentence feature
    splits.h5              one str dataset per split name: the query ids of that split
    <extras>               optional files (e.g. the synthetic benchmark's latent annotations)

Every file except the manifest is listed in it with its size and sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainables.data.errors import DatasetError

FORMAT_NAME = "prvr-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS_FILE = "splits.h5"
SHARD_KINDS = ("videos", "queries", "splits", "extra")
DTYPES = ("float16", "float32")


@dataclass
class ShardInfo:
    """One file of the dataset, with what is needed to check it."""

    file: str
    kind: str
    count: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    """Size of one split (the query ids themselves live in ``splits.h5``)."""

    num_queries: int
    num_videos: int


@dataclass
class Manifest:
    """Dims, counts, splits and checksums of a sharded dataset."""

    name: str
    video_dim: int
    query_dim: int
    dtype: str
    num_videos: int
    num_queries: int
    num_frames: int
    num_tokens: int
    l2_normalize: bool
    splits: dict[str, SplitInfo]
    shards: list[ShardInfo]
    sentence_dim: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    #: queries/videos val shares with test (``split_overlap.SplitOverlap.to_dict``), None if not recorded
    val_test_overlap: dict[str, int] | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def shards_of(self, kind: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def sha256(self) -> str:
        """Hash of the manifest's content: identifies the exact data a run used."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Manifest:
        """Parse and validate a manifest read from ``where`` (named in every error)."""
        if not isinstance(raw, dict):
            raise DatasetError(f"{where}: manifest must be a JSON object")
        if raw.get("format") != FORMAT_NAME:
            raise DatasetError(f"{where}: not a {FORMAT_NAME} manifest (format={raw.get('format')!r})")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"{where}: unknown format_version {version!r} (this reader knows {FORMAT_VERSION})"
            )
        try:
            manifest = cls(
                name=str(raw["name"]),
                video_dim=int(raw["video_dim"]),
                query_dim=int(raw["query_dim"]),
                dtype=str(raw["dtype"]),
                num_videos=int(raw["num_videos"]),
                num_queries=int(raw["num_queries"]),
                num_frames=int(raw["num_frames"]),
                num_tokens=int(raw["num_tokens"]),
                l2_normalize=bool(raw["l2_normalize"]),
                splits={k: SplitInfo(**v) for k, v in raw["splits"].items()},
                shards=[ShardInfo(**s) for s in raw["shards"]],
                sentence_dim=None if raw.get("sentence_dim") is None else int(raw["sentence_dim"]),
                source=dict(raw.get("source") or {}),
                val_test_overlap=None if raw.get("val_test_overlap") is None
                else {str(k): int(v) for k, v in raw["val_test_overlap"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if manifest.dtype not in DTYPES:
            raise DatasetError(f"{where}: dtype {manifest.dtype!r} is not one of {DTYPES}")
        bad = [s.file for s in manifest.shards if s.kind not in SHARD_KINDS]
        if bad:
            raise DatasetError(f"{where}: shards {bad} have an unknown kind (known: {SHARD_KINDS})")
        for shard in manifest.shards:
            if Path(shard.file).name != shard.file or shard.file in ("", ".", ".."):
                raise DatasetError(f"{where}: shard file {shard.file!r} must be a plain file name")
        return manifest


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(location: str | Path) -> Path:
    """The manifest of a dataset given its folder or the manifest file itself."""
    path = Path(location).expanduser()
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(location: str | Path) -> Manifest:
    """Read and validate the manifest at ``location`` (a dataset folder or its manifest.json)."""
    path = manifest_path(location)
    if not path.is_file():
        raise DatasetError(f"{path}: no dataset manifest there")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: manifest is not valid JSON ({exc})") from None
    return Manifest.from_dict(raw, str(path))
