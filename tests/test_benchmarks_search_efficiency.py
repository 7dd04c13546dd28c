"""The search-efficiency benchmark's analysis: incumbents, anytime curves, epochs to random's final quality,
speed-ups, medians, IQR, PASS/FAIL, the best strategy and the printed table, on hand-made records of searches
(epoch reports and trial ends in the driver's order) and a hand-made quality table. The searches and quality
runs themselves take minutes even in ``--quick`` mode: ``python benchmarks/search_efficiency.py --quick``."""

from __future__ import annotations

import json

import pytest

from benchmarks.runs import parse_args
from benchmarks.search_efficiency import (
    BASELINE,
    DEFAULT_STRATEGIES,
    QUICK,
    TARGET_STRATEGY,
    _check_args,
    _checked_record,
    _parser,
    analyse_repetition,
    anytime_curve,
    champion_disagrees,
    config_key,
    epochs_to_quality,
    incumbent_configs,
    incumbents,
    median_curve,
    plot,
    quality_jobs,
    quality_seeds,
    quartiles,
    report,
    speedup,
    summarise,
    total_epochs,
    value_at,
)


def E(trial: str, epoch: int, score: float) -> list:
    return ["epoch", trial, epoch, score]


def END(trial: str, status: str, score: float | None) -> list:
    return ["end", trial, status, score]


# Repetition 0. random: a finishes at epoch 3 (single run 120), b at 4 (95: a stays), c at 6 (140: c takes over)
RANDOM_0 = [E("a", 1, 100.0), E("b", 1, 90.0), E("a", 2, 120.0), END("a", "finished", 120.0),
            E("b", 2, 95.0), END("b", "finished", 95.0),
            E("c", 1, 130.0), E("c", 2, 140.0), END("c", "finished", 140.0)]
# ASHA + TPE: p1 finishes after 1 epoch; p2 has the best single run (210) but the scheduler stopped it: it must
# never be the incumbent; p3 finishes after 3 epochs (155 > 150: the incumbent)
PRUNED_0 = [E("p1", 1, 150.0), END("p1", "finished", 150.0), E("p2", 1, 210.0), END("p2", "stopped", 210.0),
            E("p3", 1, 155.0), END("p3", "finished", 155.0)]
# TPE: t1 failed (never an incumbent), t2 finishes after 4 epochs
TPE_0 = [E("t1", 1, 100.0), E("t1", 2, 101.0), END("t1", "failed", None),
         E("t2", 1, 90.0), E("t2", 2, 92.0), END("t2", "finished", 92.0)]
# Repetition 1. random: a (100) at 1, b ties a (100; a stays: ties by trial id), c (102) at 4, d (90) at 8
RANDOM_1 = [E("a", 1, 100.0), END("a", "finished", 100.0), E("b", 1, 100.0), END("b", "finished", 100.0),
            E("c", 1, 101.0), E("c", 2, 102.0), END("c", "finished", 102.0),
            E("d", 1, 90.0), E("d", 2, 90.0), E("d", 3, 90.0), E("d", 4, 90.0), END("d", "finished", 90.0)]
PRUNED_1 = [E("p1", 1, 120.0), END("p1", "finished", 120.0)]
TPE_1 = [E("t1", 1, 50.0), E("t1", 2, 60.0), END("t1", "finished", 60.0)]

# seed-mean qualities of the configs (key = "<rep>:<trial>")
QUALITY = {"0:a": 110.0, "0:b": 115.0, "0:c": 105.0, "0:p1": 106.0, "0:p2": 300.0, "0:p3": 104.0, "0:t1": 500.0,
           "0:t2": 100.0, "1:a": 95.0, "1:b": 400.0, "1:c": 112.0, "1:d": 50.0, "1:p1": 113.0, "1:t1": 112.0}


def _search(rep: int, stream: list) -> dict:
    trials = {event[1] for event in stream}
    return {"stream": stream, "config_keys": {t: f"{rep}:{t}" for t in trials},
            "configs": {t: {"name": f"{rep}:{t}", "seed": rep} for t in trials}}


def _rep(rep: int, quality: dict[str, float] = QUALITY) -> dict:
    streams = {0: (RANDOM_0, TPE_0, PRUNED_0), 1: (RANDOM_1, TPE_1, PRUNED_1)}[rep]
    searches = {name: _search(rep, stream) for name, stream in zip(("random", "tpe", TARGET_STRATEGY), streams)}
    return analyse_repetition(searches, quality)


STRATEGIES = ["random", "tpe", TARGET_STRATEGY]


