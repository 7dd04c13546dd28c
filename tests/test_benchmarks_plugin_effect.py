"""benchmarks/plugin_effect.py: each run's per-query test ranks are stored, and the printed ablation
statistics (paired difference to base over seeds, t interval) match a computation made here from them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_effect_reports_paired_statistics_from_the_stored_runs(tmp_path):
    results = tmp_path / "plugins.json"
    command = [sys.executable, "-m", "benchmarks.plugin_effect", "--data", "tiny", "--backbones", "mssl", "amdnet",
               "--variants", "base", "ral", "--seeds", "0", "1", "2", "--epochs", "2", "--set", "hidden_size=32",
               "--resamples", "200", "--json", str(results)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(results.read_text())

    sumr = {}
    for seed in (0, 1, 2):
        for variant in ("base", "ral"):
            run = runs[f"tiny/mssl/{variant}/{seed}/2"]
            ranks = np.asarray(run["ranks"])
            # the stored ranks are the test metrics' own: SumR = sum over k of 100 * mean(rank <= k)
            assert abs(sum(100 * np.mean(ranks <= k) for k in (1, 5, 10, 100)) - run["test"]["SumR"]) < 1e-6
            sumr[variant, seed] = run["test"]["SumR"]
    differences = np.array([sumr["ral", s] - sumr["base", s] for s in (0, 1, 2)])
    mean, sem = differences.mean(), differences.std(ddof=1) / np.sqrt(3)
    low, high = mean - stats.t.ppf(0.975, 2) * sem, mean + stats.t.ppf(0.975, 2) * sem

    row = next(line for line in done.stdout.splitlines() if line.startswith("| ral |"))
    printed = re.search(r"\| ([+-]\d+\.\d) \[(-?\d+\.\d), (-?\d+\.\d)\] \|", row)
    assert printed, row
    assert [float(x) for x in printed.groups()] == [float(f"{x:.1f}") for x in (mean, low, high)]
    # a backbone that rejects the variant says why instead of a row of numbers
    assert "tiny / amdnet / ral: n/a: plugin ral cannot run on backbone amdnet" in done.stdout
    assert "amdnet/ral/0" not in " ".join(runs)
