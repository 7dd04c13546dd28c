"""Resume after a worse epoch: the checkpoint must carry the best weights and the early-stopping counter.

The other resume test interrupts at the best epoch with the counter at 0, where a checkpoint that drops
the best weights (the model's own are the best) or the counter (it is 0) still passes. Here the run is
interrupted after an epoch that did not improve validation SumR (counter 1 of patience 1), so the
resumed run must stop at the same epoch, select the same best epoch and evaluate the same (earlier)
weights on test as the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data.synthetic import ensure_synthetic
from trainables.training.checkpoint import load_checkpoint
from trainables.training.loop import DataSplits, EpochReport, load_data, train

# measured on `tiny`: val SumR 182.5, 185.0, 182.5, 183.75, ... -> best 2, epoch 3 worse (counter 1),
# epoch 4 worse (counter 2 > patience 1): early stop after epoch 4
CONFIG = {"backbone": "mssl", "epochs": 10, "batch_size": 16, "lr": 1e-3, "patience": 1,
          "hard_negative_start_epoch": 2, "seed": 7, "hidden_size": 32, "n_heads": 4}


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


class Interrupt(Exception):
    pass


def test_resume_after_a_worse_epoch_equals_the_uninterrupted_run(tiny: DataSplits, tmp_path: Path):
    reports: list[EpochReport] = []

    def keep_last(report: EpochReport) -> None:
        reports.append(report)
        if report.stopping:  # the weights of the last epoch, to show the best ones differ from them
            report.save_checkpoint(tmp_path / "last")

    full = train(CONFIG, tiny, on_epoch=keep_last)
    # an epoch after the best one that did not stop the run: the counter is > 0 there
    worse = [r.epoch for r in reports if r.best_epoch < r.epoch and not r.stopping]
    assert worse and full.stopped_early and len(full.history) < CONFIG["epochs"], [(r.epoch, r.score) for r in reports]
    cut = worse[0]
    last_weights = load_checkpoint(tmp_path / "last")["model"]
    assert any(not torch.equal(last_weights[k], v) for k, v in full.model.state_dict().items())

    def crash_after_the_worse_epoch(report: EpochReport) -> None:
        if report.epoch == cut:
            report.save_checkpoint(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        train(CONFIG, tiny, on_epoch=crash_after_the_worse_epoch)
    saved = load_checkpoint(tmp_path / "ckpt")
    assert saved["bad_epochs"] == cut - saved["best_epoch"] > 0 and saved["best_weights"] is not None

    resumed_epochs: list[int] = []
    resumed = train(CONFIG, tiny, resume_from=tmp_path / "ckpt", on_epoch=lambda r: resumed_epochs.append(r.epoch))
    assert resumed_epochs == list(range(cut + 1, len(full.history) + 1))  # stops where the full run stopped
    assert resumed.stopped_early and resumed.best_epoch == full.best_epoch
    assert resumed.history == full.history and resumed.val == full.val
    assert resumed.test == full.test
    for branch, ranks in full.test_ranks.items():
        assert np.array_equal(resumed.test_ranks[branch], ranks), branch
    for key, value in full.model.state_dict().items():  # the best epoch's weights, not the last epoch's
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
