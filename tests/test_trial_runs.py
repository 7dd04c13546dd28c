"""What the driver logs to a trial's MLflow run from its reports (tracking/trial_runs.py, trainables/trial.py),
and how the runs read in MLflow's UI (tracking/mlflow_runs.py: run names, readable params, the parent's summary,
the experiment's kind, the printed links and the trials view, served by search/tracking_server.py), on a real
SQLite store and server. End to end (params, tags, per-epoch metrics, ranks, statuses, a killed driver) in
test_search.py, test_remote_search.py and test_ablate.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from trainables.data.synthetic import ensure_synthetic
from trainables.training.loop import load_data, train
from trainables.trial import history_metrics
from trainables.trial_report import COLUMNS, METRIC, PLACEMENT, epoch_metrics, epoch_report, final_metrics

ROOT = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    pass


def test_a_resumed_trials_earlier_epochs_are_rebuilt_exactly_as_they_were_reported(tmp_path: Path) -> None:
    data = load_data(ensure_synthetic("tiny"))
    config = {"backbone": "mssl", "epochs": 4, "batch_size": 16, "lr": 1e-3, "patience": 10, "seed": 7,
              "hidden_size": 32, "n_heads": 4}
    live: list[dict[str, float]] = []
    train(config, data, on_epoch=lambda r: live.append(
        epoch_report(r.epoch, r.val["fused"], r.train_loss, r.best_epoch, r.best_score)))

    def stop_after_second_epoch(report) -> None:
        if report.epoch == 2:
            report.save_checkpoint(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, data, on_epoch=stop_after_second_epoch)
    after_resume = []
    train(config, data, resume_from=tmp_path / "ckpt", on_epoch=after_resume.append)
    assert [r.epoch for r in after_resume] == [3, 4]
    assert history_metrics(after_resume[0].history[:-1]) == live[:2]  # what epochs 1-2 reported, from the checkpoint
    assert history_metrics(after_resume[-1].history) == live


def _val(sumr: float) -> dict[str, dict[str, float]]:
    return {"fused": {**{c: 1.0 for c in COLUMNS}, "SumR": sumr}}


def test_the_best_epoch_so_far_follows_the_loops_rule_a_tie_is_not_better() -> None:
    history = [{"epoch": e, "val": _val(s), "loss": {"nce": 0.5}} for e, s in [(1, 10.0), (2, 8.0), (3, 10.0), (4,
                                                                                                                12.0)]]
    rebuilt = history_metrics(history)
    assert [(m["best_epoch"], m[METRIC]) for m in rebuilt] == [(1, 10.0), (1, 10.0), (1, 10.0), (4, 12.0)]
    assert [m["val_sumr"] for m in rebuilt] == [10.0, 8.0, 10.0, 12.0] and rebuilt[0]["loss_nce"] == 0.5


def test_only_the_trials_own_metrics_are_logged_not_tunes_fields() -> None:
    result = {"epoch": 3, METRIC: 120.5, "best_epoch": 2, "val_r1": 4.0, "loss_nce": 0.3, "best_val_r1": 5.0,
              "test_sumr": 99.0, "finished": True, "stopped_early": False, "timestamp": 1700000000,
              "training_iteration": 3, "time_this_iter_s": 1.5, "pid": 123, "config": {"lr": 0.1},
              PLACEMENT: {"ray.pid": "123"}, "trial_id": "abc"}
    assert epoch_metrics(result) == {"epoch": 3, METRIC: 120.5, "best_epoch": 2, "val_r1": 4.0, "loss_nce": 0.3}
    # the final report's best val SumR is the best epoch's, one of the best_val_* metrics
    assert final_metrics(result) == {METRIC: 120.5, "best_val_r1": 5.0, "test_sumr": 99.0}


LR, MARGIN = 0.0003184392667653311, 70.89999999999999


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow keeps a SQLite store's artifacts in ./mlruns of the working folder: each test works in its own."""
    monkeypatch.chdir(tmp_path)


def _tracking(tmp_path: Path, params: dict | None = None):
    from tracking.mlflow_runs import start_parent

    return start_parent(f"sqlite:///{tmp_path / 'mlflow.db'}", "prvr", "s1", "ral", params or {}, {}, resume=False)


