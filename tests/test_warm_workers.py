"""Trial workers started ahead on a local Ray (search/warm_workers.py, trainables/warm_up.py): Tune's trial
actor lands in one that has already imported what a trial needs, and nothing fails when it cannot."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from search.ray_session import ray_session
from search.warm_workers import prestart, ready_workers, trial_runtime_env, wait_until_ready
from trainables import warm_up


def test_the_runtime_env_of_a_tune_actor_is_predicted_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raylet hands an actor only a worker started for the same serialized runtime env: the string
    ``prestart`` asks for must be the one Ray builds for Tune's actors, AWS variables included."""
    import ray
    from ray.tune.execution.class_cache import _ActorClassCache

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")  # Tune passes it on to its actors

    class Probe:
        def runtime_env(self) -> str:
            return ray.get_runtime_context().get_runtime_env_string()

    with ray_session(None, num_cpus=1):
        actor = _ActorClassCache().get(Probe).remote()  # the actor class exactly as Tune makes it
        seen = ray.get(actor.runtime_env.remote())
        predicted = trial_runtime_env(dict(ray.get_runtime_context().runtime_env))
    assert seen == predicted
    assert '"AWS_ACCESS_KEY_ID":"testing-key-id"' in seen and '"PL_DISABLE_FORK":"1"' in seen


def test_a_trial_runs_in_the_worker_started_ahead_with_its_imports_done(tmp_path: Path) -> None:
    from ray import tune

    def probe(config: dict) -> None:
        imported = {name: name in sys.modules for name in ("torch._dynamo", "trainables.trial")}
        import trainables.trial  # noqa: F401 - what a real trial imports: no MLflow in a trial's process

        tags = warm_up.claim()
        tune.report({"pid": os.getpid(), "ready_s": float(tags.get("ray.worker_ready_s", -1)),
                     "claimed_again": warm_up.claim() != {},  # a reused worker's next trial waited for nothing
                     "mlflow": "mlflow" in sys.modules, **imported})

    with ray_session(None, num_cpus=1, warm_workers=1):
        assert wait_until_ready() == 1
        ahead = ready_workers()
        assert len(ahead) == 1
        results = tune.Tuner(probe, run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
        left = ready_workers()
    result = results[0].metrics
    assert result["pid"] == ahead[0]  # Tune's actor took the worker started ahead
    assert result["torch._dynamo"] and result["trainables.trial"]  # imported before the trial began
    assert result["ready_s"] >= 0 and not result["claimed_again"]
    assert not result["mlflow"]  # the driver keeps the MLflow runs (tracking/trial_runs.py)
    assert left == []  # the trial claimed it: no worker is counted as free twice


def test_without_workers_started_ahead_nothing_waits() -> None:
    with ray_session(None, num_cpus=1):
        assert wait_until_ready(timeout_s=5) == 0
        assert ready_workers() == []


def test_a_failed_head_start_is_one_warning_and_no_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert prestart(1) is False  # no Ray session here: nothing to ask
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: no trial workers started ahead")
    assert prestart(0) is False and capsys.readouterr().err == ""  # none asked for: no warning


def test_the_warm_up_hook_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(warm_up, "TRIAL_MODULES", ("json", "no_such_module_for_the_warm_up"))
    monkeypatch.setattr(warm_up, "ready_at", None)
    with caplog.at_level(logging.WARNING, logger=warm_up.__name__):
        warm_up.import_trial_modules()  # a hook that raised would kill every worker of the session
    assert warm_up.ready_at is None and warm_up.claim() == {}
    assert "no_such_module_for_the_warm_up" in caplog.text
