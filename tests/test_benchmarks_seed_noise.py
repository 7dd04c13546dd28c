"""The seed-noise benchmark: its statistics against a hand computation, its configs against the random
searcher's own suggestions, and a real smoke run whose first training is redone here independently."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import search_efficiency, seed_noise


def test_noise_stats_by_hand():
    # 3 configs x 3 training seeds; column 0 is the search's own seed
    finals = [[10.0, 12.0, 14.0],   # mean 12, var 4
              [30.0, 20.0, 22.0],   # mean 24, var 28: the best own-seed draw (30), its other seeds' mean 21
              [25.0, 26.0, 27.0]]   # mean 26, var 1: the best config by mean
    stats = seed_noise.noise_stats(finals)
    pooled = math.sqrt((4 + 28 + 1) / 3)
    config_sd = float(np.std([12.0, 24.0, 26.0], ddof=1))
    assert stats["pooled_seed_sd"] == pytest.approx(pooled)
    assert stats["config_mean_sd"] == pytest.approx(config_sd)
    assert stats["ratio"] == pytest.approx(pooled / config_sd)
    assert (stats["best_draw"], stats["best_draw_trial"], stats["best_draw_other_seeds_mean"]) == (30.0, 2, 21.0)
    assert stats["excess_sd"] == pytest.approx(9.0 / pooled)
    assert (stats["best_config_mean"], stats["best_config_trial"]) == (26.0, 3)
    summary = seed_noise.summarise({0: stats, 1: {**stats, "ratio": 1.0, "best_draw": 40.0}})
    assert summary["median_ratio"] == pytest.approx((pooled / config_sd + 1.0) / 2)
    assert summary["median_best_draw_minus_best_config_mean"] == pytest.approx(((30 - 26) + (40 - 26)) / 2)
    with pytest.raises(ValueError, match="2 training seeds"):
        seed_noise.noise_stats([[1.0], [2.0]])


def test_configs_are_the_random_searchers_own():
    """The benchmark retrains exactly the configs search_efficiency.py's random search tries, in its order."""
    from search.searcher import PruneAwareOptunaSearch, make_sampler

    args = search_efficiency._parser().parse_args([])
    space = search_efficiency.search_space(args, 3)
    searcher = PruneAwareOptunaSearch(space=space, metric="m", mode="max", sampler=make_sampler("random", 3))
    suggested = [searcher.suggest(f"t{i}") for i in range(5)]
    assert search_efficiency.search_space(args, 3).sample(5, 3) == suggested
    assert len({json.dumps(c, sort_keys=True) for c in suggested}) == 5
    assert all(c["seed"] == 3 and c["epochs"] == args.max_epochs for c in suggested)


def test_bad_options_are_named():
    for argv, flag in [(["--extra-seeds", "0"], "--extra-seeds"), (["--trials", "1"], "--trials"),
                       (["--seeds", "1", "1"], "--seeds"), (["--workers", "0"], "--workers")]:
        with pytest.raises(ValueError, match=flag):
            seed_noise._check_args(seed_noise._parser().parse_args(argv))


def test_quick_run_matches_an_independent_training(tmp_path, capsys):
    from benchmarks.runs import parse_args
    from search.searcher import PruneAwareOptunaSearch, make_sampler
    from trainables.data.datasets import resolve_dataset
    from trainables.training.loop import load_data, train

    out = tmp_path / "noise.json"
    assert seed_noise.main(["--quick", "--seeds", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = results["runs"]["2"]
    assert [(r["trial"], r["training_seed"]) for r in rows] == [(1, 2), (1, 1002), (2, 2), (2, 1002), (3, 2), (3, 1002)]
    assert all(len(r["curve"]) == 2 and r["config"]["seed"] == r["training_seed"] for r in rows)
    # the search's own trainings are exactly the random searcher's first 3 trials of searcher seed 2
    args = parse_args(seed_noise._parser(), ["--quick", "--seeds", "2"], seed_noise.QUICK)
    searcher = PruneAwareOptunaSearch(space=search_efficiency.search_space(args, 2), metric="m", mode="max",
                                      sampler=make_sampler("random", 2))
    assert [r["config"] for r in rows[0::2]] == [searcher.suggest(f"t{i}") for i in range(3)]
    assert all(r["config"] == {**own["config"], "seed": 1002} for own, r in zip(rows[0::2], rows[1::2]))
    # the search's own training of config 1, redone here in this process
    curve: list[float] = []
    train(rows[0]["config"], load_data(resolve_dataset("tiny")), on_epoch=lambda r: curve.append(r.best_score))
    assert curve == pytest.approx(rows[0]["curve"])
    finals = [[r["curve"][-1] for r in rows if r["trial"] == t] for t in (1, 2, 3)]
    assert results["per_seed"]["2"] == pytest.approx(seed_noise.noise_stats(finals))
    assert "medians: seed SD" in capsys.readouterr().out
