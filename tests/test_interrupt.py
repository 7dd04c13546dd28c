"""Ctrl-C ends a search with exit code 130 (SIGINT to the driver), its MLflow parent run and the stopped
trials' child runs KILLED and tagged ``interrupted``, and the resume command printed; ``--resume`` refuses
the state once a pickle is planted in it, and with the recorded state finishes the search (exit 0, every
run FINISHED, the tag gone). An ablation interrupted by SIGINT to its whole process group (driver and
trial workers: the same driver session as a search) exits 130 with its parent run KILLED."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_cli import assert_one_line_error
from test_search import ROOT, TINY_MODEL, _command, _env, mlflow_runs, run_search, tracking_uri
from test_trusted_state import Planted

from tracking.mlflow_runs import INTERRUPTED_TAG

EPOCHS = 25


def _interrupt_when_training(command: list[str], tmp_path: Path, results: Path,
                             group: bool) -> subprocess.CompletedProcess:
    """Runs ``command``; SIGINT (to the driver, or to its process group) once a trial saved its 2nd epoch."""
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(results.glob("*/trial_*/checkpoint_000001")) and process.poll() is None:
        assert time.monotonic() < deadline, "no trial reached its 2nd epoch"
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_an_interrupted_search_exits_130_says_so_and_resumes(tmp_path, run_cli_without_ray):
    options = ["--name", "c1", "--trials", "2", "--max-epochs", str(EPOCHS), "--patience", "1000",
               "--scheduler", "none", "--backbones", "mssl", *TINY_MODEL]
    stopped = _interrupt_when_training(_command(tmp_path, *options), tmp_path, tmp_path / "results", group=False)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "--name c1 --resume" in stopped.stderr
    parent, children = mlflow_runs(tmp_path, "c1")
    assert (parent.info.status, parent.data.tags.get(INTERRUPTED_TAG)) == ("KILLED", "SIGINT")
    assert len(children) == 2
    assert all(c.info.status == "KILLED" and c.data.tags.get(INTERRUPTED_TAG) for c in children)
    assert all(c.data.metrics.get("epoch", 0) < EPOCHS for c in children)  # really cut short (or not begun)

    # a pickle planted in the search's folder is refused by --resume: one line, nothing loaded or written
    # (search/trusted_state.py; tests/test_trusted_state.py shows the pickle runs code when loaded)
    folder = tmp_path / "results" / "c1"
    recorded = (folder / "tuner.pkl").read_bytes()
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Planted(tmp_path / "code-ran")))
    before = sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))
    # search/run.py's main in this process, as its __main__ runs it (faster than a subprocess): the refusal must
    # come before any Ray session (run_cli_without_ray fails the test otherwise)
    from search.run import main

    refusal = run_cli_without_ray(main, *_command(tmp_path, "--name", "c1", "--resume")[2:], cwd=tmp_path)
    refused = subprocess.CompletedProcess(["search/run.py"], refusal.code, refusal.stdout, refusal.stderr)
    assert_one_line_error(refused, "c1/tuner.pkl changed since the search wrote it", "--trust-storage")
    assert not (tmp_path / "code-ran").exists()
    assert sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*")) == before
    assert mlflow_runs(tmp_path, "c1")[0].info.status == "KILLED"
    (folder / "tuner.pkl").write_bytes(recorded)

    resumed = run_search(tmp_path, "--name", "c1", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parent, children = mlflow_runs(tmp_path, "c1")
    assert parent.info.status == "FINISHED" and INTERRUPTED_TAG not in parent.data.tags
    assert sorted((c.info.status, c.data.metrics["epoch"], INTERRUPTED_TAG in c.data.tags) for c in children) == \
        [("FINISHED", EPOCHS, False)] * 2


def test_an_interrupted_ablation_exits_130_with_its_parent_killed(tmp_path):
    """SIGINT to the ablation's whole process group (its driver and its trial workers)."""
    base = tmp_path / "base.yaml"
    base.write_text(f"backbone: mssl\nhidden_size: 16\nn_heads: 2\nepochs: {EPOCHS}\npatience: 1000\n")
    command = [sys.executable, str(ROOT / "search/ablate.py"), "--data", "tiny", "--storage", str(tmp_path / "results"),
               "--tracking-uri", tracking_uri(tmp_path), "--name", "a1", "--base", str(base), "--components", "ral",
               "--seeds", "1", "--out", str(tmp_path / "out")]
    stopped = _interrupt_when_training(command, tmp_path, tmp_path / "results", group=True)  # and its trials
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1].startswith("interrupted: the ablation was interrupted")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    (parent,) = client.search_runs([client.get_experiment_by_name("prvr").experiment_id],
                                   "tags.`prvr.kind` = 'parent'")
    assert (parent.info.status, parent.data.tags.get(INTERRUPTED_TAG)) == ("KILLED", "KeyboardInterrupt")
    assert not (tmp_path / "out").exists()