def test_incumbents_are_finished_trials_only_best_single_run_so_far_ties_by_trial_id():
    assert incumbents(RANDOM_0) == [(3, "a", 120.0), (4, "a", 120.0), (6, "c", 140.0)]
    assert incumbents(PRUNED_0) == [(1, "p1", 150.0), (3, "p3", 155.0)]  # p2 (210, stopped) never
    assert incumbents(TPE_0) == [(4, "t2", 92.0)]  # t1 failed
    assert incumbents(RANDOM_1) == [(1, "a", 100.0), (2, "a", 100.0), (4, "c", 102.0), (8, "c", 102.0)]
    assert [total_epochs(s) for s in (RANDOM_0, PRUNED_0, TPE_0, RANDOM_1)] == [6, 3, 4, 8]  # ends are not epochs
    assert incumbents([E("x", 1, 5.0)]) == []


def test_anytime_curve_value_at_and_epochs_to_quality():
    curve = anytime_curve(RANDOM_0, _search(0, RANDOM_0)["config_keys"], QUALITY)
    assert curve == [[3, 110.0, "a"], [4, 110.0, "a"], [6, 105.0, "c"]]  # the incumbent's quality, not its run
    assert [value_at(curve, x) for x in (1, 2, 3, 5, 6, 100)] == [None, None, 110.0, 110.0, 105.0, 105.0]
    assert epochs_to_quality(curve, 105.0) == 3  # the first x with y >= target, though y later falls to it
    assert epochs_to_quality(curve, 110.0) == 3 and epochs_to_quality(curve, 110.5) is None
    assert epochs_to_quality([], 1.0) is None
    assert champion_disagrees(curve) is True  # final 105 < 110, an earlier incumbent's
    assert champion_disagrees([[1, 5.0, "x"], [2, 7.0, "y"]]) is False and champion_disagrees([]) is None
    assert speedup(6, 2) == 3.0 and speedup(6, None) == 0.0
    with pytest.raises(ValueError, match="baseline"):
        speedup(None, 3)


def test_repetition_rows_target_speedups():
    rep0, rep1 = _rep(0), _rep(1)
    # rep 0: random's final incumbent c (quality 105) is the target; random's curve first reaches 105 at epoch 3
    assert rep0["target"] == 105.0
    random, pruned, tpe = (rep0["strategies"][n] for n in ("random", TARGET_STRATEGY, "tpe"))
    assert (random["epochs_to_target"], random["speedup"], random["final_quality"]) == (3, 1.0, 105.0)
    assert (random["epochs"], random["finished"], random["incumbents"], random["final_incumbent"]) == (6, 3, 2, "c")
    assert random["final_single_run"] == 140.0 and random["champion_disagrees"] is True
    # pruned: p1 (106 >= 105) at epoch 1: 3/1 = 3x; it returns p3 (104), below its earlier p1 (106)
    assert pruned["curve"] == [[1, 106.0, "p1"], [3, 104.0, "p3"]]
    assert (pruned["epochs_to_target"], pruned["speedup"], pruned["final_quality"]) == (1, 3.0, 104.0)
    assert (pruned["epochs"], pruned["finished"], pruned["final_single_run"]) == (3, 2, 155.0)
    assert pruned["champion_disagrees"] is True
    # tpe: only t2 (100 < 105): not reached, speed-up 0
    assert (tpe["reached"], tpe["epochs_to_target"], tpe["speedup"], tpe["final_quality"]) == (False, None, 0.0, 100.0)
    # rep 1: target c's 112, reached by random at epoch 4; pruned p1 (113) at 1: 4x; tpe t1 (112 = target) at 2: 2x
    assert rep1["target"] == 112.0
    assert rep1["strategies"]["random"]["epochs_to_target"] == 4
    assert rep1["strategies"][TARGET_STRATEGY]["speedup"] == 4.0 and rep1["strategies"]["tpe"]["speedup"] == 2.0
    assert rep1["strategies"]["random"]["champion_disagrees"] is False  # final 112 is its best incumbent
    with pytest.raises(ValueError, match="random search has no finished trial"):
        analyse_repetition({"random": _search(0, [E("a", 1, 1.0), END("a", "stopped", 1.0)])}, QUALITY)