def test_runs_read_as_what_they_are_readable_params_a_trial_label_and_the_exact_config(tmp_path: Path) -> None:
    from tracking.mlflow_runs import EXPERIMENT_KIND, child_run

    tracking = _tracking(tmp_path, {"reduction_factor": 2.0, "grace_epochs": 1, "backbones": ["mssl"],
                                    "time_budget": None})
    client = tracking.client()
    assert client.get_experiment(tracking.experiment_id).tags[EXPERIMENT_KIND] == "custom_model_development"
    config = {"backbone": "mssl", "ral": True, "msc": False, "lr": LR, "ral.margin": MARGIN, "epochs": 3}
    run_id = child_run(tracking, "19a671ab", config, ["ral", "msc", "moment"])
    run = client.get_run(run_id)
    assert run.info.run_name == "mssl+ral-19a671ab"
    assert run.data.params == {"backbone": "mssl", "ral": "True", "msc": "False", "lr": "0.0003184",
                               "ral.margin": "70.9", "epochs": "3"}
    with open(client.download_artifacts(run_id, "config.json", str(tmp_path))) as handle:
        assert json.load(handle) == config  # the exact values
    assert child_run(tracking, "19a671ab", config, ["ral", "msc", "moment"]) == run_id  # found again, not renamed
    parent = client.get_run(tracking.parent_run_id).data.params
    assert parent == {"reduction_factor": "2", "grace_epochs": "1", "backbones": "['mssl']"}


def test_resume_compares_options_with_the_parents_params_as_they_were_logged(tmp_path: Path) -> None:
    """The parent run logs the search's options as ``search/run.py`` does (``vars(args)``); a ``--resume``
    with the same options passes, with another value of any of them is refused."""
    from search.run import _parser, check_resume_options, given_options
    from trainables.errors import InputError

    argv = ["--name", "s1", "--reduction-factor", "2", "--time-budget", "30.5", "--backbones", "mssl", "gmmformer",
            "--trials", "6"]
    tracking = _tracking(tmp_path, vars(_parser().parse_args(argv)))
    parent = tracking.client().get_run(tracking.parent_run_id)
    resume = [*argv, "--resume"]
    check_resume_options(_parser().parse_args(resume), given_options(_parser(), resume), parent)  # the same
    for flag, other in (("--reduction-factor", ["3"]), ("--time-budget", ["30.6"]), ("--backbones", ["mssl"]),
                        ("--trials", ["7"])):
        changed = [*resume, flag, *other]
        with pytest.raises(InputError, match=f"{flag} "):
            check_resume_options(_parser().parse_args(changed), given_options(_parser(), changed), parent)


def test_a_trial_stopped_by_the_scheduler_ends_finished_and_tagged_a_failed_one_stays_failed(tmp_path: Path) -> None:
    from tracking.mlflow_runs import child_run, end_trial_run
    from trainables.trial_report import epoch_report, error_report, stop_tags, trial_status

    tracking = _tracking(tmp_path)
    stopped = {**epoch_report(2, _val(90.0)["fused"], {"nce": 0.5}, 1, 95.0), "done": True}  # as Tune marks it
    ends = {"a": (stopped, 1), "b": (error_report("NonFiniteLoss: epoch 1"), None),
            "c": (epoch_report(1, _val(90.0)["fused"], {}, 1, 90.0), None)}  # c: cut short by a Ctrl-C
    for trial_id, (result, rung) in ends.items():
        child_run(tracking, trial_id, {"backbone": "mssl"}, [])
        end_trial_run(tracking, trial_id, trial_status(result), stop_tags(result, rung))
    runs = {r.data.tags["prvr.trial_id"]: r for r in tracking.client().search_runs([tracking.experiment_id],
                                                                                   "tags.`prvr.kind` = 'child'")}
    assert runs["a"].info.status == "FINISHED"
    assert {k: runs["a"].data.tags.get(k) for k in ("stopped_early", "stopped_at_epoch", "stopped_at_rung")} == \
        {"stopped_early": "scheduler", "stopped_at_epoch": "2", "stopped_at_rung": "1"}
    assert runs["b"].info.status == "FAILED" and "stopped_early" not in runs["b"].data.tags
    assert runs["c"].info.status == "KILLED" and "stopped_early" not in runs["c"].data.tags


