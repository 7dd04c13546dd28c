"""Real servers for tests, on 127.0.0.1 and free ports, started and stopped by the tests themselves:
an S3-compatible server (moto in server mode), a proxy in front of it that injects transient failures,
and an MLflow tracking server whose artifacts go to a bucket on the moto server (the launchers and the
proxy are ``benchmarks/local_servers.py``'s, shared with the benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from benchmarks.local_servers import ForwardingProxy, free_port, start_moto, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]
#: credentials only the tests use; a test greps everything that was logged for them
TEST_ACCESS_KEY = "AKIAPRVRTESTKEY4242"
TEST_SECRET_KEY = "prvr-test-secret-9f3b2c7d1e"
REGION = "us-east-1"


def s3_env(endpoint: str) -> dict[str, str]:
    """What a process needs to reach the test S3: endpoint, region, the test credentials, no EC2 metadata."""
    return {"AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_S3": endpoint}


@dataclass
class S3Server:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, with its content (one deleted while listing is left out)."""
        client = self.client()
        out = {}
        for key in self.keys(bucket, prefix):
            try:
                out[key] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey:
                pass
        return out


@contextmanager
def moto_server() -> Iterator[S3Server]:
    """moto's S3 in server mode (its own process: Ray trials and MLflow servers reach it over HTTP)."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    env = {k: v for k, v in s3_env("").items() if k != "AWS_ENDPOINT_URL_S3"}  # moto's own credentials
    process, endpoint = start_moto(env, timeout=30)
    try:
        yield S3Server(endpoint)
    finally:
        stop(process)


class FlakyProxy(ForwardingProxy):
    """A proxy to ``target`` that answers some requests with a transient failure: 503 SlowDown
    (throttling), 500, or a dropped connection. ``fail_every=n`` fails every n-th request (0: none);
    ``mode`` (``drop``, 503 or 500) forces one kind. Records each request's Authorization header."""

    def __init__(self, target: str, fail_every: int = 3) -> None:
        super().__init__(target)
        self.fail_every = fail_every
        self.requests = 0
        self.failures = 0
        self.mode: str | int | None = None
        self.authorization: list[str | None] = []  # each request's Authorization header
        self._lock = threading.Lock()

    def intercept(self, handler: BaseHTTPRequestHandler) -> bool:
        with self._lock:
            self.requests += 1
            self.authorization.append(handler.headers.get("Authorization"))
            fail = self.fail_every > 0 and self.requests % self.fail_every == 0
            kind = self.requests % (3 * self.fail_every) if fail else -1
            if fail:
                self.failures += 1
        if not fail:
            return False
        if self.mode is not None:
            kind = 0 if self.mode == "drop" else (self.fail_every if self.mode == 503 else 1)
        if kind == 0:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return True
        status = 503 if kind == self.fail_every else 500
        code = "SlowDown" if status == 503 else "InternalError"
        payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        return True


@dataclass
class MlflowServer:
    uri: str
    database: Path


@contextmanager
def mlflow_server(folder: Path, s3: S3Server, bucket: str, prefix: str = "mlflow") -> Iterator[MlflowServer]:
    """``mlflow server`` with a SQLite backend and artifacts proxied to ``s3://bucket/prefix`` on ``s3``,
    started by ``search/tracking_server.py`` (the stack notes' lean flags: 2 processes, ~0.5 GB)."""
    port = free_port()
    database = folder / "mlflow-server.db"
    env = {**os.environ, **s3_env(s3.endpoint)}
    log = open(folder / "mlflow-server.log", "w")
    process = subprocess.Popen(  # the project's own command: lean flags, S3 settings from StorageSettings
        [sys.executable, str(ROOT / "search/tracking_server.py"), "--backend-store-uri", f"sqlite:///{database}",
         "--artifacts", f"s3://{bucket}/{prefix}", "--s3-endpoint", s3.endpoint, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=folder)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, process)
        yield MlflowServer(f"http://127.0.0.1:{port}", database)
    finally:
        stop(process)
        log.close()


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's little-endian hex address as text (IPv4, or IPv6 with v4-mapped shown as v4)."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    text = socket.inet_ntop(socket.AF_INET6, words)
    return text.removeprefix("::ffff:")


def listening_hosts(root: int) -> set[str]:
    """The addresses that ``root`` and its descendant processes accept TCP connections on."""
    inodes = set()
    for pid in _descendants(root):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes.update(link[len("socket:["):-1] for link in links if link.startswith("socket:["))
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN, one of our sockets
                hosts.add(_address(fields[1].split(":")[0]))
    return hosts
