"""The search, run as a user runs it (``python search/run.py``): a real local Ray on 127.0.0.1, Optuna,
ASHA, checkpoints, resume after the driver is killed, and one-line errors before Ray starts."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--validate-samples", "40", "--set", "hidden_size=16", "n_heads=2"]
#: the search alone: the confirmation stage is tested in tests/test_confirmation.py
CONFIRMATION_OFF = ["--confirm-top", "0"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PRVR_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}


def _command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "search/run.py"), "--data", "tiny", "--storage", str(tmp_path / "results"),
            "--tracking-uri", tracking_uri(tmp_path), *CONFIRMATION_OFF, *args]


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def run_search(tmp_path: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    # from the test's folder: MLflow puts a SQLite store's artifacts in ./mlruns of the working folder
    return subprocess.run(_command(tmp_path, *args), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


def mlflow_runs(tmp_path: Path, search: str) -> tuple[object, list]:
    """(the parent run, its child runs) of ``search`` in the test's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("prvr")
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.`prvr.kind` = 'parent' and "
                                   f"tags.`prvr.search` = '{search}'")
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    return parent, children


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("trial_*") if p.is_dir())


def last_result(trial: Path) -> dict:
    """The trial's last reported result ({} before its first report: a started trial may have no file yet)."""
    path = trial / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def failures(experiment: Path) -> dict[str, int]:
    """{trial id: how often Ray retried it} from Tune's experiment state."""
    (path,) = experiment.glob("experiment_state-*.json")
    trials = [(json.loads(t[0]), json.loads(t[1]) if isinstance(t[1], str) else t[1])
              for t in json.loads(path.read_text())["trial_data"]]
    return {spec["trial_id"]: state["num_failures"] for spec, state in trials}


def searcher_state(experiment: Path) -> dict:
    """What the searcher told Optuna (its state file, as Tune saved it)."""
    (path,) = experiment.glob("searcher-state-*.pkl")
    return pickle.loads(path.read_bytes())


PROGRESS = re.compile(r"^\[(?P<done>\d+)/(?P<total>\d+) done, (?P<running>\d+) running, ETA (?P<eta>\S+)\] "
                      r"trial (?P<label>\S+)-(?P<trial>\w+): epoch (?P<epoch>\d+)/(?P<n>\d+), "
                      r"val SumR (?P<val>[\d.]+), best (?P<best>[\d.]+) \(search best (?P<search_best>[\d.]+)\)$", re.M)


def check_progress_lines(out: str, err: str, trials: list[Path], concurrency: int) -> None:
    """search/progress.py's lines: one per epoch report of each trial (its result.json), with the epoch of N
    (its config's epochs), that epoch's val SumR and the trial's best; the search best, the running max of
    the bests printed so far; and no TensorBoard hint of Ray's (at a temp folder deleted at exit)."""
    lines = [m.groupdict() for m in PROGRESS.finditer(out)]
    assert lines, out[-3000:]
    search_best = float("-inf")
    for line in lines:
        assert int(line["total"]) == len(trials) and int(line["done"]) < len(trials), line
        assert 1 <= int(line["running"]) <= concurrency, line
        search_best = max(search_best, float(line["best"]))
        assert line["search_best"] == f"{search_best:.1f}", line
    for trial in trials:
        config = json.loads((trial / "params.json").read_text())
        reports = [json.loads(text) for text in (trial / "result.json").read_text().splitlines()]
        epochs = [r for r in reports if not r.get("finished")]  # the final report is the status line's
        mine = [line for line in lines if line["trial"] == trial.name[len("trial_"):]]
        assert [(line["epoch"], line["n"], line["val"], line["best"]) for line in mine] == \
            [(str(r["epoch"]), str(config["epochs"]), f"{r['val_sumr']:.1f}", f"{r['best_val_sumr']:.1f}")
             for r in epochs], trial.name
        plugins = sorted(p for p in ("ral", "msc", "moment") if config.get(p) is True)
        for line in mine:  # backbone+plugins on
            backbone, *shown = line["label"].split("+")
            assert (backbone, sorted(shown)) == (config["backbone"], plugins), (trial.name, line["label"])
    assert "tensorboard --logdir" not in out + err and "To visualize your results with TensorBoard" not in out + err


