"""The confirmation stage and the champion (``search/confirmation.py``, ``tracking/champion.py``): a search's
top configs retrained with more training seeds, the champion by mean best-val SumR over seeds, a driver
killed during the stage and resumed, one MLflow run per confirmation trial, the report and the export.

The champion and its statistics are checked against values computed here from the raw files the trials
left in the search's storage (``params.json``, ``result.json``), not through the project's readers."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from scipy import stats

from tests.test_optuna_dashboard import assert_the_resumed_study_keeps_each_trial_once, study_at_kill
from tests.test_search import TINY_MODEL, _command, _env, mlflow_runs, run_search, tracking_uri

CONFIRMATION_ARGS = ["--data", "ci", "--space", "base", "--backbones", "mssl", "--trials", "3", "--max-epochs", "3",
                     "--scheduler", "none", "--confirm-top", "2", "--confirm-seeds", "2", "--name", "c", *TINY_MODEL]


# ------------------------------------------------------------------ the stored results, read independently


def _trials(folder: Path) -> dict[str, tuple[dict, list[dict]]]:
    """{trial id: (params.json, result.json lines)} of the Tune run in ``folder``. A folder without
    params.json is left out: a trial a killed driver had started, whose worker stored a checkpoint before
    the driver wrote anything (seen), and which the restored run started again under a new id."""
    out = {}
    for trial in sorted(folder.glob("trial_*")):
        if not (trial / "params.json").is_file():
            continue
        params = json.loads((trial / "params.json").read_text())
        lines = (trial / "result.json").read_text().splitlines() if (trial / "result.json").is_file() else []
        out[trial.name[len("trial_"):]] = (params, [json.loads(line) for line in lines if line.strip()])
    return out


def _finished(results: list[dict]) -> bool:
    return bool(results) and bool(results[-1].get("finished")) and "trial_error" not in results[-1]


def _best(results: list[dict]) -> float:
    return float(results[-1]["best_val_sumr"])


def _setting_key(params: dict) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "seed" and not k.startswith("tag.")}, sort_keys=True)


# ------------------------------------------------------------------ the champion, from planted results


def _plant(folder: Path, trial_id: str, config: dict, best_val: float, test: float, finished: bool = True) -> None:
    trial = folder / f"trial_{trial_id}"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(config))
    lines = [{"epoch": 1, "best_val_sumr": best_val - 1}, {"epoch": 2, "best_val_sumr": best_val}]
    if finished:
        lines.append({"epoch": 2, "best_val_sumr": best_val, "finished": True, "test_sumr": test})
    (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_planted_lucky_seed_is_not_crowned(tmp_path):
    """Search trial L's single run is the best (a lucky seed), but its config's seed mean is below S's."""
    from search.confirmation import plan
    from tracking.champion import seed_stats, selection, selection_table
    from tracking.search_results import load_search

    search = tmp_path / "results" / "p"
    lucky, steady, other = ({"backbone": "mssl", "lr": lr, "seed": 0} for lr in (0.1, 0.2, 0.3))
    _plant(search, "L", lucky, 300.0, 290.0)
    _plant(search, "S", steady, 290.0, 280.0)
    _plant(search, "O", other, 200.0, 190.0)
    _plant(search, "D", dict(lucky), 250.0, 240.0)  # L's config again (sampled twice): counts once
    _plant(search, "X", {"backbone": "mssl", "lr": 0.9, "seed": 0}, 999.0, 0.0, finished=False)  # stopped early

    stored = load_search(str(tmp_path / "results"), "p")
    configs = plan(stored, top=2, seeds=2)
    assert [(c["tag.confirmation_of"], c["seed"]) for c in configs] == [("L", 1), ("L", 2), ("S", 1), ("S", 2)]
    assert all(c["tag.stage"] == "confirmation" and c["lr"] == {"L": 0.1, "S": 0.2}[c["tag.confirmation_of"]]
               for c in configs)

    confirmation = search / "confirmation"
    for i, (source, config, values) in enumerate([("L", lucky, (200.0, 210.0)), ("S", steady, (285.0, 288.0))]):
        for seed, value in zip((1, 2), values):
            _plant(confirmation, f"c{i}{seed}", {**config, "seed": seed, "tag.confirmation_of": source}, value,
                   value - 5)
    # a run a killed driver left behind for S's seed 1, which the restored stage ran again: it does not count
    _plant(confirmation, "c01x", {**steady, "seed": 1, "tag.confirmation_of": "S"}, 999.0, 0.0, finished=False)
    # a seed whose only run failed is reported as unfinished, not averaged
    _plant(confirmation, "c13", {**lucky, "seed": 3, "tag.confirmation_of": "L"}, 500.0, 0.0, finished=False)

    chosen = selection(load_search(str(tmp_path / "results"), "p"))
    assert chosen.single_run_pick.trial_id == "L" and chosen.champion.source.trial_id == "S" and not chosen.agrees
    champion = chosen.champion
    assert champion.seeds == [0, 1, 2] and [r.trial_id for r in champion.runs] == ["S", "c11", "c12"]
    assert champion.val.mean == pytest.approx(statistics.mean([290.0, 285.0, 288.0]))
    assert champion.val.std == pytest.approx(statistics.stdev([290.0, 285.0, 288.0]))
    half = stats.t.ppf(0.975, 2) * statistics.stdev([290.0, 285.0, 288.0]) / math.sqrt(3)
    assert (champion.val.low, champion.val.high) == pytest.approx((287.667 - half, 287.667 + half), abs=1e-3)
    assert champion.test.mean == pytest.approx(statistics.mean([280.0, 280.0, 283.0]))
    assert champion.best_run.trial_id == "S"  # its best seed: the search's own run (290)
    runner_up = chosen.confirmed[1]
    assert runner_up.source.trial_id == "L" and [t.trial_id for t in runner_up.unfinished] == ["c13"]
    assert runner_up.val.mean == pytest.approx(statistics.mean([300.0, 200.0, 210.0]))
    table = selection_table(chosen)
    assert "champion: S " in table and "single-run ranking: picks L (best val SumR 300.0), a different config" in table
    assert "(1 unfinished)" in table and "does not exceed the seed SD" not in table  # lead 50.3 vs SD ~39
    assert seed_stats([3.0]).std == 0.0 and math.isnan(seed_stats([3.0]).low)


