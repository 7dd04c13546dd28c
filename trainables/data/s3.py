"""The S3 the project talks to: ``s3://bucket/key`` URIs and the settings (endpoint, region, retries) that
build every client of it.

One :class:`StorageSettings` builds everything that talks to S3: the boto3 client that moves a dataset's
feature shards (``trainables/data/remote.py``, on every node), the pyarrow filesystem Ray Tune writes a
search's checkpoints and results through (``tracking/storage.py``), and the environment of an MLflow
server whose artifacts go to S3. It works against AWS (no endpoint; credentials from the environment, a
profile or the instance role) and against an S3-compatible endpoint (``--s3-endpoint http://host:port``).

Credentials are never held by the settings: every process (driver, trial, tracking server) takes them
from its own AWS credential chain: the standard variables, a profile, or the instance role on a cluster.
That keeps them out of everything Ray pickles and stores (the tuner state, the trainable's parameters, the
pyarrow filesystem), and so out of S3, logs and MLflow. Transient errors (throttling, 5xx, dropped
connections) are retried with exponential backoff by both clients (``MAX_ATTEMPTS`` attempts) before
anything fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

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
                raise InputError(f"--s3-endpoint {_shown(endpoint)!r} must look like http://host:port or https://host")
            if "@" in parsed.netloc:  # it would be logged, printed and pickled with every S3 setting
                raise InputError(f"--s3-endpoint {_shown(endpoint)}: credentials in the endpoint are not "
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


def _shown(endpoint: str) -> str:
    """``endpoint`` as an error message may show it: as given, with ``***`` for any credentials before an
    ``@`` and without a query."""
    head = endpoint.split("?", 1)[0]
    if "@" not in head:
        return head
    scheme, sep, rest = head.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if sep else f"***@{head.rpartition('@')[2]}"


__all__ = ["CREDENTIAL_VARIABLES", "MAX_ATTEMPTS", "S3Uri", "StorageSettings", "is_s3"]