def test_search_runs_trials_prunes_and_checkpoints(watched_search):
    # tests/conftest.py's search: --space full --backbones mssl gmmformer --trials 8 --max-epochs 3 --name s
    # (its Optuna study is watched meanwhile: tests/test_optuna_dashboard.py)
    tmp_path, result = watched_search.base, watched_search
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "best trials of search s" in out and re.search(r"^#\s+trial\s+epochs\s+val R@1", out, re.M)
    assert "results and checkpoints: " in out
    experiment = tmp_path / "results" / "s"
    trials = trial_dirs(experiment)
    assert len(trials) == 8
    status = re.findall(r"^trial (\w+): (\d+) epochs, best val SumR [\d.]+, (.*)$", out, re.M)
    assert sorted(t for t, _, _ in status) == sorted(p.name[len("trial_"):] for p in trials)

    finished, stopped = [], []
    for trial in trials:
        config = json.loads((trial / "params.json").read_text())
        for plugin in ("ral", "msc", "moment"):  # a plugin's settings exist exactly when it is on
            settings = [k for k in config if k.startswith(f"{plugin}.")]
            assert bool(settings) == (config.get(plugin) is True), (plugin, config)
        final = last_result(trial)
        assert final["node_ip"] == "127.0.0.1"  # the local Ray stays on loopback
        (finished if final.get("finished") else stopped).append(trial.name[len("trial_"):])
        checkpoints = sorted(trial.glob("checkpoint_*"))
        assert checkpoints, f"{trial.name} has no checkpoint"
        state = load_checkpoint(checkpoints[-1])
        assert state["epoch"] == final["epoch"]  # the kept checkpoint is the trial's last epoch
        assert state["config"]["backbone"] == config["backbone"]
    assert stopped, "ASHA stopped no trial"
    assert finished, "no trial ran to the end"
    assert "stopped early by the scheduler" in out
    check_progress_lines(out, result.stderr, trials, concurrency=2)

    from trainables.plugins import list_plugins

    parent, children = mlflow_runs(tmp_path, "s")
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial_id"] in finished
    assert parent.data.params["space"] == "full" and "data_manifest_sha256" in parent.data.tags
    best = last_result(experiment / f"trial_{parent.data.tags['best_trial_id']}")
    assert parent.data.metrics == {**{f"search_{k}": v for k, v in best.items() if k.startswith("best_val_")},
                                   **{f"search_best_{k}": v for k, v in best.items() if k.startswith("test_")}}
    by_trial = {run.data.tags["prvr.trial_id"]: run for run in children}
    assert sorted(by_trial) == sorted(finished + stopped)  # exactly one child run per trial
    for trial in trials:
        trial_id = trial.name[len("trial_"):]
        run = by_trial[trial_id]
        config = json.loads((trial / "params.json").read_text())
        assert run.info.status == "FINISHED"  # stopped by ASHA too: a normal end, told apart by its tags
        on = [p for p in list_plugins() if config.get(p) is True]  # in the registry's order
        assert run.info.run_name == "+".join([config["backbone"], *on]) + f"-{trial_id}"
        assert run.data.params == {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in config.items()}
        for plugin in ("ral", "msc", "moment"):
            assert run.data.tags[f"plugin.{plugin}"] == str(bool(config.get(plugin))).lower()
        assert run.data.tags["backbone"] == config["backbone"]
        epoch = last_result(trial)["epoch"]
        assert run.data.metrics["epoch"] == epoch
        if trial_id in stopped:  # ASHA's rungs at grace 1 x factor 2: epochs 1, 2, 4, ...
            assert {k: v for k, v in run.data.tags.items() if k.startswith("stopped_")} == \
                {"stopped_early": "scheduler", "stopped_at_epoch": str(epoch),
                 "stopped_at_rung": str(epoch.bit_length() - 1)}
        else:
            assert run.data.tags.get("stopped_early") in (None, "patience")
    experiment_id = parent.info.experiment_id
    assert (f"MLflow runs (experiment prvr): python {ROOT / 'search/tracking_server.py'} --backend-store-uri "
            f"sqlite:///") in out
    assert (f"parent run: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
            f"?workflowType=machine_learning") in out
    from mlflow.tracking import MlflowClient

    kept = MlflowClient(tracking_uri=tracking_uri(tmp_path)).get_experiment(experiment_id).tags
    assert kept["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(kept[f"mlflow.sharedViewState.{parent.info.run_id}"])
    assert {"params.`lr`", "params.`ral`", "metrics.`test_sumr`"} <= set(view["selectedColumns"])
    assert f"viewStateShareKey={parent.info.run_id}" in out
    # the embedded default keeps artifacts beside the store, in the working folder
    assert list((tmp_path / "mlruns").rglob("report.html")) and list((tmp_path / "mlruns").rglob("config.json"))

    told = searcher_state(experiment)
    assert {t: told["told"][t] for t in stopped} == {t: "PRUNED" for t in stopped}
    assert {t: told["told"][t] for t in finished} == {t: "COMPLETE" for t in finished}
    states = sorted(t.state.name for t in told["_ot_study"].get_trials())
    assert states.count("PRUNED") == len(stopped) and states.count("COMPLETE") == len(finished)


def test_trials_that_fail_on_their_own_are_failed_once_with_their_error_and_a_search_of_failures_exits_nonzero(
        tmp_path):
    # lr=1e30 diverges in the first epoch: the trial's own failure, the same on every start, so not retried
    result = run_search(tmp_path, "--space", "base", "--backbones", "mssl", "--trials", "2", "--max-epochs", "2",
                        "--max-failures", "3", "--name", "f", *TINY_MODEL, "lr=1e30", "weight_decay=0.0")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "error: every trial failed" in result.stderr
    errors = re.findall(r"^trial \w+: failed: (NonFiniteLoss: epoch \d+.*)$", result.stdout, re.M)
    assert len(errors) == 2, result.stdout[-3000:]
    assert "2 trials: 0 ran, 2 failed" in result.stdout
    experiment = tmp_path / "results" / "f"
    assert sorted(searcher_state(experiment)["told"].values()) == ["FAIL", "FAIL"]
    assert failures(experiment) == {t.name.removeprefix("trial_"): 0 for t in trial_dirs(experiment)}  # no retry
    _, children = mlflow_runs(tmp_path, "f")
    assert len(children) == 2 and {r.info.status for r in children} == {"FAILED"}
    assert {r.data.tags["error"] for r in children} == set(errors)
    # its Optuna study (beside the MLflow store): each trial once, FAIL, as its files say; optuna-dashboard shows it
    from test_optuna_dashboard import (
        _expected,
        _read_trials,
        assert_the_study_holds_what_the_searcher_told,
        dashboard_states,
    )

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert assert_the_study_holds_what_the_searcher_told(url, "f", experiment, result.stdout) == ["FAIL", "FAIL"]
    if importlib.util.find_spec("optuna_dashboard"):  # the dashboard extra (installed with the test extra)
        assert dashboard_states(url, "f", tmp_path) == {
            trial_id: _expected(results)[0] for trial_id, (_, results) in _read_trials(experiment).items()}


@pytest.mark.parametrize(("args", "fragments"), [
    (["--space", "nosuch"], ["unknown space 'nosuch'", "base, moment, msc, ral, full"]),
    (["--backbones", "nosuch"], ["unknown backbone 'nosuch'", "mssl"]),
    (["--space", "ral", "--backbones", "amdnet"], ["space ral: none of the backbones amdnet can run plugin ral"]),
    (["--overrides", "RANGES"], ["unknown setting ral.nosuch"]),
    (["--overrides", "LR"], ["space base can produce an invalid config", "lr must be > 0"]),
    (["--set", "nosuch.k=1"], ["unknown plugin 'nosuch'"]),
    (["--data", "NOWHERE"], ["NOWHERE"]),
    (["--storage", "FILE"], ["cannot be created"]),
    (["--resume"], ["--resume needs the --name"]),
    (["--name", "gone", "--resume"], ["nothing to resume: no search 'gone'"]),
    (["--trials", "0"], ["--trials is out of range: 0"]),
    (["--sampler", "nosuch"], ["unknown --sampler 'nosuch'", "random, tpe, cmaes"]),  # issue 21 item 9
    (["--seed", "-1"], ["--seed is out of range: -1"]),
    (["--seed", str(2**32)], [f"--seed is out of range: {2**32}"]),
    (["--storage", "/proc"], ["storage /proc is not writable"]),  # exists, but nothing can be written in it
    # issue 21 item 6: a --set value that another option would override, or that would override it
    (["--set", "epochs=1000000000"], ["--set epochs=1000000000: give it as --max-epochs"]),
    (["--set", "patience=3"], ["--set patience=3: give it as --patience"]),
    (["--set", "seed=5"], ["--set seed=5: give it as --seed"]),
    (["--space", "ral", "--set", "ral=false"], ["--set ral=False: space ral always switches plugin ral on"]),
    (["--backbones", "mssl", "--set", "backbone=gmmformer"], ["--set backbone=gmmformer contradicts --backbones mssl"]),
    # issue 21 item 10: Ray would keep dialling an address nothing answers at for minutes
    (["--ray-address", "127.0.0.1:1"], ["--ray-address 127.0.0.1:1: no Ray cluster answers there", "refused"]),
    (["--ray-address", "ray://127.0.0.1:1"], ["--ray-address ray://127.0.0.1:1: no Ray cluster answers there"]),
    (["--ray-address", "headnode"], ["--ray-address 'headnode': expected host:port, ray://host:port or auto"]),
    (["--trust-storage", "--name", "t2"], ["--trust-storage applies to --resume only"]),
])
def test_bad_input_fails_before_ray_with_one_line(tmp_path, run_cli_without_ray, args, fragments):
    from search.run import main

    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("ral:\n  nosuch: {type: fixed, value: 1}\n")
    lr = tmp_path / "lr.yaml"
    lr.write_text("training:\n  lr: {type: float, low: -1.0, high: 0.0}\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    swap = {"RANGES": str(ranges), "LR": str(lr), "NOWHERE": str(tmp_path / "nowhere"), "FILE": str(blocker / "x")}
    command = _command(tmp_path, *[swap.get(a, a) for a in args], "--validate-samples", "20")[2:]  # no python, script
    result = run_cli_without_ray(main, *command, cwd=tmp_path)
    assert result.code == 2, (result.stdout[-1000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment.replace("NOWHERE", str(tmp_path / "nowhere")) in lines[0], lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())  # nothing written


@pytest.mark.parametrize(("args", "held"), [
    (["--set", "backbone=gmmformer"], {"backbone": "gmmformer"}),  # as --backbones gmmformer
    (["--space", "full", "--backbones", "mssl", "--set", "ral=false"], {"ral": None}),  # never sampled on
    (["--space", "full", "--backbones", "mssl", "--set", "ral=true"], {"ral": True}),
    (["--set", "lr=0.00042"], {"lr": 0.00042}),  # a sampled setting held fixed
])
def test_every_set_value_takes_effect_in_every_sampled_config(args, held):
    from search.run import _parser, build_preset_space, held_fixed

    parsed = _parser().parse_args(args)
    space = build_preset_space(parsed, {"epochs": 2, **held_fixed(parsed)})
    for key, value in held.items():
        assert {config.get(key) for config in space.sample(30)} == {value}, key


def test_existing_search_name_is_refused_without_resume(tmp_path):
    (tmp_path / "results" / "taken").mkdir(parents=True)
    result = run_search(tmp_path, "--name", "taken", timeout=120)
    assert result.returncode == 2
    assert "a search named 'taken' already exists" in result.stderr and "--resume" in result.stderr


UNSAFE_NAMES = ["../x", "/abs/x", "a/b", "a b", ".hidden", "..", "", "x;y", "x" * 101]


@pytest.mark.parametrize("cli", ["run", "ablate", "export", "report"])
def test_an_unsafe_name_is_refused_before_anything_is_written(tmp_path, run_cli_without_ray, cli):
    # issue 21 item 3: a name becomes one folder under --storage (and of --out, exports, reports)
    import importlib

    main = importlib.import_module(f"search.{cli}").main
    storage = tmp_path / "s" / "results"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "base.yaml").write_text("backbone: mssl\n")
    extra = {"run": ["--data", "tiny", "--validate-samples", "5", *CONFIRMATION_OFF],
             "ablate": ["--data", "tiny", "--base", str(tmp_path / "in" / "base.yaml"), "--components", "ral"],
             "export": ["--no-register"], "report": []}[cli]
    for name in UNSAFE_NAMES:
        result = run_cli_without_ray(main, f"--name={name}", "--storage", str(storage), "--tracking-uri",
                                     tracking_uri(tmp_path), *extra, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1, (cli, name, result.stderr[-1500:])
        assert lines[0].startswith(f"error: --name {name!r} is not allowed: use letters, digits"), lines[0]
        assert not (tmp_path / "s").exists() and not (tmp_path / "x").exists(), (cli, name)
        assert [p.name for p in tmp_path.iterdir()] == ["in"], (cli, name)  # no mlflow.db, no output folder


@pytest.mark.parametrize("where", ["in the session", "after the session"])
def test_a_failure_after_the_parent_run_exists_ends_it_failed_with_the_error(tmp_path, monkeypatch,
                                                                               run_cli_without_ray, where):
    # issue 21 item 9: the parent run is never left RUNNING (Ray is replaced by nothing: no Ray starts)
    import contextlib

    import search.driver
    import search.ray_session
    import search.results
    from search.run import main

    class NoTrials:
        num_terminated = num_errors = 0

        def __len__(self):
            return 0

    def boom(*args, **kwargs):
        raise RuntimeError(f"boom {where}")

    monkeypatch.setattr(search.ray_session, "ray_session", lambda *a, **k: contextlib.nullcontext({}))
    monkeypatch.setattr(search.driver, "OPEN_PARENTS", [])
    if where == "in the session":
        monkeypatch.setattr(search.driver.DriverSession, "fit", boom)
    else:
        monkeypatch.setattr(search.driver.DriverSession, "fit", lambda *a, **k: NoTrials())
        monkeypatch.setattr(search.results, "rows_of", boom)
    with pytest.raises(RuntimeError, match=f"boom {where}"):
        run_cli_without_ray(main, *_command(tmp_path, "--name", "late", "--validate-samples", "5")[2:], cwd=tmp_path)
    parent, _ = mlflow_runs(tmp_path, "late")
    assert parent.info.status == "FAILED", parent.info.status
    assert parent.data.tags["error"] == f"RuntimeError: boom {where}"


@pytest.mark.parametrize(("args", "overrides", "fragment"), [  # issue 21 item 8: one line, not a traceback
    (["--set", "margin=[unclosed"], None, "--set margin: '[unclosed' is not a valid value"),
    (["--space", "msc"], "msc:\n  tome: {type: categorical, choices: [true, false], when: [tcpl]}\n",
     "range msc.tome: when must name one switch of group msc, got ['tcpl']"),
    (["--space", "msc"], "msc:\n  _at_least_one: 5\n", "range msc._at_least_one: must be a list of switches of msc"),
    (["--space", "msc"], "msc:\n  _at_least_one: [tcpl, nosuch]\n", "range msc._at_least_one: 'nosuch' is not a"),
    ([], "training:\n  lr: {type: float, low: .nan, high: 0.1}\n",
     "range training.lr: low and high must be finite numbers, got nan and 0.1"),
    ([], "training:\n  lr: {type: float, low: 0.001, high: .inf}\n", "range training.lr: low and high must be finite"),
    ([], "training:\n  lr: {type: float, low: 0.001, high: 0.1, step: .nan}\n", "range training.lr: step must be"),
])
def test_a_malformed_set_value_or_range_is_one_line_before_ray(tmp_path, run_cli_without_ray, args, overrides,
                                                                fragment):
    from search.run import main

    if overrides is not None:
        (tmp_path / "ranges.yaml").write_text(overrides)
        args = [*args, "--overrides", str(tmp_path / "ranges.yaml")]
    result = run_cli_without_ray(main, *_command(tmp_path, *args, "--validate-samples", "5")[2:], cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_search_in_which_no_trial_ran_an_epoch_exits_nonzero(tmp_path, monkeypatch, run_cli_without_ray):
    # issue 21 item 7: --time-budget 0.001 ended Tune before any trial reported, and the search exited 0
    import contextlib
    from types import SimpleNamespace

    import search.driver
    import search.ray_session
    from search.run import main

    class Unstarted(list):  # one trial Tune made and ended at the budget before its first epoch
        num_terminated, num_errors = 1, 0

    grid = Unstarted([SimpleNamespace(metrics={}, config={}, path=str(tmp_path / "trial_0"), error=None)])
    monkeypatch.setattr(search.ray_session, "ray_session", lambda *a, **k: contextlib.nullcontext({}))
    monkeypatch.setattr(search.driver, "OPEN_PARENTS", [])
    monkeypatch.setattr(search.driver.DriverSession, "fit", lambda *a, **k: grid)
    result = run_cli_without_ray(main, *_command(tmp_path, "--name", "budget", "--time-budget", "0.001",
                                                 "--validate-samples", "5")[2:], cwd=tmp_path)
    assert result.code == 1, (result.stdout[-1500:], result.stderr[-1500:])
    assert "error: no trial finished an epoch within --time-budget 0.001s; raise --time-budget" in result.stderr
    parent, _ = mlflow_runs(tmp_path, "budget")
    assert parent.info.status == "FAILED"


def test_resume_refuses_an_option_the_restored_search_would_ignore(tmp_path, run_cli_without_ray):
    # issue 21 item 7: --resume --trials 4 on a finished 2-trial search exited 0 and ran nothing more
    from search.run import main
    from tracking.mlflow_runs import start_parent

    (tmp_path / "results" / "done").mkdir(parents=True)
    start_parent(tracking_uri(tmp_path), "prvr", "done", "base", resume=False, tags={},
                 params={"trials": 2, "sampler": "random", "seed": 0, "space": "base"})
    for args, fragment in [(["--trials", "4"], "--trials 4 differs from search done's 2"),
                           (["--sampler", "tpe"], "--sampler tpe differs from search done's random"),
                           (["--time-budget", "5"], "--time-budget 5.0 differs from search done's default")]:
        result = run_cli_without_ray(main, *_command(tmp_path, "--name", "done", "--resume", *args,
                                                     "--validate-samples", "5")[2:], cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr[-1500:])
    with pytest.raises(AssertionError, match="Ray session was started"):  # the same values: on to Ray
        run_cli_without_ray(main, *_command(tmp_path, "--name", "done", "--resume", "--trials", "2", "--seed", "0",
                                            "--validate-samples", "5")[2:], cwd=tmp_path)
