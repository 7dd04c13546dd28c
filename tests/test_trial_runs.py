"""What the driver logs to a trial's MLflow run from its reports (tracking/trial_runs.py, trainables/trial.py).
End to end (params, tags, per-epoch metrics, ranks, statuses, a killed driver) in test_search.py,
test_remote_search.py and test_ablate.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.data.synthetic import ensure_synthetic
from trainables.training.loop import load_data, train
from trainables.trial import history_metrics
from trainables.trial_report import COLUMNS, METRIC, PLACEMENT, epoch_metrics, epoch_report, final_metrics


class Interrupt(Exception):
    pass


def test_a_resumed_trials_earlier_epochs_are_rebuilt_exactly_as_they_were_reported(tmp_path: Path) -> None:
    data = load_data(ensure_synthetic("tiny"))
    config = {"backbone": "mssl", "epochs": 4, "batch_size": 16, "lr": 1e-3, "patience": 10, "seed": 7,
              "hidden_size": 32, "n_heads": 4}
    live: list[dict[str, float]] = []
    train(config, data, on_epoch=lambda r: live.append(
        epoch_report(r.epoch, r.val["fused"], r.train_loss, r.best_epoch, r.best_score)))

    def stop_after_second_epoch(report) -> None:
        if report.epoch == 2:
            report.save_checkpoint(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, data, on_epoch=stop_after_second_epoch)
    after_resume = []
    train(config, data, resume_from=tmp_path / "ckpt", on_epoch=after_resume.append)
    assert [r.epoch for r in after_resume] == [3, 4]
    assert history_metrics(after_resume[0].history[:-1]) == live[:2]  # what epochs 1-2 reported, from the checkpoint
    assert history_metrics(after_resume[-1].history) == live


def _val(sumr: float) -> dict[str, dict[str, float]]:
    return {"fused": {**{c: 1.0 for c in COLUMNS}, "SumR": sumr}}


def test_the_best_epoch_so_far_follows_the_loops_rule_a_tie_is_not_better() -> None:
    history = [{"epoch": e, "val": _val(s), "loss": {"nce": 0.5}} for e, s in [(1, 10.0), (2, 8.0), (3, 10.0), (4,
                                                                                                                12.0)]]
    rebuilt = history_metrics(history)
    assert [(m["best_epoch"], m[METRIC]) for m in rebuilt] == [(1, 10.0), (1, 10.0), (1, 10.0), (4, 12.0)]
    assert [m["val_sumr"] for m in rebuilt] == [10.0, 8.0, 10.0, 12.0] and rebuilt[0]["loss_nce"] == 0.5


def test_only_the_trials_own_metrics_are_logged_not_tunes_fields() -> None:
    result = {"epoch": 3, METRIC: 120.5, "best_epoch": 2, "val_r1": 4.0, "loss_nce": 0.3, "best_val_r1": 5.0,
              "test_sumr": 99.0, "finished": True, "stopped_early": False, "timestamp": 1700000000,
              "training_iteration": 3, "time_this_iter_s": 1.5, "pid": 123, "config": {"lr": 0.1},
              PLACEMENT: {"ray.pid": "123"}, "trial_id": "abc"}
    assert epoch_metrics(result) == {"epoch": 3, METRIC: 120.5, "best_epoch": 2, "val_r1": 4.0, "loss_nce": 0.3}
    # the final report's best val SumR is the best epoch's, one of the best_val_* metrics
    assert final_metrics(result) == {METRIC: 120.5, "best_val_r1": 5.0, "test_sumr": 99.0}