# ------------------------------------------------------------------ a real search, killed during confirmation


def _wait_for_a_finished_confirmation_trial(folder: Path, driver: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 400
    while time.time() < deadline:
        assert driver.poll() is None, log.read_text()[-3000:]
        if any(_finished(results) for _, results in _trials(folder).values()):
            return
        time.sleep(0.3)
    raise AssertionError("no confirmation trial finished in time")


def test_confirmation_crowns_the_seed_mean_survives_a_killed_driver_and_is_exported(tmp_path, capsys, monkeypatch):
    experiment = tmp_path / "results" / "c"
    confirmation = experiment / "confirmation"
    log = tmp_path / "driver.log"
    with open(log, "w") as handle:
        driver = subprocess.Popen(_command(tmp_path, *CONFIRMATION_ARGS), cwd=tmp_path, env=_env(tmp_path),
                                  stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    ray_dirs = set(Path(tempfile.gettempdir()).glob("prvr-ray-*"))
    try:
        _wait_for_a_finished_confirmation_trial(confirmation, driver, log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, nothing else
        driver.wait(timeout=60)
        for orphan in set(Path(tempfile.gettempdir()).glob("prvr-ray-*")) - ray_dirs:
            shutil.rmtree(orphan, ignore_errors=True)
    done_before = {t: json.dumps(results) for t, (_, results) in _trials(confirmation).items() if _finished(results)}
    study_url = f"sqlite:///{tmp_path / 'optuna.db'}"  # the search's Optuna study, beside its MLflow store
    at_kill = study_at_kill(study_url, "c")
    assert sorted(state for _, state in at_kill.values()) == ["COMPLETE"] * 3, at_kill  # the search's, all told
    assert 1 <= len(done_before) < 4, "the kill did not land during the confirmation stage"
    # the search's 3 trials had ended: the commands below may only have been printed since the search ended
    assert "confirmation: the 2 best configs of the search (--confirm-top 2), each retrained with 2 more" \
           in log.read_text()

    # CONFIRMATION_ARGS has --confirm-top 2: resuming with another value still continues the stage's own plan
    at = CONFIRMATION_ARGS.index("--confirm-top") + 1
    resumed = run_search(tmp_path, *CONFIRMATION_ARGS[:at], "3", *CONFIRMATION_ARGS[at + 1:], "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "confirmation: continuing the stage in" in resumed.stdout
    # the study keeps the search's trials as told before the kill, each once (tests/test_optuna_dashboard.py)
    assert_the_resumed_study_keeps_each_trial_once(study_url, "c", experiment, resumed.stdout, at_kill, trials=3)

    # the plan, computed here: the 2 best distinct finished configs of the search, seeds 1 and 2 each
    search = _trials(experiment)
    assert len(search) == 3 and all(_finished(results) for _, results in search.values())
    ranked = sorted(search, key=lambda t: (-_best(search[t][1]), t))
    top, seen = [], set()
    for trial in ranked:
        if _setting_key(search[trial][0]) not in seen and len(top) < 2:
            seen.add(_setting_key(search[trial][0]))
            top.append(trial)
    confirmed = _trials(confirmation)
    finished_runs: dict[tuple[str, int], list[str]] = {}
    for trial, (params, results) in confirmed.items():
        assert params["tag.stage"] == "confirmation"
        assert _setting_key(params) == _setting_key(search[params["tag.confirmation_of"]][0])
        if _finished(results):
            finished_runs.setdefault((params["tag.confirmation_of"], params["seed"]), []).append(trial)
    assert sorted(finished_runs) == sorted((source, seed) for source in top for seed in (1, 2))
    assert all(len(runs) == 1 for runs in finished_runs.values()), finished_runs  # no run twice
    for trial, before in done_before.items():  # a confirmation trial that had finished was not run again
        assert json.dumps(confirmed[trial][1]) == before

    # the champion: the highest mean best-val SumR over the search's run and its confirmation runs
    values = {source: [_best(search[source][1])] + [_best(confirmed[finished_runs[(source, seed)][0]][1])
                                                   for seed in (1, 2)] for source in top}
    champion = min(top, key=lambda s: (-statistics.mean(values[s]), s))
    runs_of_champion = [champion] + [finished_runs[(champion, seed)][0] for seed in (1, 2)]
    everything = {**{t: r for t, (_, r) in search.items()}, **{t: r for t, (_, r) in confirmed.items()}}
    best_run = min(runs_of_champion, key=lambda t: (-_best(everything[t]), t))
    out = resumed.stdout
    assert f"\nchampion: {champion} (" in out and f"its best seed's run {best_run} " in out
    assert f"single-run ranking: picks {ranked[0]} " in out
    mean, sd = statistics.mean(values[champion]), statistics.stdev(values[champion])
    assert f"{mean:.1f} +- {sd:.1f}" in out

    parent, children = mlflow_runs(tmp_path, "c")
    assert parent.info.status == "FINISHED"
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["champion_trial_id"] == champion and tags["champion_run_trial_id"] == best_run
    assert tags["single_run_pick"] == ranked[0] == tags["best_trial_id"]
    assert tags["champion_agrees_with_single_run"] == str(champion == ranked[0]).lower()
    assert metrics["champion_val_sumr_mean"] == pytest.approx(mean)
    assert metrics["champion_val_sumr_std"] == pytest.approx(sd)
    assert metrics["champion_test_sumr_mean"] == pytest.approx(
        statistics.mean(float(everything[t][-1]["test_sumr"]) for t in runs_of_champion))
    # exactly one MLflow run per confirmation trial Tune ran (one left behind by the kill is deleted), tagged
    confirmation_runs = [r for r in children if "confirmation_of" in r.data.tags]
    assert sorted(r.data.tags["prvr.trial_id"] for r in confirmation_runs) == sorted(
        runs[0] for runs in finished_runs.values())
    for run in confirmation_runs:
        params = confirmed[run.data.tags["prvr.trial_id"]][0]
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "confirmation"
        assert run.data.tags["confirmation_of"] == params["tag.confirmation_of"]
        assert run.data.tags["seed"] == str(params["seed"])
    assert sorted(r.data.tags["prvr.trial_id"] for r in children if "confirmation_of" not in r.data.tags) == \
        sorted(search)

    from mlflow.tracking import MlflowClient

    page = Path(MlflowClient(tracking_uri(tmp_path)).download_artifacts(parent.info.run_id, "report/report.html",
                                                                       str(tmp_path))).read_text()
    assert f'<b id="champion">{champion}</b>' in page and 'id="confirmation"' in page

    # the export takes the champion's best seed by default, with the seed statistics in its provenance
    from search.cli import run_main
    from search.export import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRVR_DATA_DIR", str(tmp_path / "data"))
    capsys.readouterr()
    code = run_main(main, ["--name", "c", "--storage", str(tmp_path / "results"), "--tracking-uri",
                           tracking_uri(tmp_path), "--no-register", "--out", str(tmp_path / "export")])
    assert code == 0, capsys.readouterr().err
    provenance = json.loads((tmp_path / "export" / "provenance.json").read_text())
    assert provenance["trial_id"] == best_run and provenance["selection"]["champion"] == champion
    (exported,) = [c for c in provenance["selection"]["configs"] if c["source_trial"] == champion]
    assert exported["val_sumr"]["mean"] == pytest.approx(mean) and exported["seeds"] == [0, 1, 2]
    assert f"exported trial {best_run} (the champion {champion}'s best seed)" in capsys.readouterr().out
