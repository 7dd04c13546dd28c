"""Local servers the tests and the benchmarks start and stop themselves, on 127.0.0.1 and free ports:
moto's S3 in server mode and an HTTP proxy in front of a server (which the tests' proxy makes fail on
purpose and the data-path benchmark makes count). Standard library only; nothing here is the product."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until ``url`` answers; RuntimeError when ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url}: server not ready after {timeout}s")


def stop(process: subprocess.Popen) -> None:
    """Stop a server this process started in its own process group (by its PID), and nothing else."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def start_moto(env: dict[str, str], log: IO[Any] | int = subprocess.DEVNULL,
               timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """moto's S3 in server mode (its own process group) with ``env`` (credentials, region); returns the
    process and its endpoint once it answers."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, **env})
    try:
        wait_http(f"{endpoint}/moto-api/", timeout, process)
    except BaseException:
        stop(process)
        raise
    return process, endpoint


class ForwardingProxy:
    """An HTTP/1.1 proxy to ``target`` (``host:port``, or ``http://host:port``) on a free local port. A
    subclass may answer a request itself (``intercept``: return True when it did) and sees every answered
    request (``observe``: method, path, headers, response body bytes). Serves from ``start`` to ``close``
    (also a context manager)."""

    def __init__(self, target: str) -> None:
        self.target = target.removeprefix("http://")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)

            def _handle(self) -> None:
                body = self._body()
                if proxy.intercept(self):
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "transfer-encoding", "expect")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                proxy.observe(self.command, self.path.split("?")[0], dict(self.headers.items()), len(data))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def intercept(self, handler: BaseHTTPRequestHandler) -> bool:
        """Answer ``handler``'s request here instead of forwarding it (True when it did)."""
        return False

    def observe(self, method: str, path: str, headers: dict[str, str], response_bytes: int) -> None:
        """Called for every forwarded request once its answer is read."""

    def start(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ForwardingProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["ForwardingProxy", "free_port", "start_moto", "stop", "wait_http"]
