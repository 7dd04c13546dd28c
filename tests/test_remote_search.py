"""A search against real servers, as on a cluster: data and Tune storage on an S3-compatible server (moto
in server mode), runs on an MLflow tracking server whose artifacts are proxied to a bucket on it. The
driver is killed mid-search and a fresh driver (another working folder, an empty node cache) resumes it
from S3; then every run, artifact and object is checked, and grepped for the test credentials."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from servers import TEST_ACCESS_KEY, TEST_SECRET_KEY, FlakyProxy, mlflow_server, s3_env
from test_integrity import PASSWORD, USER

from trainables.data.manifest import read_manifest
from trainables.data.remote import upload_dataset
from trainables.data.s3 import StorageSettings
from trainables.data.synthetic import ensure_synthetic
from trainables.evaluation.metrics import metrics_from_ranks
from trainables.trial_report import COLUMNS, metric_key

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "prvr-bucket"
TINY_MODEL = ["--validate-samples", "40", "--set", "hidden_size=16", "n_heads=2"]


def _env(s3_endpoint: str, data_dir: Path) -> dict[str, str]:
    """The driver's environment: the test credentials and region, but the endpoint only as --s3-endpoint."""
    env = {**os.environ, **s3_env(s3_endpoint), "PRVR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env.pop("AWS_ENDPOINT_URL_S3")
    return env


def _search(s3_endpoint: str, tracking_uri: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "search/run.py"), "--data", f"s3://{BUCKET}/data/tiny",
            "--storage", f"s3://{BUCKET}/results", "--s3-endpoint", s3_endpoint, "--tracking-uri", tracking_uri,
            "--confirm-top", "0", *args]


def _result_lines(objects: dict[str, bytes], trial: str) -> list[dict]:
    raw = objects.get(f"results/r/trial_{trial}/result.json", b"").decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def uploaded(s3_server, tmp_path_factory):
    """The tiny synthetic dataset, uploaded to s3://prvr-bucket/data/tiny; returns its manifest."""
    s3_server.make_bucket(BUCKET)
    local = ensure_synthetic("tiny", tmp_path_factory.mktemp("local-data"))
    mp = pytest.MonkeyPatch()
    for key, value in s3_env(s3_server.endpoint).items():
        mp.setenv(key, value)
    upload_dataset(local, f"s3://{BUCKET}/data/tiny", StorageSettings.from_env(endpoint=s3_server.endpoint))
    mp.undo()
    return read_manifest(local)


