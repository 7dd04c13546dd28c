"""Sharded datasets on S3: upload a local dataset, read its manifest, fetch it into a per-node cache.

Layout on S3 is the local layout under a prefix: ``s3://bucket/prefix/<shard file>`` for every file the
manifest lists, and ``s3://bucket/prefix/manifest.json``. The manifest is uploaded last, so a manifest on
S3 means every shard it names is complete (a changed dataset first loses its old manifest).

A fetched dataset lives in ``<cache root>/<bucket>/<prefix>/<first 16 hex of the manifest's sha256>/``,
so a changed dataset never mixes with an old one. Each shard is downloaded at most once per node: under a
per-shard file lock, into a temporary file of the same folder, checked against the manifest's sha256 and
then renamed into place (atomic). A sidecar ``.<file>.verified`` records the size and mtime of a checked
file; a cached file whose sidecar no longer matches is hashed again and re-fetched when it is wrong.

A node that already holds a complete, verified version makes no GET at all: ``<cache root>/<bucket>/<prefix>/
.s3-manifest.json`` records the ETag and size of the manifest object it was fetched from and the version
folder it went into, so a later fetch sends one HEAD of the manifest and, when ETag and size are unchanged
(and the cached manifest and shards still check out locally), returns that folder. A changed manifest on S3
has another ETag and is fetched again. Without that record (or a server that sends no ETag) the manifest
is read with a GET as before.
Transient S3 errors are retried by the client that :class:`~trainables.data.s3.StorageSettings` builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from trainables.data.errors import DatasetError
from trainables.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, read_manifest, sha256_file
from trainables.data.s3 import S3Uri, StorageSettings
from trainables.errors import InputError

#: download attempts of a shard whose bytes do not match the manifest before giving up
DOWNLOAD_ATTEMPTS = 3
#: attempts of the bucket check: a wrong endpoint fails in seconds, not after minutes of backoff
BUCKET_CHECK_ATTEMPTS = 3
SHA256_METADATA = "sha256"
#: per prefix in the node cache: which manifest object (ETag, size) the cached version was fetched from
MANIFEST_RECORD = ".s3-manifest.json"


# -- locations -----------------------------------------------------------------------------------
def dataset_root(uri: str) -> S3Uri:
    """The dataset's prefix, given ``s3://bucket/prefix`` or ``s3://bucket/prefix/manifest.json``."""
    location = S3Uri.parse(uri)
    parts = location.key.split("/") if location.key else []
    if parts and parts[-1] == MANIFEST_NAME:
        parts = parts[:-1]
    return S3Uri(location.bucket, "/".join(parts))


def manifest_uri(uri: str) -> S3Uri:
    """Where the manifest of the dataset at ``uri`` (prefix or manifest URI) is."""
    return dataset_root(uri).join(MANIFEST_NAME)


