"""Which trial failures Ray retries (infrastructure) and which fail the trial once (its own), where a search
on a cluster sends its trials' tracking, and what a trial's device and a local Ray's GPUs are."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.ray_session import single_machine_warnings
from search.tuning import ray_resources
from trainables.failures import describe, is_infrastructure_error
from trainables.training.loop import NonFiniteLoss
from trainables.trial import device_for

ROOT = Path(__file__).resolve().parents[1]


def raised(make):
    """The exception ``make()`` raises, with its real ``__cause__``/``__context__`` chain."""
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the point is to catch it
        return exc
    raise AssertionError("nothing raised")


def refused_connection() -> None:
    with socket.socket() as probe:  # a port nothing listens on: the OS refuses the connection
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=2)


def mlflow_to_a_dead_server() -> None:
    from mlflow.exceptions import MlflowException

    try:
        refused_connection()
    except OSError as exc:
        raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed") from exc


def boto_to_a_dead_endpoint() -> None:
    import boto3
    from botocore.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="y", config=Config(retries={"max_attempts": 1})).list_buckets()


def own_error_while_handling_io() -> None:
    try:
        refused_connection()
    except OSError:
        raise ValueError("bad setting") from None  # ``from None``: not an I/O failure any more


@pytest.mark.parametrize("make", [refused_connection, mlflow_to_a_dead_server, boto_to_a_dead_endpoint,
                                  lambda: open("/nonexistent/prvr/file")])
def test_io_errors_are_infrastructure_and_retried(make):
    assert is_infrastructure_error(raised(make))


def test_ray_errors_are_infrastructure():
    from ray.exceptions import ActorDiedError, RayTaskError

    assert is_infrastructure_error(ActorDiedError())
    assert is_infrastructure_error(RayTaskError("remote_step", "Traceback ...", ConnectionError("lost")))
    try:  # a library wrapping Ray's error: found in the chain
        try:
            raise ActorDiedError()
        except ActorDiedError as exc:
            raise RuntimeError("trial lost its worker") from exc
    except RuntimeError as wrapped:
        assert is_infrastructure_error(wrapped)


@pytest.mark.parametrize("make", [
    lambda: (_ for _ in ()).throw(NonFiniteLoss("epoch 2, batch 1: loss term 'total' is nan")),
    lambda: torch.zeros(2, 3) @ torch.zeros(2, 3),  # a shape bug: RuntimeError
    lambda: {}["missing"],
    lambda: int("not a number"),
    own_error_while_handling_io,
])
def test_the_trials_own_errors_are_not_retried(make):
    assert not is_infrastructure_error(raised(make))


def test_describe_is_the_type_and_the_first_line():
    assert describe(ValueError("lr must be > 0\nmore detail")) == "ValueError: lr must be > 0"
    assert describe(KeyError()) == "KeyError"


@pytest.mark.parametrize(("requested", "gpus", "cuda", "device"), [
    ("auto", 0.25, True, "cuda"), ("auto", 0.0, True, "auto"), ("auto", 1.0, False, "auto"),
    ("cpu", 1.0, True, "cpu"), ("cuda:1", 0.0, True, "cuda:1")])
def test_a_trial_uses_the_gpu_ray_assigned(requested, gpus, cuda, device):
    assert device_for(requested, gpus, cuda) == device


def test_a_results_folder_only_the_driver_machine_has_is_warned_about():
    assert single_machine_warnings("s3://bucket/searches") == []
    warnings = single_machine_warnings("/home/me/prvr-results")
    assert len(warnings) == 1 and "s3://" in warnings[0] and "/home/me/prvr-results" in warnings[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_trials_on_a_local_ray_without_a_gpu_are_refused():
    with pytest.raises(ValueError, match=r"--gpus-per-trial 0.25: this machine has no GPU"):
        ray_resources(None, 4, 1.0, 0.25)
    assert ray_resources("127.0.0.1:6379", 4, 1.0, 0.25) == {}  # a cluster brings (or autoscales) its own GPUs
    assert ray_resources(None, 3, 0.5, 0.0) == {"num_cpus": 2, "num_gpus": None, "warm_workers": 3}
    result = subprocess.run([sys.executable, str(ROOT / "search/run.py"), "--gpus-per-trial", "0.25"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --gpus-per-trial 0.25: this machine has no GPU (CUDA is not available); run on a cluster with GPUs "
        "(--ray-address) or leave it at 0"]