def test_the_parents_summary_metrics_are_named_apart_from_the_trials(tmp_path: Path) -> None:
    from tracking.mlflow_runs import finish_parent

    tracking = _tracking(tmp_path)
    best = {METRIC: 195.0, "best_val_r1": 12.0, "best_val_sumr": 195.0, "test_r1": 11.0, "test_sumr": 185.0,
            "val_sumr": 180.0, "epoch": 7, "best_epoch": 5, "finished": True}
    finish_parent(tracking, {"trial_id": "t1", "config": {"lr": LR}, "metrics": best}, "table", "FINISHED")
    run = tracking.client().get_run(tracking.parent_run_id)
    assert run.data.metrics == {"search_best_val_r1": 12.0, "search_best_val_sumr": 195.0,
                                "search_best_test_r1": 11.0, "search_best_test_sumr": 185.0}
    assert run.data.tags["best_trial_id"] == "t1" and run.info.status == "FINISHED"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_the_printed_server_serves_the_printed_parent_run_and_trials_view(tmp_path: Path) -> None:
    """The printed command (the lean server), run as printed on a free port; the parent run and the view named
    by the printed links, read back through the server's REST API; the view's filter and order, asked of the
    server, give the search's trials best val SumR first."""
    from benchmarks.local_servers import free_port, stop, wait_http
    from tracking.mlflow_runs import child_run, log_metrics, set_trials_view, ui_lines

    tracking = _tracking(tmp_path)
    for trial_id, score in (("t1", 150.0), ("t2", 190.0), ("t3", 170.0)):
        run_id = child_run(tracking, trial_id, {"backbone": "mssl", "lr": LR}, [])
        log_metrics(tracking, run_id, {METRIC: score}, 1, 0)
    other = _tracking(tmp_path)  # another search's trial: not in this search's view
    log_metrics(other, child_run(other, "t9", {"backbone": "mssl"}, []), {METRIC: 999.0}, 1, 0)
    set_trials_view(tracking, ["lr"])
    lines = ui_lines(tracking, "prvr").splitlines()
    command = shlex.split(lines[0].split(": ", 1)[1])
    assert command[0] == "python" and Path(command[1]).resolve() == ROOT / "search/tracking_server.py"
    parent_url, trials_url = (line.split(": ", 1)[1] for line in lines[1:])
    assert parent_url == (f"http://127.0.0.1:5000/#/experiments/{tracking.experiment_id}/runs/"
                          f"{tracking.parent_run_id}?workflowType=machine_learning")
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "search/tracking_server.py"), *command[2:], "--port",
                                str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", 90, process)
        with urllib.request.urlopen(base + "/", timeout=30) as page:
            assert b"<html" in page.read().lower()  # the UI
        path, query = urllib.parse.urlsplit(parent_url).fragment.split("?")
        _, experiments, experiment_id, runs, run_id = path.split("/")
        served = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        assert (experiments, runs, served["info"]["experiment_id"], served["info"]["run_name"]) == \
            ("experiments", "runs", experiment_id, "s1")
        assert urllib.parse.parse_qs(query) == {"workflowType": ["machine_learning"]}
        path, query = urllib.parse.urlsplit(trials_url).fragment.split("?")
        assert path == f"/experiments/{experiment_id}/runs"
        key = urllib.parse.parse_qs(query)["viewStateShareKey"][0]
        tags = _get(f"{base}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}")["experiment"]["tags"]
        view = json.loads({t["key"]: t["value"] for t in tags}[f"mlflow.sharedViewState.{key}"])
        assert "params.`lr`" in view["selectedColumns"] and f"metrics.`{METRIC}`" in view["selectedColumns"]
        order = view["orderByKey"] + (" ASC" if view["orderByAsc"] else " DESC")
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"experiment_ids": [experiment_id], "order_by": [order],
                                                          "filter": view["searchFilter"]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            found = json.loads(response.read())["runs"]
        assert [r["info"]["run_name"] for r in found] == ["mssl-t2", "mssl-t3", "mssl-t1"]
    finally:
        stop(process)