def default_cache_root() -> Path:
    """``$PRVR_DATA_DIR/s3`` if that variable is set, else ``~/.cache/prvr/s3``."""
    env = os.environ.get("PRVR_DATA_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "prvr") / "s3"


def _prefix_folder(uri: str, cache_root: Path | None) -> Path:
    """``<root>/<bucket>/<prefix>``: where the node cache keeps the versions of the dataset at ``uri``."""
    root = dataset_root(uri)
    parts = [p for p in root.key.split("/") if p]
    bad = [p for p in parts if p in (".", "..")]
    if bad:
        raise InputError(f"{uri}: a prefix with a {bad[0]!r} component cannot be cached locally")
    base = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return base.joinpath(root.bucket, *parts)


def cache_folder(uri: str, manifest: Manifest, cache_root: Path | None = None) -> Path:
    """``<root>/<bucket>/<prefix>/<manifest sha256, 16 hex>``: the local folder of one dataset version."""
    return _prefix_folder(uri, cache_root) / manifest.sha256()[:16]


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- upload --------------------------------------------------------------------------------------
def _check_local(folder: Path, manifest: Manifest) -> list[tuple[ShardInfo, Path]]:
    """Every shard of the local dataset, each checked against the manifest's size and sha256."""
    checked = []
    for shard in manifest.shards:
        path = folder / shard.file
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in the manifest is missing")
        size = path.stat().st_size
        if size != shard.bytes:
            raise DatasetError(f"{path}: shard is {size} bytes, the manifest says {shard.bytes}; not uploading")
        digest = sha256_file(path)
        if digest != shard.sha256:
            raise DatasetError(f"{path}: sha256 {digest[:12]}... does not match the manifest's "
                               f"{shard.sha256[:12]}...; not uploading")
        checked.append((shard, path))
    return checked


def _check_bucket(client: Any, root: S3Uri, uri: str, settings: StorageSettings) -> None:
    """Refuse a missing or unreachable bucket with one line naming it."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=root.bucket)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise InputError(f"{uri}: bucket {root.bucket!r} does not exist on {settings.describe()}") from None
        raise InputError(f"{uri}: bucket {root.bucket!r} is not reachable on {settings.describe()}: "
                         f"{_first_line(exc)}") from None
    except BotoCoreError as exc:
        raise InputError(f"{uri}: bucket {root.bucket!r} is not reachable on {settings.describe()}: "
                         f"{_first_line(exc)}") from None


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """``head_object`` of ``key``, or None when there is no such object."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _already_there(client: Any, bucket: str, key: str, shard: ShardInfo) -> bool:
    """An object uploaded earlier with exactly this shard's size and sha256 (skipped on re-upload)."""
    head = _head(client, bucket, key)
    return (head is not None and head.get("ContentLength") == shard.bytes
            and head.get("Metadata", {}).get(SHA256_METADATA) == shard.sha256)


def upload_dataset(folder: Path, uri: str, settings: StorageSettings) -> str:
    """Upload the dataset in ``folder`` to ``s3://bucket/prefix`` and return its manifest URI.

    Every shard is first checked against the local manifest (a mismatch uploads nothing). Shards go up
    first (objects already there with the same size and sha256 are kept), the manifest last, so a
    manifest on S3 always names complete shards; an older, different manifest at the prefix is deleted
    before any shard is replaced.
    """
    from boto3.s3.transfer import TransferConfig

    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    local_manifest = folder / MANIFEST_NAME
    checked = _check_local(folder, manifest)
    root = dataset_root(uri)
    client = settings.boto3_client()
    quick = replace(settings, max_attempts=min(settings.max_attempts, BUCKET_CHECK_ATTEMPTS))
    _check_bucket(quick.boto3_client(), root, uri, settings)
    target = root.join(MANIFEST_NAME)
    if _head(client, target.bucket, target.key) is not None:
        old = client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read()
        if old != local_manifest.read_bytes():
            client.delete_object(Bucket=target.bucket, Key=target.key)
    transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    for shard, path in checked:
        key = root.join(shard.file).key
        if not _already_there(client, root.bucket, key, shard):
            client.upload_file(str(path), root.bucket, key, Config=transfer,
                               ExtraArgs={"Metadata": {SHA256_METADATA: shard.sha256}})
    client.upload_file(str(local_manifest), target.bucket, target.key, Config=transfer,
                       ExtraArgs={"ContentType": "application/json"})
    return str(target)


# -- manifest ------------------------------------------------------------------------------------
def _get_manifest(client: Any, uri: str) -> tuple[bytes, Manifest, str]:
    """The manifest's bytes as stored, the validated manifest of the dataset at ``uri`` and the ETag of the
    object those bytes came from ('' if none was sent)."""
    from botocore.exceptions import ClientError

    target = manifest_uri(uri)
    try:
        response = client.get_object(Bucket=target.bucket, Key=target.key)
        blob = response["Body"].read()
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound"):
            raise DatasetError(f"{uri}: no dataset manifest there") from None
        if code == "NoSuchBucket":
            raise DatasetError(f"{uri}: bucket {target.bucket!r} does not exist") from None
        raise DatasetError(f"{target}: cannot read the manifest: {_first_line(exc)}") from None
    try:
        raw = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{target}: manifest is not valid JSON ({exc})") from None
    return blob, Manifest.from_dict(raw, str(target)), str(response.get("ETag") or "")


def read_remote_manifest(uri: str, settings: StorageSettings) -> Manifest:
    """The validated manifest of the dataset at ``s3://bucket/prefix`` (or its ``manifest.json`` URI)."""
    return _get_manifest(settings.boto3_client(), uri)[1]


# -- fetch ---------------------------------------------------------------------------------------
def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file of the same folder and a rename (never half-written)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _stamp(path: Path, shard: ShardInfo) -> dict[str, Any]:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard.sha256}


def _trusted(path: Path, shard: ShardInfo) -> bool:
    """The cached file was verified and has not changed since (same size and mtime): no re-hash."""
    try:
        recorded = json.loads(_sidecar(path).read_text())
        return recorded == _stamp(path, shard) and recorded["bytes"] == shard.bytes
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _mark_verified(path: Path, shard: ShardInfo) -> None:
    _write_atomic(_sidecar(path), json.dumps(_stamp(path, shard)).encode())


def _cached_ok(path: Path, shard: ShardInfo) -> bool:
    """Trusted by its sidecar, or re-hashed and correct (then marked); a wrong file is removed."""
    if _trusted(path, shard):
        return True
    if not path.is_file():
        return False
    if path.stat().st_size == shard.bytes and sha256_file(path) == shard.sha256:
        _mark_verified(path, shard)
        return True
    path.unlink()
    _sidecar(path).unlink(missing_ok=True)
    return False


