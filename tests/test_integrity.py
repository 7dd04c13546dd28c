"""Issue 21: hostile and careless input that went unseen (corrupted local data, credentials in URIs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_search import CONFIRMATION_OFF, _command

BASE = "backbone: mssl\nhidden_size: 16\nn_heads: 2\n"


def _corrupted_copy(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the ``tiny`` preset with one byte of a video shard changed (the size is the same)."""
    from trainables.data.manifest import read_manifest
    from trainables.data.synthetic import ensure_synthetic

    folder = tmp_path / "ds"
    shutil.copytree(ensure_synthetic("tiny", cache_dir=tmp_path / "cache"), folder)
    shard = folder / read_manifest(folder).shards_of("videos")[0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return folder, shard.name


@pytest.mark.parametrize("cli", ["run", "ablate"])
def test_a_corrupted_local_dataset_is_refused_before_ray(tmp_path, run_cli_without_ray, cli):
    # issue 21 item 4: same-size changed bytes trained and exited 0 (only sizes were checked)
    import importlib

    folder, shard = _corrupted_copy(tmp_path)
    main = importlib.import_module(f"search.{cli}").main
    if cli == "run":
        args = _command(tmp_path, "--validate-samples", "5", *CONFIRMATION_OFF)[2:]
    else:
        (tmp_path / "base.yaml").write_text(BASE)
        args = ["--storage", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--base", "base.yaml", "--components", "ral"]
    result = run_cli_without_ray(main, *args, "--data", str(folder), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert f"{folder / shard}: sha256" in lines[0] and "does not match the manifest" in lines[0], lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


# -- issue 21 item 2: credentials in URIs ------------------------------------------------------
USER, PASSWORD, TOKEN = "alice-user-7f3", "Pa55-WORD-9c1e", "tok-SECRET-4d2a"


@pytest.mark.parametrize(("uri", "expected"), [
    (f"http://{USER}:{PASSWORD}@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
    (f"https://{USER}:{PASSWORD}@host/path?x=1#frag", "https://***@host/path?x=1#frag"),
    (f"http://{USER}@host:1", "http://***@host:1"),
    (f"http://{USER}:p%40ss{PASSWORD}@host", "http://***@host"),  # an escaped @ in the password
    (f"http://u:{PASSWORD}@x@host", "http://***@host"),  # a raw @ in the password: the last @ ends it
    (f"s3://bucket/key?X-Amz-Signature={TOKEN}&X-Amz-Credential={TOKEN}&part=2",
     "s3://bucket/key?X-Amz-Signature=***&X-Amz-Credential=***&part=2"),
    (f"http://host/?token={TOKEN}&access_token={TOKEN}&password={TOKEN}&apikey={TOKEN}&page=3",
     "http://host/?token=***&access_token=***&password=***&apikey=***&page=3"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("plain text, no uri", "plain text, no uri"),
])
def test_redact_uri(uri, expected):
    from tracking.redact import redact_text, redact_uri

    assert redact_uri(uri) == expected
    assert redact_uri(expected) == expected  # idempotent
    text = f"python search/run.py --tracking-uri {uri} --storage 'x' --s3-endpoint={uri}"
    redacted = redact_text(text)
    assert redacted == f"python search/run.py --tracking-uri {expected} --storage 'x' --s3-endpoint={expected}"
    for secret in (PASSWORD, TOKEN):
        assert secret not in redacted


def test_use_tracking_uri_moves_userinfo_to_mlflow_variables(monkeypatch):
    from tracking.redact import use_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert use_tracking_uri(f"http://{USER}:p%40{PASSWORD}@127.0.0.1:5000/p") == "http://127.0.0.1:5000/p"
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == USER and os.environ["MLFLOW_TRACKING_PASSWORD"] == f"p@{PASSWORD}"
    assert use_tracking_uri("sqlite:////x/m.db") == "sqlite:////x/m.db" and use_tracking_uri(None) is None
    with pytest.raises(ValueError) as caught:
        use_tracking_uri(f"http://host/?token={TOKEN}")
    assert TOKEN not in str(caught.value) and "MLFLOW_TRACKING_TOKEN" in str(caught.value)


def test_without_credentials_covers_every_spelling_and_sys_argv(monkeypatch):
    import sys

    from search.cli import without_credentials

    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:5000"
    monkeypatch.setattr(sys, "argv", ["run.py", "--tracking-uri", uri, "--s3-endpoint", uri])
    for argv, expected in [(["--tracking-uri", uri], ["--tracking-uri", "http://127.0.0.1:5000"]),
                           ([f"--tracking-uri={uri}"], ["--tracking-uri=http://127.0.0.1:5000"]),
                           (["--tracking", uri], ["--tracking", "http://127.0.0.1:5000"])]:  # argparse prefix
        assert without_credentials(argv) == expected
    assert PASSWORD not in " ".join(sys.argv) and USER not in " ".join(sys.argv)


@pytest.mark.parametrize(("option", "uri", "fragment"), [
    ("--s3-endpoint", f"http://{USER}:{PASSWORD}@127.0.0.1:9", "AWS_ACCESS_KEY_ID"),
    ("--tracking-uri", f"http://127.0.0.1:9/?token={TOKEN}", "MLFLOW_TRACKING_TOKEN"),
])
def test_credentials_that_cannot_be_moved_are_refused_without_echoing_them(tmp_path, run_cli_without_ray, option,
                                                                           uri, fragment):
    from search.run import main

    args = _command(tmp_path, "--validate-samples", "5", *CONFIRMATION_OFF)[2:]
    result = run_cli_without_ray(main, *args, option, uri, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert fragment in lines[0] and "***" in lines[0], lines[0]
    assert PASSWORD not in result.stderr + result.stdout and TOKEN not in result.stderr + result.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


# a real search (killed and resumed) with credentials in --tracking-uri, through a proxy that records the
# Authorization header: tests/test_remote_search.py::test_search_on_s3_and_a_tracking_server_survives_a_killed_driver
# checks they are in no output, param, tag, file, object, store or server log, and that every request carried them


def test_a_failed_parent_runs_error_tag_carries_no_uri_credentials(tmp_path):
    """fail_parent stores the error's first line as a tag: URIs in it are redacted like every param and tag."""
    from mlflow.tracking import MlflowClient

    from tracking.mlflow_runs import fail_parent, start_parent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = start_parent(uri, "prvr", "failing", "base", params={}, tags={}, resume=False)
    error = RuntimeError("cannot reach http://alice:Pa55-WORD-9c1e@127.0.0.1:5000/api")
    assert fail_parent(tracking, error)
    run = MlflowClient(tracking_uri=uri).get_run(tracking.parent_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: cannot reach http://***@127.0.0.1:5000/api"
