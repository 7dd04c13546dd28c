"""The search-efficiency benchmark's core: epochs to random search's best, speed-ups, medians over seeds,
PASS/FAIL and the printed table, on hand-made epoch-report streams (the searches themselves take about a
minute even in ``--quick`` mode: ``python benchmarks/search_efficiency.py --quick``)."""

from __future__ import annotations

import json

import pytest

from benchmarks.search_efficiency import (BASELINE, _check_args, _parser, analyse, compared, epochs_to_reach, report,
                                          summarise)


def _searches(random: list[float], pruned: list[float], complete: list[float]) -> dict[str, dict]:
    return {"random": {"scores": random}, "asha-tpe-pruned": {"scores": pruned},
            "asha-tpe-complete": {"scores": complete}}


def test_epochs_to_random_best_speedups_and_summary():
    assert BASELINE == "random"
    assert epochs_to_reach([100.0, 150.0, 149.0, 150.0], 150.0) == 2  # the first report at or above it
    assert epochs_to_reach([100.0, 120.0], 150.0) is None

    # seed 0: random's best (150) at its 6th epoch report; pruned reaches it at its 3rd; complete never
    # (and not 95% of it, 142.5, either); seed 1: random's best at its 8th report, pruned at its 2nd,
    # complete at its 4th
    seed0 = analyse(_searches([100, 120, 130, 125, 140, 150], [100, 120, 150, 110], [100, 110, 120]))
    seed1 = analyse(_searches([90, 95, 100, 101, 102, 103, 104, 105], [95, 105, 106], [95, 96, 97, 105.5]))
    assert seed0["target"] == 150 and seed0["target_95"] == 142.5
    rows = seed0["strategies"]
    assert rows["random"] == {"epochs": 6, "best_val_sumr": 150, "epochs_to_target": 6, "epochs_to_target_95": 6,
                              "reached": True, "speedup": 1.0, "speedup_95": 1.0}
    assert (rows["asha-tpe-pruned"]["epochs_to_target"], rows["asha-tpe-pruned"]["speedup"]) == (3, 2.0)
    assert rows["asha-tpe-complete"]["reached"] is False
    assert rows["asha-tpe-complete"]["speedup"] == 0.0 and rows["asha-tpe-complete"]["speedup_95"] == 0.0
    # 95% of 105 is 99.75: random reaches it at its 3rd report, pruned and complete at their 2nd and 4th
    assert seed1["strategies"]["asha-tpe-pruned"]["speedup"] == 4.0
    assert seed1["strategies"]["asha-tpe-pruned"]["speedup_95"] == 1.5
    assert seed1["strategies"]["asha-tpe-complete"]["speedup"] == 2.0

    summary = summarise({0: seed0, 1: seed1})
    pruned, complete = summary["asha-tpe-pruned"], summary["asha-tpe-complete"]
    assert pruned["median_speedup"] == 3.0 and pruned["pass"] is True and pruned["seeds_reached"] == 2
    assert complete["median_speedup"] == 1.0 and complete["pass"] is False and complete["seeds_reached"] == 1
    effect = summary["pruned_vs_complete"]
    assert effect["seeds_both_reached"] == 1 and effect["median_epochs_ratio_complete_over_pruned"] == 2.0
    assert effect["median_best_val_sumr_difference"] == (30 + 0.5) / 2

    results = {"settings": {"data": "ci", "space": "base", "backbones": ["mssl"], "set": ["hidden_size=32"],
                            "trials": 4, "max_epochs": 8, "concurrency": 2, "grace_epochs": 2,
                            "reduction_factor": 4.0},
               "per_seed": {0: seed0, 1: seed1}, "summary": summary, "wall_seconds": 1.0}
    table = report(results)
    assert "4 trials x <= 8 epochs, concurrency 2, ASHA grace 2 epoch(s), reduction factor 4" in table
    assert "not reached (>3)" in table
    assert "median speed-up 3.00x (target >= 3x: PASS)" in table
    assert "median speed-up 1.00x (target >= 3x: FAIL)" in table
    json.dumps(results)  # what the script writes

    # --strategies random asha-tpe-pruned: the same figures for pruned, no complete, no pruned-vs-complete line
    for seed in (seed0, seed1):
        del seed["strategies"]["asha-tpe-complete"]
    assert [strategy.name for strategy in compared({0: seed0, 1: seed1})] == ["asha-tpe-pruned"]
    partial = summarise({0: seed0, 1: seed1})
    assert set(partial) == {"asha-tpe-pruned"} and partial["asha-tpe-pruned"] == pruned
    table = report({**results, "per_seed": {0: seed0, 1: seed1}, "summary": partial})
    assert "median speed-up 3.00x (target >= 3x: PASS)" in table
    assert "COMPLETE" not in table and "pruned vs complete" not in table and table.endswith("wall time 1s")


def test_asha_settings_are_checked():
    """The ASHA settings and strategies given are the ones checked (a reduction factor <= 1 would never stop a
    trial; a search without random has no target)."""
    _check_args(_parser().parse_args([]))  # the defaults
    _check_args(_parser().parse_args(["--reduction-factor", "3", "--grace-epochs", "2"]))
    _check_args(_parser().parse_args(["--strategies", "asha-tpe-complete", "random"]))
    for argv, flag in [(["--reduction-factor", "1"], "--reduction-factor"), (["--grace-epochs", "0"], "--grace-epochs"),
                       (["--seeds", "0", "0"], "--seeds"), (["--strategies", "asha-tpe-pruned"], "--strategies"),
                       (["--strategies", "random"], "--strategies"),
                       (["--strategies", "random", "asha-tpe"], "unknown asha-tpe")]:
        with pytest.raises(ValueError, match=flag):
            _check_args(_parser().parse_args(argv))
