"""The search's Optuna study in an Optuna storage beside the MLflow store (search/study_storage.py): a second
process reads it while the search runs and after, with the states, values and per-epoch values checked
against what the trials left on disk (``result.json``, read here, not through the project's readers);
optuna-dashboard serves it; a driver killed mid-search and resumed leaves each trial in the study once.

The searches are other tests' (each search costs ~20 s of the suite's budget): the watched one is
tests/test_search.py's (tests/conftest.py ``watched_search``), the failed trials those of its search of
failures, the killed ones those of tests/test_cluster.py and tests/test_confirmation.py (helpers below)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import WATCHED_SEARCH_NAME, WATCHED_SEARCH_TRIALS

from benchmarks.local_servers import free_port, stop, wait_http
from tests.test_search import _command

#: the watched search (tests/conftest.py's ``watched_search``, tests/test_search.py's search)
NAME = WATCHED_SEARCH_NAME


def _read_trials(experiment: Path) -> dict[str, tuple[dict, list[dict]]]:
    """{trial id: (params.json, result.json's reports)} of the trial folders of a Tune run (not those of trials a
    killed driver had just started: no params.json yet)."""
    out = {}
    for folder in sorted(p for p in experiment.glob("trial_*") if (p / "params.json").is_file()):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").is_file() else []
        out[folder.name[len("trial_"):]] = (json.loads((folder / "params.json").read_text()),
                                            [json.loads(line) for line in lines])
    return out


def _expected(results: list[dict]) -> tuple[str, float | None, dict[int, float]]:
    """(state, value, intermediate values) the searcher should have told for a trial's reports: FAIL for its
    own error, COMPLETE at its final best val SumR, else PRUNED (ASHA stopped it); one value per epoch report."""
    epochs = {r["training_iteration"]: r["best_val_sumr"] for r in results
              if not r.get("finished") and "trial_error" not in r}
    last = results[-1] if results else {}
    if "trial_error" in last:
        return "FAIL", None, epochs
    if last.get("finished"):
        return "COMPLETE", last["best_val_sumr"], epochs
    return "PRUNED", None, epochs


def _tune_trial_ids(experiment: Path) -> list[str]:
    """The trial ids in Tune's newest experiment state (what the last run of a restored search knew)."""
    path = max(experiment.glob("experiment_state-*.json"))  # named by the session's start time; the sync at the
    # end of a run copies every session's file again, so their modification times are the same
    return [json.loads(t[0])["trial_id"] for t in json.loads(path.read_text())["trial_data"]]


def _by_ray_trial(study: optuna.Study) -> dict[str | None, list[optuna.trial.FrozenTrial]]:
    """The study's trials by their Ray trial id (None: a trial asked and killed before it was tagged)."""
    out: dict[str | None, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        out.setdefault(trial.user_attrs.get("trial_id"), []).append(trial)
    return out


@dataclass
class Watched:
    tmp: Path
    returncode: int
    stdout: str
    seen: list[dict]  # the watcher's reads
    ended: float  # when the driver was seen to have exited (time.time())

    @property
    def url(self) -> str:
        return f"sqlite:///{self.tmp / 'optuna.db'}"

    def study(self, name: str = NAME) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.url)


@pytest.fixture(scope="module")
def watched(watched_search) -> Watched:
    """A real search (tests/conftest.py: tests/test_search.py's 8 trials, complete and ASHA-stopped ones) watched
    by a second process. Trials that fail on their own: test_a_search_of_failed_trials_has_them_failed_in_the_study."""
    return Watched(watched_search.base, watched_search.returncode, watched_search.stdout + watched_search.stderr,
                   watched_search.seen, watched_search.ended)


def test_a_second_process_sees_the_trials_appear_while_the_search_runs(watched):
    assert watched.returncode == 0, watched.stdout[-3000:]
    during = [read["trials"] for read in watched.seen if read["time"] < watched.ended and read["trials"]]
    assert during, "the second process saw no trial before the driver ended"
    counts = [len(trials) for trials in during]
    assert counts == sorted(counts) and counts[0] < counts[-1], counts  # trials appeared one after another
    assert any(state == "RUNNING" and epochs > 0 for trials in during for _, state, epochs in trials), \
        "no epoch value was seen before its trial ended"
    assert any(state in ("COMPLETE", "PRUNED", "FAIL") for trials in during for _, state, _ in trials)
    assert len(watched.seen[-1]["trials"]) == WATCHED_SEARCH_TRIALS  # after the search: all of them


def assert_the_study_holds_what_the_searcher_told(url: str, name: str, experiment: Path, stdout: str) -> list[str]:
    """After a search (results in ``experiment``): its printed study (``url``) holds each trial once, in the state,
    with the value, the per-epoch values and the params its files say; returns the trials' states."""
    assert f"optuna study (search {name}): optuna-dashboard {url}\n" in stdout
    on_disk = _read_trials(experiment)
    study = optuna.load_study(study_name=name, storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and study.metric_names == ["best_val_sumr"]
    by_trial = _by_ray_trial(study)
    assert sorted(by_trial) == sorted(on_disk) and all(len(t) == 1 for t in by_trial.values())  # each once
    states = []
    for trial_id, (params, results) in on_disk.items():
        (ot_trial,) = by_trial[trial_id]
        state, value, epochs = _expected(results)
        states.append(state)
        assert ot_trial.state.name == state, (trial_id, results[-1])
        if state == "COMPLETE":
            assert ot_trial.value == value
        assert ot_trial.intermediate_values == epochs
        assert ot_trial.params and all(params[k] == v for k, v in ot_trial.params.items())
    return states


def test_after_the_search_the_study_holds_what_the_searcher_told_each_trial(watched):
    assert watched.returncode == 0, watched.stdout[-3000:]
    states = assert_the_study_holds_what_the_searcher_told(watched.url, NAME, watched.tmp / "results" / NAME,
                                                           watched.stdout)
    # the search made both; trials that fail on their own (FAIL): tests/test_search.py's search of failures
    assert {"COMPLETE", "PRUNED"} <= set(states), states


def dashboard_states(url: str, name: str, cwd: Path) -> dict[str, str]:
    """{Ray trial id: state} of study ``name`` as optuna-dashboard, serving ``url``, shows it."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("optuna-dashboard")), url, "--host", "127.0.0.1",
               "--port", str(port)]
    server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", 60, server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as response:
            (summary,) = [s for s in json.load(response)["study_summaries"] if s["study_name"] == name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=30) as r:
            detail = json.load(r)
    finally:
        stop(server)
    return {next(a["value"] for a in t["user_attrs"] if a["key"] == "trial_id"): t["state"].upper()
            for t in detail["trials"]}


def test_optuna_dashboard_serves_the_study(watched):
    pytest.importorskip("optuna_dashboard")
    assert watched.returncode == 0, watched.stdout[-3000:]
    shown = dashboard_states(watched.url, NAME, watched.tmp)
    on_disk = _read_trials(watched.tmp / "results" / NAME)
    assert shown == {trial_id: _expected(results)[0] for trial_id, (_, results) in on_disk.items()}


# ------------------------------------------------------------------ a driver killed mid-search and resumed
# (SIGKILL: the study can be ahead of Tune's last save of the searcher). Checked on the killed-and-resumed searches
# other tests run already, with the helpers below:
# tests/test_cluster.py::test_killed_driver_resumes_on_the_cluster_and_counts_every_trial_once (killed while every
# trial runs: RUNNING in the study at the kill) and
# tests/test_confirmation.py::test_confirmation_crowns_the_seed_mean_survives_a_killed_driver_and_is_exported
# (killed after the search's trials were told: they stay as told); the catch-up itself is tested without Ray below
# (test_a_restored_searcher_catches_up_with_its_storage).


def study_at_kill(url: str, name: str) -> dict[int, tuple[str | None, str]]:
    """{trial number: (Ray trial id, state)} of the study right after its driver was killed."""
    return {t.number: (t.user_attrs.get("trial_id"), t.state.name) for t in _study_trials(url, name)}


def assert_the_resumed_study_keeps_each_trial_once(url: str, name: str, experiment: Path, stdout: str,
                                                   before: dict[int, tuple[str | None, str]], trials: int) -> None:
    """After a killed search was resumed to its end: its study (``url``) holds every trial of Tune's run in
    ``experiment`` once, in the state and with the value its results say, nothing RUNNING, and what was told
    before the kill (``before``: ``study_at_kill``) as it was."""
    assert f"optuna study (search {name}): optuna-dashboard {url}\n" in stdout
    study = optuna.load_study(study_name=name, storage=url)
    found = study.get_trials(deepcopy=False)
    assert not [t.number for t in found if not t.state.is_finished()]  # nothing left RUNNING
    for number, (trial_id, state) in before.items():  # what was told before the kill stays as it was
        if state != "RUNNING":
            assert (found[number].user_attrs.get("trial_id"), found[number].state.name) == (trial_id, state)
    known = _tune_trial_ids(experiment)
    assert len(known) == trials
    by_trial = _by_ray_trial(study)
    assert all(len(by_trial[t]) == 1 for t in known)  # every trial of the resumed search once
    on_disk = _read_trials(experiment)
    for trial_id in known:  # and in the state its results say (told before or after the kill)
        (ot_trial,) = by_trial[trial_id]
        state, value, _ = _expected(on_disk[trial_id][1])
        assert ot_trial.state.name == state, (trial_id, on_disk[trial_id][1][-1])
        if state == "COMPLETE":
            assert math.isclose(ot_trial.value, value)
    for trial_id in set(by_trial) - set(known):  # asked after Tune's last save: Tune ran its config again
        assert trial_id is None or len(by_trial[trial_id]) == 1  # (None: asked, killed before it was tagged)
        for ot_trial in by_trial[trial_id]:  # abandoned, or it had ended before the kill and stays as told
            abandoned = ot_trial.state.name == "FAIL" and "abandoned" in ot_trial.user_attrs
            assert abandoned or before[ot_trial.number][1] == ot_trial.state.name != "RUNNING", ot_trial


def _study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as a reader sees them now ([] before the search created it)."""
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except Exception:
        return []


# ------------------------------------------------------------------ without Ray: the storage, its checks, a restore


def test_the_default_storage_is_beside_a_local_mlflow_store_else_in_the_local_results(tmp_path):
    from search.study_storage import default_url, resolve
    from tracking.storage import SearchStorage

    local = SearchStorage(str(tmp_path / "results" / "s"), str(tmp_path / "results"), None)
    on_s3 = SearchStorage("s3://bucket/prefix/s", "bucket/prefix", object())
    beside = f"sqlite:///{tmp_path / 'm' / 'optuna.db'}"
    assert default_url(f"sqlite:///{tmp_path / 'm' / 'mlflow.db'}", on_s3) == beside
    assert default_url("http://127.0.0.1:5000", local) == f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    assert default_url("http://127.0.0.1:5000", on_s3) is None
    assert resolve("none", "sqlite:///x/mlflow.db", local) is None
    assert resolve("postgresql://u:p@h/db", "sqlite:///x/mlflow.db", local) == "postgresql://u:p@h/db"
    assert resolve("j/study.log", "sqlite:///x/mlflow.db", local) == str(Path("j/study.log").resolve())


def test_a_new_search_whose_study_has_trials_elsewhere_is_refused_before_ray(tmp_path, run_cli_without_ray):
    from search.run import main

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    other = optuna.create_study(study_name="taken", storage=url, direction="maximize")
    other.tell(other.ask(), 1.0)  # another search of that name (under another --storage) told a trial
    result = run_cli_without_ray(main, *_command(tmp_path, "--name", "taken", "--validate-samples", "5")[2:],
                                 cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and lines == [f"error: an Optuna study named 'taken' already has trials in {url}: choose "
                                          "another --name, or another --optuna-storage"], result.stderr[-1500:]
    # an empty study of that name (a search that stopped before its first trial) is taken over: on to Ray
    optuna.create_study(study_name="empty", storage=url, direction="maximize")
    with pytest.raises(AssertionError, match="Ray session was started"):
        run_cli_without_ray(main, *_command(tmp_path, "--name", "empty", "--validate-samples", "5")[2:], cwd=tmp_path)


def test_resume_refuses_another_optuna_storage(tmp_path, run_cli_without_ray):
    from search.run import main
    from tracking.mlflow_runs import start_parent

    (tmp_path / "results" / "done").mkdir(parents=True)
    recorded = f"sqlite:///{tmp_path / 'optuna.db'}"
    start_parent(f"sqlite:///{tmp_path / 'mlflow.db'}", "prvr", "done", "base", resume=False, tags={},
                 params={"optuna_storage": recorded, "space": "base"})
    args = _command(tmp_path, "--name", "done", "--resume", "--validate-samples", "5")[2:]
    result = run_cli_without_ray(main, *args, "--optuna-storage", str(tmp_path / "j.log"), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr[-1500:]
    assert lines[0] == (f"error: --optuna-storage {tmp_path / 'j.log'} differs from search done's {recorded}: a "
                        "resumed search keeps its Optuna study where it started; leave --optuna-storage out")
    for same in ([], ["--optuna-storage", recorded]):  # left out, or the same: on to Ray
        with pytest.raises(AssertionError, match="Ray session was started"):
            run_cli_without_ray(main, *args, *same, cwd=tmp_path)


def _space(trial):
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_restored_searcher_catches_up_with_its_storage(tmp_path, kind):
    # what Tune does around a killed driver: it saves the searcher (a pickle), the driver goes on writing the
    # study, is killed; the resumed one unpickles tuner.pkl's searcher and restores the save into it
    import pickle

    from search.searcher import PruneAwareOptunaSearch
    from search.study_storage import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if kind == "sqlite" else str(tmp_path / "optuna.log")
    searcher = PruneAwareOptunaSearch(space=_space, metric="m", mode="max", study_name="s", storage=open_storage(url),
                                      sampler=optuna.samplers.RandomSampler(seed=0))
    pickled = pickle.dumps(searcher)  # tuner.pkl
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_result("a", {"m": 1.0, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # Tune's last save before the kill
    searcher.on_trial_result("a", {"m": 2.0, "training_iteration": 2})
    searcher.on_trial_complete("a", {"m": 2.0, "finished": True})  # told after the save
    searcher.suggest("d")  # asked after the save: Tune will run its config again under a new id
    searcher.on_trial_result("d", {"m": 0.1, "training_iteration": 1})

    resumed = pickle.loads(pickled)
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    resumed.on_trial_result("a", {"m": 1.0, "training_iteration": 1})  # trial a restarts from its checkpoint
    resumed.on_trial_result("a", {"m": 5.0, "training_iteration": 2})
    resumed.on_trial_complete("a", {"m": 5.0, "finished": True})  # not told again
    resumed.suggest("e")
    resumed.on_trial_result("b", {"m": 0.5, "training_iteration": 1})
    resumed.on_trial_complete("b", {"m": 0.6, "training_iteration": 2})  # stopped by the scheduler on epoch 2
    resumed.on_trial_complete("c", {"trial_error": "NonFiniteLoss", "finished": True, "m": float("-inf")})
    resumed.on_trial_result("e", {"m": 3.0, "training_iteration": 1})
    resumed.on_trial_complete("e", {"m": 3.0, "finished": True})

    storage = url if kind == "sqlite" else optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(url))
    seen = {t.user_attrs["trial_id"]: (t.state.name, t.value if t.state.name == "COMPLETE" else None,
                                       t.intermediate_values, "abandoned" in t.user_attrs)
            for t in optuna.load_study(study_name="s", storage=storage).get_trials()}
    assert seen == {"a": ("COMPLETE", 2.0, {1: 1.0, 2: 2.0}, False), "b": ("PRUNED", None, {1: 0.5, 2: 0.6}, False),
                    "c": ("FAIL", None, {}, False), "d": ("FAIL", None, {1: 0.1}, True),
                    "e": ("COMPLETE", 3.0, {1: 3.0}, False)}
    assert resumed.told == {"a": "COMPLETE", "b": "PRUNED", "c": "FAIL", "e": "COMPLETE"}
