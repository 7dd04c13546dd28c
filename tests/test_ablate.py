"""The ablation command as a user runs it (real local Ray, MLflow store in the test's folder): cells x
seeds as trials, tables whose numbers match the trials' own results, and one-line errors before Ray."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = "backbone: mssl\nhidden_size: 16\nn_heads: 2\nepochs: 2\nral: true\nral.k: 2\n"


def _command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "search/ablate.py"), "--data", "tiny", "--storage", str(tmp_path / "results"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", *args]


def _run(tmp_path: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRVR_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(_command(tmp_path, *args), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ablation")
    (folder / "base.yaml").write_text(BASE)
    result = _run(folder, "--base", "base.yaml", "--components", "ral", "--seeds", "2", "--name", "a1",
                  "--out", str(folder / "out"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return folder, result


def test_ablation_runs_every_cell_and_seed_and_its_table_matches_the_trials(ablation):
    folder, result = ablation
    trials = {}
    for trial in sorted((folder / "results" / "a1").glob("trial_*")):
        config = json.loads((trial / "params.json").read_text())
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        assert last["finished"] and config["tag.ablation"] == "a1"
        # the base's plugin settings are held in the cell with the plugin, and gone from the cell without
        assert config.get("ral.k") == (2 if config["ral"] else None)
        trials[(config["tag.cell"], config["seed"])] = last
    assert sorted(trials) == [("+ral", 0), ("+ral", 1), ("base", 0), ("base", 1)]

    rows = {r["cell"]: r for r in csv.DictReader((folder / "out" / "ablation.csv").open())}
    for cell in ("base", "+ral"):
        sumr = [trials[(cell, seed)]["test_sumr"] for seed in (0, 1)]
        assert float(rows[cell]["SumR mean"]) == pytest.approx(np.mean(sumr))
        assert float(rows[cell]["SumR std"]) == pytest.approx(np.std(sumr, ddof=1))
        r1 = [trials[(cell, seed)]["test_r1"] for seed in (0, 1)]
        assert float(rows[cell]["R@1 mean"]) == pytest.approx(np.mean(r1))
    delta = [trials[("+ral", s)]["test_sumr"] - trials[("base", s)]["test_sumr"] for s in (0, 1)]
    assert float(rows["+ral"]["dSumR"]) == pytest.approx(np.mean(delta))
    delta_r5 = [trials[("+ral", s)]["test_r5"] - trials[("base", s)]["test_r5"] for s in (0, 1)]
    assert float(rows["+ral"]["dR@5"]) == pytest.approx(np.mean(delta_r5))  # every metric's delta in the CSV
    low, high = float(rows["+ral"]["dSumR bootstrap low"]), float(rows["+ral"]["dSumR bootstrap high"])
    assert low <= np.mean(delta) + 1e-9 and high >= np.mean(delta) - 1e-9  # the bootstrap brackets its estimate
    markdown = (folder / "out" / "ablation.md").read_text()
    assert "| +ral |" in markdown and "Wilcoxon" in markdown and "paired bootstrap" in markdown
    assert "### mssl" in result.stdout and (folder / "out" / "ablation.png").stat().st_size > 1000


def test_ablation_logs_one_parent_and_one_tagged_child_per_cell_and_seed(ablation):
    from mlflow.tracking import MlflowClient

    folder, _ = ablation
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'm.db'}")
    experiment = client.get_experiment_by_name("prvr")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`prvr.ablation` = 'a1'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted((r.data.tags["cell"], r.data.tags["seed"]) for r in children) == \
        [("+ral", "0"), ("+ral", "1"), ("base", "0"), ("base", "1")]
    assert {r.info.status for r in children} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert all(r.data.tags["ablation"] == "a1" and "tag.cell" not in r.data.params for r in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= \
        {"ablation.md", "ablation.csv", "ablation.png", "ablation.json"}


@pytest.mark.parametrize(("args", "fragment"), [
    (["--components", "nosuch"], "cell base on mssl: mssl: unknown option 'nosuch'"),
    (["--components", "ral", "--backbones", "meanpool", "--set", "ral.csa=true"],
     "cell +ral on meanpool: plugin ral cannot run on backbone meanpool"),
    (["--components", "ral=1"], "ablation component 'ral=1'"),
    (["--components", "ral", "--design", "grid"], "invalid choice: 'grid'"),
    (["--components", "ral.k=1,["], "ablation component 'ral.k=1,[': a value of ral.k is not valid YAML"),  # issue 21
    (["--components", "ral", "--set", "margin=[unclosed"], "--set margin: '[unclosed' is not a valid value"),
    (["--components", "ral", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray cluster answers"),
])
def test_bad_ablation_input_fails_before_ray_with_one_line(tmp_path, run_cli_without_ray, args, fragment):
    from search.ablate import main

    (tmp_path / "base.yaml").write_text(BASE)
    result = run_cli_without_ray(main, *_command(tmp_path, "--base", "base.yaml", *args)[2:], cwd=tmp_path)
    assert result.code == 2 and fragment in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error:") or "usage:" in result.stderr
    assert not list((tmp_path / "results").glob("*/trial_*"))  # nothing ran


def test_ablation_refuses_a_bad_base_an_unfinished_search_and_an_existing_output(tmp_path, run_cli_without_ray):
    from search.ablate import main

    (tmp_path / "bad.yaml").write_text("backbone: [unclosed\n")
    (tmp_path / "out").mkdir()
    cases = [(["--base", "bad.yaml", "--components", "ral"], "--base bad.yaml: not valid YAML"),
             (["--base", "missing.yaml", "--components", "ral"], "--base missing.yaml: No such file"),
             (["--from-search", "gone", "--components", "ral"], "no search 'gone' in"),
             (["--base", "bad.yaml", "--components", "ral", "--out", "out"], "already exists")]
    for args, fragment in cases:
        result = run_cli_without_ray(main, *_command(tmp_path, *args)[2:], cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr[-1500:])