def test_search_on_s3_and_a_tracking_server_survives_a_killed_driver(s3_server, uploaded, tmp_path):
    """Both drivers reach the tracking server through a proxy that records each request's Authorization header,
    with recognisable credentials in --tracking-uri (issue 21, tests/test_integrity.py): they are in no output,
    no MLflow param or tag, no object of the bucket (tuner.pkl included), not in the server's store or log;
    every request to the server carried them as HTTP basic auth (drivers and trial workers)."""
    args = ["--space", "base", "--backbones", "mssl", "--trials", "4", "--max-epochs", "6", "--scheduler", "none",
            "--name", "r", *TINY_MODEL]
    with mlflow_server(tmp_path, s3_server, BUCKET, "mlflow") as server, FlakyProxy(server.uri, fail_every=0) as proxy:
        tracking_uri = f"http://{USER}:{PASSWORD}@{proxy.endpoint.removeprefix('http://')}"
        first, second = tmp_path / "driver1", tmp_path / "driver2"  # two machines: nothing local is shared
        first.mkdir(), second.mkdir()
        log1 = open(first / "driver.log", "w")
        driver = subprocess.Popen(_search(s3_server.endpoint, tracking_uri, *args), cwd=first,
                                  env=_env(s3_server.endpoint, first / "cache"), stdout=log1,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        ray_dirs = set(Path(tempfile.gettempdir()).glob("prvr-ray-*"))
        try:
            deadline = time.time() + 300
            while time.time() < deadline and not any(re.search(r"trial_\w+/checkpoint_", key) for key in
                                                     s3_server.keys(BUCKET, "results/r/")):
                assert driver.poll() is None, (first / "driver.log").read_text()[-3000:]
                time.sleep(1.0)
            time.sleep(1.0)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, nothing else
            driver.wait(timeout=60)
            log1.close()
            for orphan in set(Path(tempfile.gettempdir()).glob("prvr-ray-*")) - ray_dirs:
                shutil.rmtree(orphan, ignore_errors=True)
        before = s3_server.objects(BUCKET, "results/r/")
        assert any("/checkpoint_" in key for key in before), "no checkpoint on S3 before the kill"
        done = sum('"finished": true' in v.decode() for k, v in before.items() if k.endswith("result.json"))
        assert done < 4, "the search ended before the kill"

        resumed = subprocess.run(_search(s3_server.endpoint, tracking_uri, *args, "--resume"), cwd=second,
                                 env=_env(s3_server.endpoint, second / "cache"), capture_output=True, text=True,
                                 timeout=600)
        (second / "driver.log").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        assert "4 trials: 4 ran, 0 failed" in resumed.stdout
        output = resumed.stdout + resumed.stderr
        for problem in ("Error handling checkpoint", "Could not recover from checkpoint", "Trials did not complete"):
            assert problem not in output, problem
        # the fresh driver restarted the interrupted trials from their checkpoints on S3
        assert re.search(rf"Restored on 127.0.0.1 from checkpoint: .*path={BUCKET}/results/r/trial_\w+/checkpoint_",
                         output)
        assert f"results and checkpoints: s3://{BUCKET}/results/r" in resumed.stdout
        # the fresh driver's node fetched the dataset into its own cache
        assert list((second / "cache").rglob("manifest.json"))

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("prvr")
        (parent,) = client.search_runs([experiment.experiment_id], "tags.`prvr.kind` = 'parent'")
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=100)
        objects = s3_server.objects(BUCKET, "results/r/")
        trials = sorted({m.group(1) for key in objects if (m := re.match(r"results/r/trial_(\w+)/", key))})
        assert len(trials) == 4
        assert sorted(r.data.tags["prvr.trial_id"] for r in children) == trials  # one child run per trial
        assert {r.info.status for r in children} == {"FINISHED"} and parent.info.status == "FINISHED"

        for run in children:
            trial = run.data.tags["prvr.trial_id"]
            config = json.loads(objects[f"results/r/trial_{trial}/params.json"])
            assert run.data.params == {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in config.items()}
            assert run.data.tags["backbone"] == "mssl" and run.data.tags["space"] == "base"
            assert run.data.tags["seed"] == "0" and run.data.tags["prvr.search"] == "r"
            assert run.data.tags["plugin.ral"] == "false"
            assert run.data.tags["checkpoints"] == f"s3://{BUCKET}/results/r/trial_{trial}"
            assert any(k.startswith(f"results/r/trial_{trial}/checkpoint_") for k in objects)
            epochs = _result_lines(objects, trial)
            steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_sumr")})
            assert steps == list(range(1, epochs[-1]["epoch"] + 1))  # per-epoch val metrics, step = epoch
            # the resumed trial continued from its checkpoint: the epochs never start again from 1 (the
            # first may be missing: a checkpoint can reach S3 before the killed driver recorded its result)
            seen = [line["epoch"] for line in epochs if "epoch" in line]
            assert 1 not in seen[1:] and seen == sorted(seen), seen
            for column in COLUMNS:
                assert run.data.metrics[metric_key("test", column)] == pytest.approx(epochs[-1][metric_key("test",
                                                                                                           column)])
            (tmp_path / trial).mkdir()
            local = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path / trial))
            assert json.loads(Path(local).read_text()) == config  # the resolved config as an artifact
            ranks = json.loads(Path(client.download_artifacts(run.info.run_id, "test_ranks.json",
                                                              str(tmp_path / trial))).read_text())
            assert len(ranks["ranks"]) == len(ranks["query_ids"]) == uploaded.splits["test"].num_queries
            # the per-query ranks an ablation pairs on give the logged test SumR
            assert metrics_from_ranks(ranks["ranks"])["SumR"] == pytest.approx(run.data.metrics["test_sumr"])

        assert parent.data.tags["data_manifest_sha256"] == uploaded.sha256()
        assert parent.data.params["tracking_uri"] == proxy.endpoint  # the credentials moved out of the URI
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) >= 2  # the parent and the trials' child runs, created through the proxy
        assert re.fullmatch(r"[0-9a-f]{40}|unknown", parent.data.tags["git_commit"])
        assert "search/run.py" in parent.data.params["command"] and parent.data.params["space"] == "base"
        assert parent.data.tags["best_trial_id"] in trials
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= \
            {"space.json", "best_config.json", "best_trials.txt"}
        # artifacts went through the server to the bucket: nothing but the server touched S3 for them
        artifacts = s3_server.objects(BUCKET, "mlflow/")
        assert any(k.endswith("/best_trials.txt") for k in artifacts)
        assert sum(k.endswith("/config.json") for k in artifacts) == 4
        # the report's place on a tracking server is the MLflow UI's page of report/report.html in the parent run
        # (tracking/report.py), and the server serves that file: the one the search logged to the bucket
        from tracking.report import report_location

        where = report_location(server.uri, parent.info.run_id)
        assert where == (f"{server.uri}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                         f"/artifacts/report/report.html")
        (stored,) = [v for k, v in artifacts.items()
                     if parent.info.run_id in k.split("/") and k.endswith("/report/report.html")]
        query = urllib.parse.urlencode({"path": "report/report.html", "run_uuid": parent.info.run_id})
        with urllib.request.urlopen(f"{server.uri}/get-artifact?{query}", timeout=30) as response:
            assert response.read() == stored and b'<span id="summary">' in stored

        logged = {**{f"s3:{k}": v for k, v in s3_server.objects(BUCKET).items()},  # results/, mlflow/, data/
                  "mlflow.db": server.database.read_bytes(),
                  "mlflow params/tags": repr([(r.data.params, r.data.tags, r.info.run_name) for r in runs]).encode(),
                  }
        for folder in (first, second):
            logged.update({str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file() and "cache" not in p.parts})
    logged["mlflow-server.log"] = (tmp_path / "mlflow-server.log").read_bytes()
    assert any(where.endswith("tuner.pkl") for where in logged)
    assert any(where.endswith("driver.log") for where in logged)  # both drivers' output
    leaks = [where for where,
             blob in logged.items() if TEST_ACCESS_KEY.encode() in blob or TEST_SECRET_KEY.encode() in blob]
    assert not leaks, f"test credentials found in {leaks}"
    leaks = [where for where, blob in logged.items() if PASSWORD.encode() in blob or USER.encode() in blob]
    assert not leaks, f"--tracking-uri credentials found in {leaks}"
    assert len(logged) > 20
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert proxy.authorization and set(proxy.authorization) == {expected}, set(proxy.authorization)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--storage", "s3://no-such-bucket/results"], "bucket 'no-such-bucket' is not reachable"),
    (["--data", f"s3://{BUCKET}/nothing-here"], "no dataset manifest there"),
    (["--storage", f"s3://{BUCKET}/results", "--name", "gone", "--resume"], "nothing to resume: no search 'gone'"),
    (["--s3-endpoint", "127.0.0.1:9"], "--s3-endpoint '127.0.0.1:9' must look like http://host:port"),
])
def test_bad_s3_input_fails_before_ray_with_one_line(s3_server, uploaded, tmp_path, monkeypatch, run_cli_without_ray,
                                                    args, fragment):
    from search.run import main

    for key, value in _env(s3_server.endpoint, tmp_path / "cache").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    result = run_cli_without_ray(main, "--data", f"s3://{BUCKET}/data/tiny", "--storage", str(tmp_path / "results"),
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--s3-endpoint",
                                 s3_server.endpoint,
                                 *args, cwd=tmp_path)
    assert result.code == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr[-2000:]
    assert TEST_SECRET_KEY not in result.stderr
