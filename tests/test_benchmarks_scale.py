"""benchmarks/scale.py: its --quick run writes every size's times and peak memory and the fitted exponents."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fit_exponent_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    scale = _load_script()
    assert scale.fit_exponent([1, 2, 4], [3.0, 6.0, 12.0]) == pytest.approx(1.0)
    assert scale.fit_exponent([1, 2, 4], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert math.isnan(scale.fit_exponent([1, 2, 4], [1.0, 0.0, 2.0]))
    assert scale.fit_line([1, 2, 4], [3.0, 5.0, 9.0]) == pytest.approx((1.0, 2.0))
    assert scale.verdict(1.1, (0.8, 1.25)) and not scale.verdict(1.4, (0.8, 1.25))
    assert not scale.verdict(math.nan, (None, 1.25))
    from search.cli import run_main

    assert run_main(scale.main, ["--quick", "--reps", "0"]) == 2
    assert run_main(scale.main, ["--backbones", "nosuch"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --reps must be >= 1, got 0",
        "error: unknown backbone 'nosuch'; known: " + ", ".join(scale.list_backbones()),
    ]


def test_quick_run_writes_sane_json(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), "--quick", "--backbones", "mssl", "--reps", "1", "--videos", "16",
               "--fixed-queries", "64", "--queries", "400", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["omp_num_threads"] == "1" and result["reps"] == 1 and result["quick"] is True
    rows = {(r["sweep"], r["factor"]): r for r in result["rows"]}
    assert sorted(rows) == [(s, f) for s in ("queries", "videos") for f in (1, 2, 4)]
    sizes = result["sizes"]
    for f in (1, 2, 4):
        assert (rows["videos", f]["videos"], rows["videos", f]["queries"]) == (sizes["videos"] * f,
                                                                               sizes["fixed_queries"])
        assert (rows["queries", f]["videos"], rows["queries", f]["queries"]) == (sizes["fixed_videos"],
                                                                                 sizes["queries"] * f)
    for row in rows.values():
        assert len(row["wall_s"]) == 1 and row["wall_median_s"] > 0 and row["cpu_median_s"] > 0
        assert row["baseline_mb"] > 50 and 0 < row["growth_mb"] < 2000  # torch alone is > 50 MB resident
        assert row["peak_mb"] == pytest.approx(row["baseline_mb"] + row["growth_mb"])
        assert "clear_refs" in row["memory_method"] or "ru_maxrss" in row["memory_method"]
    for sweep in ("videos", "queries"):  # four times the work takes clearly more CPU than the 1x size
        assert rows[sweep, 4]["cpu_median_s"] > 1.5 * rows[sweep, 1]["cpu_median_s"]
    # video encodings are kept for the whole evaluation: 4x the videos needs more memory than 1x
    assert rows["videos", 4]["growth_mb"] > rows["videos", 1]["growth_mb"]
    fits = {(f["sweep"], f["metric"]): f for f in result["fits"]}
    assert sorted(fits) == sorted((s, m) for s in ("videos", "queries") for m in ("time", "cpu time", "memory"))
    for (_sweep, metric), fit in fits.items():
        assert math.isfinite(fit["b"])
        assert ("passed" in fit) == (metric != "cpu time")
    assert result["passed"] == all(f["passed"] for f in fits.values() if "passed" in f)
    # the printed verdict is the one of the fits' figures, not merely one of the two words
    expected = "PASS" if all(f["passed"] for f in fits.values() if "passed" in f) else "FAIL"
    assert f"overall: {expected}" in done.stdout
