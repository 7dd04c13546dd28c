"""Ablation designs and the statistics of an ablation table, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from search.ablation_stats import bootstrap_difference, per_query_metric, per_query_sumr, seed_difference, summarize
from spaces.ablation import Component, design, parse_component
from trainables.evaluation.metrics import ground_truth_ranks, metrics_from_ranks


def test_components_parse_plugins_booleans_and_categoricals():
    assert parse_component("ral") == Component("ral", False, True)
    assert parse_component("ral.csa") == Component("ral.csa", False, True)
    assert parse_component("ral.k=1,6") == Component("ral.k", 1, 6)
    assert parse_component("loss=nce,triplet").label == "loss=triplet"
    for bad in ("", "a b", "k=1", "k=1,1", "=1,2", "k=1,2,3"):
        with pytest.raises(ValueError, match="ablation component"):
            parse_component(bad)


def test_one_at_a_time_design_is_base_each_all_and_all_minus_each():
    components = [parse_component(c) for c in ("ral", "msc", "moment")]
    cells = design(components)
    names = [c.name for c in cells]
    assert names == ["base", "+ral", "+msc", "+moment", "all", "all-ral", "all-msc", "all-moment"]
    settings = {c.name: c.as_dict() for c in cells}
    assert settings["base"] == {"ral": False, "msc": False, "moment": False}
    assert settings["+msc"] == {"ral": False, "msc": True, "moment": False}
    assert settings["all-ral"] == {"ral": False, "msc": True, "moment": True}
    # with two components, "all minus one" is "base plus the other": each distinct cell once
    two = design([parse_component("ral"), parse_component("msc")])
    assert [c.name for c in two] == ["base", "+ral", "+msc", "all"]
    assert [c.name for c in design([parse_component("ral")])] == ["base", "+ral"]


def test_factorial_design_holds_every_combination_once():
    components = [parse_component(c) for c in ("ral", "msc", "ral.k=1,6")]
    cells = design(components, "factorial")
    assert len(cells) == 8 and len({c.settings for c in cells}) == 8
    assert cells[0].name == "base" and cells[-1].as_dict() == {"ral": True, "msc": True, "ral.k": 6}
    with pytest.raises(ValueError, match="unknown ablation design 'grid'"):
        design(components, "grid")
    with pytest.raises(ValueError, match="repeat a setting"):
        design([parse_component("ral"), parse_component("ral=0,1")])


def test_per_query_sumr_averages_to_the_metrics_modules_sumr():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 150))
    gt = rng.integers(0, 150, size=300)
    ranks = ground_truth_ranks(scores, gt)
    assert per_query_sumr(ranks).mean() == pytest.approx(metrics_from_ranks(ranks)["SumR"])
    for column in ("R@1", "R@5", "R@10", "R@100", "SumR"):
        assert per_query_metric(ranks, column).mean() == pytest.approx(metrics_from_ranks(ranks)[column])


def test_summary_and_seed_difference_match_scipy():
    base, cell = [200.0, 210.0, 205.0, 198.0], [206.0, 213.0, 211.0, 199.0]
    s = summarize(cell)
    assert (s.mean, s.n) == (pytest.approx(np.mean(cell)), 4) and s.std == pytest.approx(np.std(cell, ddof=1))
    d = seed_difference(cell, base)
    diff = np.subtract(cell, base)
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert (d.mean, d.low, d.high) == (pytest.approx(diff.mean()), pytest.approx(low), pytest.approx(high))
    assert d.p == pytest.approx(stats.wilcoxon(diff).pvalue) and d.p == pytest.approx(0.125)  # exact: 2/16
    assert summarize([3.0]).std == 0.0 and math.isnan(seed_difference([1.0], [0.0]).low)
    with pytest.raises(ValueError, match="paired seeds differ"):
        seed_difference([1.0, 2.0], [1.0])


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    base = per_query_sumr(rng.integers(1, 200, size=500)).astype(float)
    better = np.where(rng.random(500) < 0.3, 400.0, base)  # 30% of queries moved to rank 1
    real = bootstrap_difference(better, base, resamples=1000)
    assert real.mean == pytest.approx(np.mean(better - base)) and real.low > 0 and real.p < 0.01
    null = bootstrap_difference(rng.permutation(base), base, resamples=1000)  # same values, other pairing
    assert null.mean == pytest.approx(0.0) and null.low < 0 < null.high and null.p > 0.05
    assert bootstrap_difference(base, base).p == 1.0
    with pytest.raises(ValueError, match="paired queries differ"):
        bootstrap_difference(base[:10], base)