def _download_shard(client: Any, root: S3Uri, uri: str, shard: ShardInfo, path: Path) -> None:
    """Download one shard into ``path`` (through a temp file and a rename), verified; 3 attempts."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    key = root.join(shard.file).key
    transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    digest = ""
    for _ in range(DOWNLOAD_ATTEMPTS):
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            client.download_file(root.bucket, key, str(temp), Config=transfer)
            digest = sha256_file(temp)
            if digest == shard.sha256:
                os.replace(temp, path)
                _mark_verified(path, shard)
                return
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise DatasetError(f"{shard.file}: listed in the manifest of {uri} but missing on S3 "
                                   f"({root.join(shard.file)})") from None
            raise DatasetError(f"{shard.file}: cannot download {root.join(shard.file)}: "
                               f"{_first_line(exc)}") from None
        except BotoCoreError as exc:
            raise DatasetError(f"{shard.file}: cannot download {root.join(shard.file)}: "
                               f"{_first_line(exc)}") from None
        finally:
            temp.unlink(missing_ok=True)
    raise DatasetError(f"{shard.file}: download from {uri} stays corrupt after {DOWNLOAD_ATTEMPTS} attempts "
                       f"(sha256 expected {shard.sha256[:12]}..., got {digest[:12]}...)")


def _remove_leftovers(path: Path) -> None:
    """Temp files of downloads that were killed (only called under the shard's lock)."""
    for leftover in path.parent.glob(f".{path.name}.*.part*"):
        leftover.unlink(missing_ok=True)


def _ensure_shard(client: Any, root: S3Uri, uri: str, shard: ShardInfo, folder: Path) -> None:
    """Make ``folder/<shard>`` a verified copy; at most one process of the node downloads it."""
    path = folder / shard.file
    if _trusted(path, shard):
        return
    with FileLock(str(folder / f".{shard.file}.lock")):
        if _cached_ok(path, shard):  # another process fetched it while we waited, or it was only unmarked
            return
        _remove_leftovers(path)
        _download_shard(client, root, uri, shard, path)


def _record_path(uri: str, cache_root: Path | None) -> Path:
    """Where the node cache records the manifest object of the dataset at ``uri`` (next to its versions)."""
    return _prefix_folder(uri, cache_root) / MANIFEST_RECORD


def _cached_version(client: Any, uri: str, cache_root: Path | None) -> tuple[Path, Manifest] | None:
    """The cached version of ``uri`` when S3's manifest object is the one it was fetched from, else None.

    One HEAD of the manifest (ETag and size against the record); the cached manifest's bytes must still
    hash to what the record says. Any doubt (no record, no ETag, an error) answers None: fetch normally.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    record_file = _record_path(uri, cache_root)
    try:
        record = json.loads(record_file.read_text())
        etag, size, version, digest = (record[k] for k in ("etag", "bytes", "version", "sha256"))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not etag:
        return None
    target = manifest_uri(uri)
    try:
        head = client.head_object(Bucket=target.bucket, Key=target.key)
    except (ClientError, BotoCoreError):  # the GET that follows reports the problem precisely
        return None
    if head.get("ETag") != etag or head.get("ContentLength") != size:
        return None
    local = record_file.parent / str(version) / MANIFEST_NAME
    try:
        blob = local.read_bytes()
        manifest = Manifest.from_dict(json.loads(blob), str(local))
    except (OSError, ValueError, DatasetError):
        return None
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != digest:
        return None
    folder = cache_folder(uri, manifest, cache_root)
    return (folder, manifest) if folder == local.parent else None


def _write_record(uri: str, cache_root: Path | None, folder: Path, blob: bytes, etag: str) -> None:
    record = {"etag": etag, "bytes": len(blob), "version": folder.name, "sha256": hashlib.sha256(blob).hexdigest()}
    _write_atomic(_record_path(uri, cache_root), json.dumps(record).encode())


def fetch_dataset(uri: str, settings: StorageSettings, cache_root: Path | None = None) -> Path:
    """The local folder of the dataset at ``uri``: manifest.json and every shard, verified, cached per node.

    Safe when several processes of one node ask at once: each shard is downloaded once, under a file
    lock; later calls trust files whose size and mtime are unchanged since they were verified. A node
    that already holds the version S3's manifest names makes one HEAD request and no GET.
    """
    client = settings.boto3_client()
    root = dataset_root(uri)
    cached = _cached_version(client, uri, cache_root)
    if cached is not None:
        folder, manifest = cached
        for shard in manifest.shards:  # stat only, unless a file changed since it was verified
            _ensure_shard(client, root, uri, shard, folder)
        return folder
    blob, manifest, etag = _get_manifest(client, uri)
    folder = cache_folder(uri, manifest, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    for shard in manifest.shards:
        _ensure_shard(client, root, uri, shard, folder)
    local_manifest = folder / MANIFEST_NAME
    if not local_manifest.is_file() or local_manifest.read_bytes() != blob:
        _write_atomic(local_manifest, blob)
    if etag:
        _write_record(uri, cache_root, folder, blob, etag)
    return folder


__all__ = ["fetch_dataset", "read_remote_manifest", "upload_dataset"]
