"""Start an MLflow tracking server that searches log to (``--tracking-uri http://host:port``), lean.

    python search/tracking_server.py                                    # SQLite + artifacts in ./mlartifacts
    python search/tracking_server.py --artifacts s3://bucket/mlflow     # artifacts in S3 (cluster head node)
    python search/tracking_server.py --artifacts s3://bucket/mlflow --s3-endpoint http://127.0.0.1:9000
    python search/tracking_server.py --backend-store-uri sqlite:///$PWD/mlflow.db  # the UI on a search's local store

The server proxies artifacts, so trials and users need no S3 access of their own; its S3 settings come
from ``trainables.data.s3.StorageSettings`` (endpoint, region, credentials from the environment or the
instance role). One worker and no job execution: 2 processes and about 0.5 GB instead of MLflow's
default 15 processes and 3 GB. Binds 127.0.0.1 unless ``--host`` says otherwise; reach it from another
machine through an SSH port forward. A search prints this command for its local store, and links to its
parent run and its trials table on this server (``tracking.mlflow_runs.ui_lines``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from search.cli import run_main
from trainables.data.s3 import S3Uri, StorageSettings, is_s3
from trainables.errors import InputError

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search/tracking_server.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend-store-uri", default=None, help="default: sqlite:///<working folder>/mlflow-server.db")
    p.add_argument("--artifacts", default="mlartifacts", help="a local folder or s3://bucket/prefix")
    p.add_argument("--s3-endpoint", default=None, help="an S3-compatible endpoint (http://host:port) instead of AWS")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    return p


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and its environment (checked: a bad option raises one line)."""
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is out of range")
    env = dict(LEAN_ENV)
    if is_s3(args.artifacts):
        S3Uri.parse(args.artifacts)
        env.update(StorageSettings.from_env(endpoint=args.s3_endpoint).mlflow_server_env())
        artifacts = args.artifacts
    elif "://" in args.artifacts:
        raise InputError(f"--artifacts {args.artifacts!r}: use a local folder or s3://bucket/prefix")
    else:
        artifacts = str(Path(args.artifacts).expanduser().resolve())
    backend = args.backend_store_uri or f"sqlite:///{Path('mlflow-server.db').resolve()}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
               "--artifacts-destination", artifacts, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    return command, env


def main(argv: list[str] | None = None) -> int:
    command, env = server_command(_parser().parse_args(argv))
    print(f"MLflow server on http://{command[command.index('--host') + 1]}:{command[command.index('--port') + 1]} "
          f"(artifacts: {command[command.index('--artifacts-destination') + 1]})", flush=True)
    os.execve(command[0], command, {**os.environ, **env})  # the server replaces this process: signals reach it
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
