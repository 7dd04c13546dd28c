"""A search's results folder: a local folder or ``s3://bucket/prefix`` (the S3 settings themselves are
``trainables/data/s3.py``'s, shared with the trials' data), in the form Ray Tune takes it, and the checks a
search's name and folder pass before anything is written."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainables.data.s3 import S3Uri, StorageSettings, is_s3
from trainables.errors import InputError


@dataclass(frozen=True)
class SearchStorage:
    """Where one search's Tune results and checkpoints go, in the form Ray Tune takes them."""

    uri: str  # the search's folder: /abs/path/<name> or s3://bucket/prefix/<name>
    storage_path: str  # RunConfig.storage_path: the parent folder (no scheme with a filesystem)
    filesystem: Any  # pyarrow filesystem for S3, None for a local folder

    @property
    def path(self) -> str:
        """The search's folder as Tune restores it (no scheme with a filesystem)."""
        return f"{self.storage_path}/{self.uri.rstrip('/').rsplit('/', 1)[-1]}"

    def child(self, name: str) -> SearchStorage:
        """The folder ``name`` of this one, as the storage of another Tune run (a search's confirmation)."""
        return SearchStorage(f"{self.uri.rstrip('/')}/{name}", self.path, self.filesystem)


#: what a search's or an ablation's name may hold: it becomes one folder under --storage (and S3 key part)
NAME_CHARS = "letters, digits, '-', '_' and '.', not starting with '.' (at most 100)"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_name(name: str) -> str:
    """``name`` if it is a safe single folder name (no ``/``, ``..``, absolute path or odd characters)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"--name {name!r} is not allowed: use {NAME_CHARS}")
    return name


def search_storage(storage: str, name: str, resume: bool, settings: StorageSettings | None = None) -> SearchStorage:
    """The folder of search ``name`` under ``storage`` (a local folder or ``s3://bucket/prefix``): an
    existing one is refused without ``resume`` and required with it; a missing bucket is refused; an
    unsafe ``name`` (see :func:`check_name`) is refused before anything is created."""
    check_name(name)
    if not is_s3(storage):
        if "://" in storage:
            raise InputError(f"storage {storage!r}: use a local folder or s3://bucket/prefix")
        root = Path(storage).expanduser().resolve()
        try:
            if not resume:  # reading a search (resume, report, export) creates nothing
                root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"storage {root} cannot be created: {exc.strerror}") from None
        if not resume:  # a folder Tune cannot write to fails here, not after Ray and the parent run started
            _check_writable(root)
        _check_exists(str(root / name), (root / name).exists(), name, str(root), resume)
        return SearchStorage(str(root / name), str(root), None)
    settings = settings or StorageSettings.from_env()
    uri = S3Uri.parse(storage)
    quick = replace(settings, max_attempts=2)  # a wrong endpoint fails in seconds, not after minutes of backoff
    try:
        quick.boto3_client().head_bucket(Bucket=uri.bucket)
    except Exception as exc:  # botocore's ClientError / EndpointConnectionError / NoCredentialsError
        raise InputError(f"storage {storage}: bucket {uri.bucket!r} is not reachable on "
                         f"{settings.describe()}: {str(exc).splitlines()[0]}") from None
    filesystem = settings.pyarrow_filesystem()
    from pyarrow import fs

    folder = uri.join(name)
    exists = filesystem.get_file_info(folder.path).type != fs.FileType.NotFound
    _check_exists(str(folder), exists, name, str(uri), resume)
    return SearchStorage(str(folder), uri.path, filesystem)


def _check_writable(root: Path) -> None:
    """Create and remove a file in ``root``: ``os.access`` says yes for root users and read-only mounts."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=root, prefix=".prvr-write-check-"):
            pass
    except OSError as exc:
        raise InputError(f"storage {root} is not writable: {exc.strerror or exc}") from None


def _check_exists(folder: str, exists: bool, name: str, root: str, resume: bool) -> None:
    if resume and not exists:
        raise InputError(f"nothing to resume: no search {name!r} in {root}")
    if not resume and exists:
        raise InputError(f"a search named {name!r} already exists in {root}; pass --resume to continue it "
                         f"or choose another --name")


__all__ = ["SearchStorage", "check_name", "search_storage"]
