"""The storage settings object against a real S3-compatible server (moto), directly and through a proxy
that injects throttling, 5xx and dropped connections."""

from __future__ import annotations

import argparse
import os
import pickle
import time

import pytest
from servers import TEST_ACCESS_KEY, TEST_SECRET_KEY, FlakyProxy, s3_env

from search.tracking_server import server_command
from tracking.storage import search_storage
from trainables.data.s3 import S3Uri, StorageSettings


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    for key, value in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    return s3_server


def test_settings_read_the_environment_and_never_hold_credentials(aws_env):
    settings = StorageSettings.from_env(endpoint=aws_env.endpoint + "/")
    assert settings.endpoint == aws_env.endpoint and settings.region == "us-east-1"
    # everything Ray pickles (the settings, the pyarrow filesystem) is free of the keys
    for blob in (pickle.dumps(settings), pickle.dumps(settings.pyarrow_filesystem())):
        assert TEST_ACCESS_KEY.encode() not in blob and TEST_SECRET_KEY.encode() not in blob
    assert settings.mlflow_server_env() == {"MLFLOW_S3_ENDPOINT_URL": aws_env.endpoint,
                                            "AWS_DEFAULT_REGION": "us-east-1"}
    client = settings.boto3_client()  # the keys come from the process's own chain, and work
    client.create_bucket(Bucket="chain-bucket")
    assert "chain-bucket" in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_settings_without_keys_leave_credentials_to_the_instance_role(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = StorageSettings.from_env(region="eu-west-1")
    assert settings.endpoint is None and settings.region == "eu-west-1"
    assert settings.mlflow_server_env() == {"AWS_DEFAULT_REGION": "eu-west-1"}


@pytest.mark.parametrize(("env", "endpoint", "fragment"), [
    ({"AWS_ACCESS_KEY_ID": "x"}, None, "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ({}, "127.0.0.1:9000", "must look like http://host:port"),
    ({}, "ftp://host", "must look like http://host:port"),
])
def test_bad_settings_are_one_line_errors(monkeypatch, env, endpoint, fragment):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=fragment):
        StorageSettings.from_env(endpoint=endpoint)


def test_s3_uris():
    uri = S3Uri.parse("s3://bucket/a/b/")
    assert (uri.bucket, uri.key, uri.path, str(uri.join("c"))) == ("bucket", "a/b", "bucket/a/b", "s3://bucket/a/b/c")
    for bad in ("bucket/a", "s3://", "s3://ab/x"):
        with pytest.raises(ValueError):
            S3Uri.parse(bad)


def test_pyarrow_filesystem_retries_throttling_5xx_and_dropped_connections(aws_env):
    aws_env.make_bucket("retry-bucket")
    blobs = {f"retry-bucket/obj{i}": os.urandom(4096 + i) for i in range(6)}
    with FlakyProxy(aws_env.endpoint, fail_every=3) as proxy:
        filesystem = StorageSettings.from_env(endpoint=proxy.endpoint).pyarrow_filesystem()
        for path, blob in blobs.items():
            with filesystem.open_output_stream(path) as handle:
                handle.write(blob)
        read = {path: filesystem.open_input_stream(path).read() for path in blobs}
    assert read == blobs
    assert {f"retry-bucket/{k}": v for k, v in aws_env.objects("retry-bucket").items()} == blobs
    assert proxy.failures >= 5  # failures were injected, and every one was retried


def test_boto3_client_retries_throttling_5xx_and_dropped_connections(aws_env):
    aws_env.make_bucket("retry-boto")
    with FlakyProxy(aws_env.endpoint, fail_every=2) as proxy:
        client = StorageSettings.from_env(endpoint=proxy.endpoint).boto3_client()
        for i in range(6):
            client.put_object(Bucket="retry-boto", Key=f"k{i}", Body=b"%d" % i)
        read = [client.get_object(Bucket="retry-boto", Key=f"k{i}")["Body"].read() for i in range(6)]
    assert read == [b"%d" % i for i in range(6)] and proxy.failures >= 6


def test_search_storage_on_s3_checks_the_bucket_and_the_search_folder(aws_env, tmp_path):
    aws_env.make_bucket("results-bucket")
    settings = StorageSettings.from_env(endpoint=aws_env.endpoint)
    storage = search_storage("s3://results-bucket/runs", "s1", resume=False, settings=settings)
    assert (storage.uri, storage.storage_path, storage.path) == \
        ("s3://results-bucket/runs/s1", "results-bucket/runs", "results-bucket/runs/s1")
    with pytest.raises(ValueError, match="nothing to resume: no search 's1'"):
        search_storage("s3://results-bucket/runs", "s1", resume=True, settings=settings)
    aws_env.client().put_object(Bucket="results-bucket", Key="runs/s1/experiment_state.json", Body=b"{}")
    with pytest.raises(ValueError, match="a search named 's1' already exists"):
        search_storage("s3://results-bucket/runs", "s1", resume=False, settings=settings)
    assert search_storage("s3://results-bucket/runs", "s1", resume=True,
                          settings=settings).path == "results-bucket/runs/s1"
    with pytest.raises(ValueError, match="bucket 'missing-bucket' is not reachable"):
        search_storage("s3://missing-bucket/runs", "s1", resume=False, settings=settings)
    with pytest.raises(ValueError, match="use a local folder or s3://bucket/prefix"):
        search_storage("gs://elsewhere", "s1", resume=False, settings=settings)
    local = search_storage(str(tmp_path / "local"), "s1", resume=False)
    assert local.filesystem is None and local.uri == str(tmp_path / "local" / "s1")


def test_tracking_server_command_is_lean_and_takes_s3_settings(aws_env, tmp_path):
    args = argparse.Namespace(backend_store_uri=None, artifacts="s3://bucket/mlflow", s3_endpoint=aws_env.endpoint,
                              host="127.0.0.1", port=5001)
    command, env = server_command(args)
    assert command[-2:] == ["--workers", "1"] and "s3://bucket/mlflow" in command
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and env["MLFLOW_S3_ENDPOINT_URL"] == aws_env.endpoint
    assert not any(TEST_SECRET_KEY in part for part in command)  # credentials only in the environment
    local, local_env = server_command(argparse.Namespace(**{**vars(args), "artifacts": str(tmp_path / "a")}))
    assert str(tmp_path / "a") in local and "MLFLOW_S3_ENDPOINT_URL" not in local_env
    with pytest.raises(ValueError, match="--artifacts 'gs://x'"):
        server_command(argparse.Namespace(**{**vars(args), "artifacts": "gs://x"}))


def test_newest_complete_checkpoint_is_found_on_s3_and_locally(aws_env, tmp_path):
    from pyarrow import fs

    from trainables.tune_checkpoints import newest_checkpoint

    aws_env.make_bucket("ckpt-bucket")
    s3 = StorageSettings.from_env(endpoint=aws_env.endpoint).pyarrow_filesystem()
    local = fs.LocalFileSystem()
    for filesystem, root in ((s3, "ckpt-bucket/search/trial_a"), (local, str(tmp_path / "trial_a"))):
        assert newest_checkpoint(filesystem, root) is None  # no folder at all
        filesystem.create_dir(f"{root}/checkpoint_000003")
        for name, payload in (("checkpoint_000001/checkpoint.pt", b"one"), ("checkpoint_000002/checkpoint.pt", b"two"),
                              ("checkpoint_000003/other.json", b"{}"), ("checkpoint_000004/checkpoint.pt", b"")):
            filesystem.create_dir(f"{root}/{name.split('/')[0]}")
            with filesystem.open_output_stream(f"{root}/{name}") as handle:
                handle.write(payload)
        # 3 has no checkpoint file and 4 an empty one: the newest complete checkpoint is 2
        assert newest_checkpoint(filesystem, root) == f"{root}/checkpoint_000002"
    time.sleep(1.1)  # S3 times have whole seconds
    for filesystem, root in ((s3, "ckpt-bucket/search/trial_a"), (local, str(tmp_path / "trial_a"))):
        # a trial resumed from an unrecorded checkpoint numbers its next ones from Tune's record again
        filesystem.create_dir(f"{root}/checkpoint_000000")
        with filesystem.open_output_stream(f"{root}/checkpoint_000000/checkpoint.pt") as handle:
            handle.write(b"later")
        assert newest_checkpoint(filesystem, root) == f"{root}/checkpoint_000000"


def test_a_gone_recorded_checkpoint_is_stood_in_for_by_the_newest_on_s3_and_locally(aws_env, tmp_path):
    """The restore fallback: the snapshot names checkpoint 4, whose folder Tune deleted whole (a local
    folder) or emptied; the trial's newest complete checkpoint (5) is copied in its place."""
    from pyarrow import fs

    from search.checkpoints import stand_in

    aws_env.make_bucket("stand-in")
    s3 = StorageSettings.from_env(endpoint=aws_env.endpoint).pyarrow_filesystem()
    for filesystem, root in ((s3, "stand-in/search/trial_a"), (fs.LocalFileSystem(), str(tmp_path / "trial_a"))):
        assert not stand_in(filesystem, f"{root}/checkpoint_000004")  # no checkpoint at all: start over
        filesystem.create_dir(f"{root}/checkpoint_000005")
        with filesystem.open_output_stream(f"{root}/checkpoint_000005/checkpoint.pt") as handle:
            handle.write(b"five")
        for gone in ("checkpoint_000004", "checkpoint_000003"):
            if gone == "checkpoint_000003":
                filesystem.create_dir(f"{root}/{gone}")  # a folder left without its file
            assert stand_in(filesystem, f"{root}/{gone}")
            with filesystem.open_input_stream(f"{root}/{gone}/checkpoint.pt") as handle:
                assert handle.read() == b"five"
        with filesystem.open_output_stream(f"{root}/checkpoint_000004/checkpoint.pt") as handle:
            handle.write(b"four")
        assert stand_in(filesystem, f"{root}/checkpoint_000004")  # complete: left as it is
        with filesystem.open_input_stream(f"{root}/checkpoint_000004/checkpoint.pt") as handle:
            assert handle.read() == b"four"


def test_a_checkpoint_cut_short_does_not_load(tmp_path):
    """A trial resuming from an unrecorded checkpoint passes over one a killed driver was still copying."""
    import torch

    from trainables.training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from trainables.tune_checkpoints import loads

    path = save_checkpoint({"format": CHECKPOINT_FORMAT, "model": {"w": torch.arange(4096.0)}}, tmp_path / "whole")
    assert loads(tmp_path / "whole")
    cut = tmp_path / "cut" / path.name
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not loads(cut.parent) and not loads(tmp_path / "missing")