def test_quartiles_and_median_curves():
    assert quartiles([4.0, 1.0, 3.0, 2.0]) == (1.75, 2.5, 3.25)
    assert quartiles([7.0]) == (7.0, 7.0, 7.0)
    first, second = [[2, 10.0, "x"], [5, 20.0, "y"]], [[3, 30.0, "z"]]
    points = median_curve([first, second], [1, 2, 3, 5, 6])
    assert points == [(1, None, None, None, 0), (2, 10.0, 10.0, 10.0, 1), (3, 15.0, 20.0, 25.0, 2),
                      (5, 22.5, 25.0, 27.5, 2), (6, 22.5, 25.0, 27.5, 2)]


def _results(per_rep: dict) -> dict:
    settings = {"data": "ci", "space": "base", "backbones": ["mssl"], "set": ["hidden_size=32"], "trials": 4,
                "max_epochs": 8, "concurrency": 2, "grace_epochs": 2, "reduction_factor": 4.0,
                "strategies": STRATEGIES}
    return {"settings": settings, "quality_seeds": quality_seeds(3), "per_rep": per_rep,
            "summary": summarise(per_rep, STRATEGIES), "wall_seconds": 10.0, "search_seconds": 7.0,
            "quality_seconds": 3.0, "quality_trainings": 12}


def test_summary_pass_best_strategy_and_printed_table():
    results = _results({0: _rep(0), 1: _rep(1)})
    summary = results["summary"]
    random, pruned, tpe = (summary["strategies"][n] for n in ("random", TARGET_STRATEGY, "tpe"))
    # random: speed-ups 1, 1; finals 105, 112 -> median 108.5, quartiles 105 + 7/4 and 112 - 7/4
    assert (random["median_speedup"], random["median_final_quality"]) == (1.0, 108.5)
    assert (random["final_quality_q25"], random["final_quality_q75"]) == (106.75, 110.25)
    assert random["final_quality_iqr"] == 3.5
    # pruned: speed-ups 3, 4 -> 3.5 >= 3; finals 104, 113 -> median 108.5, no worse than random's: PASS
    assert (pruned["median_speedup"], pruned["median_final_quality"], pruned["reached"]) == (3.5, 108.5, 2)
    assert (pruned["final_quality_q25"], pruned["final_quality_q75"]) == (106.25, 110.75)
    assert (pruned["disagreements"], pruned["disagreement_rate"], pruned["median_epochs"]) == (1, 0.5, 2.0)
    # tpe: speed-ups 0, 2 -> 1; finals 100, 112 -> 106 < 108.5: not eligible for best
    assert (tpe["median_speedup"], tpe["median_final_quality"], tpe["reached"]) == (1.0, 106.0, 1)
    check = summary["target"]
    assert check["speedup_met"] and check["quality_met"] and check["pass"] is True
    assert summary["best"] == TARGET_STRATEGY

    table = report(results)
    lines = table.splitlines()
    row = next(line for line in lines if line.split()[:2] == ["0", TARGET_STRATEGY]).split()
    assert row == ["0", TARGET_STRATEGY, "3", "2", "2", "155.0", "104.0", "105.0", "1", "3.00x", "yes"]
    row = next(line for line in lines if line.split()[:2] == ["0", "tpe"]).split()
    assert row == ["0", "tpe", "4", "1", "1", "92.0", "100.0", "105.0", "not", "reached", "(>4)", "0.00x", "no"]
    row = next(line for line in lines if line.split()[:1] == [TARGET_STRATEGY]).split()
    assert row == [TARGET_STRATEGY, "2", "3.50x", "2", "108.5", f"{106.25:.1f}-{110.75:.1f}", "2", "1/2"]
    assert "median speed-up 3.50x (>= 3x: yes), median final quality 108.5 vs random's 108.5 (no worse: yes): PASS" \
        in table
    assert "best by the measurements: asha-tpe-pruned (median speed-up 3.50x, median final quality 108.5;" in table
    # disagreements: random rep 0, pruned rep 0 of 6 searches
    assert "among the search's incumbents in 2/6 searches (33%)" in table
    assert "over seeds 1000 2000 3000" in table and table.endswith("(searches 7s, quality runs 3s: 12 trainings)")
    json.dumps(results)  # what the script writes


def test_fail_when_asha_tpe_misses_and_random_is_then_best():
    # rep 1's p1 at 111 < target 112: not reached (speed-up 0) -> median 1.5x; median quality 107.5 < 108.5
    worse = {**QUALITY, "1:p1": 111.0}
    results = _results({0: _rep(0, worse), 1: _rep(1, worse)})
    check = results["summary"]["target"]
    assert (check["speedup"], check["quality"], check["random_quality"]) == (1.5, 107.5, 108.5)
    assert not check["speedup_met"] and not check["quality_met"] and check["pass"] is False
    assert results["summary"]["best"] == BASELINE
    table = report(results)
    assert "(>= 3x: no), median final quality 107.5 vs random's 108.5 (no worse: no): FAIL" in table
    assert "best by the measurements: random (median speed-up 1.00x" in table


