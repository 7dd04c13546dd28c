"""The common-random-numbers benchmark: a real smoke run, its statistics recomputed here, its first
training redone independently, and the emulated old behaviour undone afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import common_random_numbers as crn
from trainables.models.base import LossContext
from trainables.training.config import TrainConfig


def test_quick_run_statistics_and_first_training(tmp_path):
    build, for_plugin = TrainConfig.build_model, LossContext.for_plugin
    out = tmp_path / "crn.json"
    assert crn.main(["--quick", "--out", str(out)]) == 0
    assert TrainConfig.build_model is build and LossContext.for_plugin is for_plugin  # emulation undone
    result = json.loads(out.read_text())
    for mode in crn.MODES:
        scores, summary = result["scores"][mode], result["summary"][mode]
        assert len(scores["A"]) == len(scores["B"]) == 2
        assert scores["A'"] == scores["A"] and summary["identical_sd"] == 0.0  # an identical arm is exact
        diffs = np.subtract(scores["B"], scores["A"])
        assert summary["diff_sd"] == pytest.approx(float(np.std(diffs, ddof=1)))
        assert summary["diff_mean"] == pytest.approx(float(diffs.mean()))
    from trainables.data.synthetic import ensure_synthetic
    from trainables.training.loop import load_data, train

    arm_a = result["arms"]["A"]
    again = train({**arm_a, "seed": 0}, load_data(ensure_synthetic("tiny"))).val["fused"]["SumR"]
    assert result["scores"]["streams"]["A"][0] == pytest.approx(again)
