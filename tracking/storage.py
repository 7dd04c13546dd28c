"""Where results, checkpoints and feature shards live: a local folder or ``s3://bucket/prefix``.

One :class:`StorageSettings` (endpoint, region, credentials) builds everything that talks to S3: the
pyarrow filesystem Ray Tune writes checkpoints and results through, the boto3 client that moves feature
shards, and the environment of an MLflow server whose artifacts go to S3. It works against AWS (no
endpoint; credentials from the environment, a profile or the instance role) and against an
S3-compatible endpoint (``--s3-endpoint http://host:port``).

Credentials are never held by the settings: every process (driver, trial, tracking server) takes them
from its own AWS credential chain: the standard variables, a profile, or the instance role on a cluster.
That keeps them out of everything Ray pickles and stores (the tuner state, the trainable's parameters, the
pyarrow filesystem), and so out of S3, logs and MLflow. Transient errors (throttling, 5xx, dropped connections) are
retried with exponential backoff by
both clients (``MAX_ATTEMPTS`` attempts) before anything fails.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tracking.redact import redact_uri
from trainables.errors import InputError

MAX_ATTEMPTS = 8
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``, split."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InputError(f"{uri!r} is not an s3://bucket/prefix URI")
        if len(parsed.netloc) < 3:
            raise InputError(f"{uri!r}: bucket names have at least 3 characters")
        return cls(parsed.netloc, parsed.path.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        return S3Uri(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/")))

    @property
    def path(self) -> str:
        """``bucket/key``: how pyarrow (and Ray with a filesystem object) names it, without a scheme."""
        return f"{self.bucket}/{self.key}".rstrip("/")

    def __str__(self) -> str:
        return f"s3://{self.path}"


def is_s3(location: str | os.PathLike[str]) -> bool:
    return str(location).startswith("s3://")


@dataclass(frozen=True)
class StorageSettings:
    """Endpoint and region of the S3 the project talks to (credentials: each process's own AWS chain)."""

    endpoint: str | None = None
    region: str | None = None
    max_attempts: int = MAX_ATTEMPTS

    @classmethod
    def from_env(cls, endpoint: str | None = None, region: str | None = None) -> StorageSettings:
        """Settings from ``endpoint`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), ``region`` (or
        ``AWS_REGION`` / ``AWS_DEFAULT_REGION``); a half-set pair of credential variables is refused."""
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint is not None:
            parsed = urlparse(endpoint)
            if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
                raise InputError(f"--s3-endpoint {redact_uri(endpoint)!r} must look like http://host:port or https://host")
            if "@" in parsed.netloc:  # it would be logged, printed and pickled with every S3 setting
                raise InputError(f"--s3-endpoint {redact_uri(endpoint)}: credentials in the endpoint are not "
                                 f"accepted (they would be logged); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            endpoint = f"{parsed.scheme}://{parsed.netloc}"
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        access, secret = (os.environ.get(name) or None for name in CREDENTIAL_VARIABLES[:2])
        if (access is None) != (secret is None):
            raise InputError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (instance role)")
        return cls(endpoint, region or ("us-east-1" if endpoint else None))

    def boto3_client(self) -> Any:
        """An S3 client with standard retries (throttling, 5xx, connection errors) and backoff."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": self.max_attempts, "mode": "standard"},
                        connect_timeout=10, read_timeout=60, s3={"addressing_style": "path"} if self.endpoint else None)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=self.region,
                                              config=config)

    def pyarrow_filesystem(self) -> Any:
        """The pyarrow S3 filesystem Ray Tune's ``storage_path`` goes through (paths without a scheme)."""
        from pyarrow import fs

        options: dict[str, Any] = {"region": self.region,
                                   "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts)}
        if self.endpoint is not None:  # pyarrow ignores AWS_ENDPOINT_URL_S3: pass it explicitly
            parsed = urlparse(self.endpoint)
            options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        return fs.S3FileSystem(**{k: v for k, v in options.items() if v is not None})

    def mlflow_server_env(self) -> dict[str, str]:
        """Environment of an ``mlflow server --artifacts-destination s3://...`` that stores artifacts here
        (the server proxies artifacts, so its clients need no S3 access; it takes credentials from its own
        AWS chain)."""
        env = {"MLFLOW_S3_ENDPOINT_URL": self.endpoint} if self.endpoint else {}
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env

    def describe(self) -> str:
        """Where this points, without credentials."""
        return f"S3 at {self.endpoint or 'AWS'} (region {self.region or 'default'})"


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


__all__ = ["MAX_ATTEMPTS", "S3Uri", "SearchStorage", "StorageSettings", "is_s3", "search_storage"]