def test_quality_runs_cover_incumbents_only_once_per_config_with_other_seeds():
    assert quality_seeds(3) == [1000, 2000, 3000]
    assert config_key({"b": 1, "seed": 3, "a": 2.5}) == '{"a": 2.5, "b": 1}'
    assert config_key({"a": 2.5, "b": 1, "seed": 7}) == config_key({"b": 1, "a": 2.5, "seed": 3})
    searches = {"random": _search(0, RANDOM_0), TARGET_STRATEGY: _search(0, PRUNED_0)}
    needed = incumbent_configs(searches)
    assert sorted(needed) == ["0:a", "0:c", "0:p1", "0:p3"]  # no b (never the incumbent), no p2 (stopped)
    configs = {"k1": {"lr": 0.1, "epochs": 8, "patience": 8, "seed": 0},
               "k2": {"lr": 0.2, "epochs": 8, "patience": 8, "seed": 0}}
    jobs = quality_jobs(configs, {"k2": {"mean": 1.0}}, quality_seeds(3), 8)  # k2 cached
    assert [(key, seed, config["seed"]) for key, seed, config in jobs] == [("k1", 1000, 1000), ("k1", 2000, 2000),
                                                                          ("k1", 3000, 3000)]
    assert all(config["lr"] == 0.1 and config["epochs"] == 8 for _, _, config in jobs)
    with pytest.raises(ValueError, match="epochs and patience must be 8"):
        quality_jobs({"k3": {"epochs": 8, "patience": 3}}, {}, [1000], 8)


def test_record_must_match_the_stored_trials():
    from tracking.search_results import TrialRecord

    def stored(trial_id: str, scores: list[float], final: float | None) -> TrialRecord:
        results = [{"epoch": i, "best_val_sumr": s} for i, s in enumerate(scores, 1)]
        if final is not None:
            results.append({"epoch": len(scores), "best_val_sumr": final, "finished": True})
        return TrialRecord(trial_id, {}, results, None)

    class Search:
        trials = [stored("p1", [150.0], 150.0), stored("p2", [210.0], None), stored("p3", [155.0], 155.0)]

    _checked_record("ok", PRUNED_0, Search())
    wrong_end = [e if e[1] != "p2" or e[0] != "end" else END("p2", "finished", 210.0) for e in PRUNED_0]
    with pytest.raises(RuntimeError, match="trial ends differ"):
        _checked_record("p2 told finished", wrong_end, Search())
    with pytest.raises(RuntimeError, match="epoch reports differ"):
        _checked_record("an epoch missing", PRUNED_0[1:], Search())


def test_plot_is_a_png(tmp_path):
    path = plot(_results({0: _rep(0), 1: _rep(1)}), tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_options_are_checked():
    _check_args(_parser().parse_args([]))  # the defaults
    assert _parser().parse_args([]).strategies == list(DEFAULT_STRATEGIES)
    assert "hyperband-tpe" in DEFAULT_STRATEGIES and "asha-tpe-complete" not in DEFAULT_STRATEGIES
    quick = parse_args(_parser(), ["--quick"], QUICK)
    assert (quick.data, quick.trials, quick.max_epochs, quick.quality_seeds) == ("tiny", 4, 2, 3)
    _check_args(quick)
    _check_args(_parser().parse_args(["--strategies", "asha-tpe-complete", "random", "--reduction-factor", "2.5"]))
    for argv, message in [
            (["--quality-seeds", "2"], "--quality-seeds must be >= 3, got 2"),
            (["--reduction-factor", "1"], "--reduction-factor must be > 1, got 1.0"),
            (["--grace-epochs", "0"], "--grace-epochs must be >= 1, got 0"),
            (["--workers", "0"], "--workers must be >= 1, got 0"),
            (["--seeds", "0", "0"], "--seeds must be distinct and >= 0"),
            (["--seeds", "0", "2000"], "--seeds must not be a quality seed .* got 2000"),
            (["--reduction-factor", "2.5"], "--reduction-factor must be an integer for hyperband-tpe, got 2.5"),
            (["--strategies", "asha-tpe-pruned"], "--strategies must name random"),
            (["--strategies", "random"], "--strategies must name random"),
            (["--strategies", "random", "bohb"], "unknown bohb")]:
        with pytest.raises(ValueError, match=message):
            _check_args(_parser().parse_args(argv))
