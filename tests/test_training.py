"""The training loop: resume equals an uninterrupted run, early stopping, NaN losses, bad configs,
weights-only checkpoints, and full-corpus evaluation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_chunked_evaluation_matches_full

from trainables.data.synthetic import ensure_synthetic
from trainables.models.base import create_backbone
from trainables.training.checkpoint import load_checkpoint
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, NonFiniteLoss, Trainer, load_data, train

SMALL_MODEL = {"hidden_size": 32, "n_heads": 4}


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


class Interrupt(Exception):
    pass


def _config(backbone: str = "mssl", **overrides) -> dict:
    return {"backbone": backbone, "epochs": 4, "batch_size": 16, "lr": 1e-3, "patience": 10,
            "hard_negative_start_epoch": 2, "seed": 7, **SMALL_MODEL, **overrides}


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny, tmp_path):
    full = train(_config(), tiny)

    def crash_after_second_epoch(report):
        if report.epoch == 2:
            report.save_checkpoint(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_config(), tiny, on_epoch=crash_after_second_epoch)
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 2
    epochs_run = []
    resumed = train(_config(), tiny, resume_from=tmp_path / "ckpt", on_epoch=lambda r: epochs_run.append(r.epoch))
    assert epochs_run == [3, 4]  # continues, never restarts from epoch 1
    assert resumed.history == full.history  # identical losses and val metrics, epoch by epoch
    assert resumed.test == full.test and resumed.best_epoch == full.best_epoch
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def test_resume_refuses_another_config(tiny, tmp_path):
    trainer = Trainer(TrainConfig.from_dict(_config(epochs=1)), tiny)
    trainer.run()
    trainer.save(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint was made with another config \(lr=0\.001, now 0\.002\)"):
        train(_config(epochs=1, lr=2e-3), tiny, resume_from=tmp_path)


def test_early_stopping_keeps_the_best_epoch(tiny):
    # lr 1e-12: nothing changes after the first epoch, so no later epoch improves val SumR
    result = train(_config("meanpool", lr=1e-12, patience=1, epochs=10), tiny)
    assert result.stopped_early and result.best_epoch == 1
    assert len(result.history) == 3  # best at 1, then patience + 1 epochs without gain
    assert result.val == result.history[0]["val"]


def test_nan_loss_stops_with_the_epoch_and_term(tiny, monkeypatch):
    model_cls = type(create_backbone("meanpool", tiny.dims, **SMALL_MODEL))
    original = model_cls.training_losses

    def poisoned(self, batch, context):
        terms = original(self, batch, context)
        if context.epoch == 1:
            name = next(iter(terms))
            terms[name] = terms[name] * float("nan")
        return terms

    monkeypatch.setattr(model_cls, "training_losses", poisoned)
    reported = []
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, batch 1: loss term '\w+' is nan"):
        train(_config("meanpool"), tiny, on_epoch=reported.append)
    assert [r.epoch for r in reported] == [1] and np.isfinite(reported[0].score)


def test_nan_scores_at_validation_are_a_nonfinite_loss_and_any_other_error_is_itself(tiny, monkeypatch):
    """A diverged model (NaN scores) ends the trial as NonFiniteLoss; a bug in evaluation (here a shape
    error) is not relabelled: it surfaces as raised."""
    import trainables.training.loop as loop
    from trainables.evaluation.metrics import NonFiniteScores

    def raising(error):
        def evaluate(*args, **kwargs):
            raise error
        return evaluate

    monkeypatch.setattr(loop, "evaluate", raising(NonFiniteScores("scores of query 3 contain NaN")))
    with pytest.raises(NonFiniteLoss, match="epoch 1: validation failed: scores of query 3 contain NaN"):
        train(_config("meanpool"), tiny)
    monkeypatch.setattr(loop, "evaluate", raising(ValueError("operands could not be broadcast together")))
    with pytest.raises(ValueError, match="broadcast") as raised:
        train(_config("meanpool"), tiny)
    assert not isinstance(raised.value, NonFiniteLoss)


@pytest.mark.parametrize("overrides, message", [
    ({"backbone": "nope"}, r"unknown backbone 'nope' \(available: .*mssl"),
    ({"lr": -1.0}, r"lr must be > 0, got -1\.0"),
    ({"cluster_num": 600}, r"cluster_num"),
    ({"no_such_option": 1}, r"mssl: unknown option 'no_such_option'"),
    ({"batch_size": 1}, r"batch_size must be >= 2"),
])
def test_bad_configs_fail_before_training(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(_config(**overrides))


def test_dims_that_disagree_with_the_dataset(tiny):
    with pytest.raises(ValueError, match=r"video_dim 512 disagrees with the dataset's 64"):
        train(_config(video_dim=512), tiny)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_load_weights_only(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "PWNED")
    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps({"format": 1, "model": payload}))
    torch.save({"format": 1, "evil": payload}, tmp_path / "evil.pt")
    for path in (tmp_path / "checkpoint.pt", tmp_path / "evil.pt"):
        with pytest.raises(ValueError, match="not a loadable weights-only checkpoint"):
            load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_evaluation_equals_an_independent_full_matrix(tiny):
    torch.manual_seed(0)
    model = create_backbone("meanpool", tiny.dims, **SMALL_MODEL).eval()
    assert assert_chunked_evaluation_matches_full(model, tiny.test) == {"fused"}


def test_mssl_beats_meanpool_on_partially_relevant_data():
    """The point of a PRVR model: on the `ci` preset (small's difficulty, CI-sized), MS-SL's multi-scale
    clip/frame scoring beats whole-video mean pooling (measured: ~182 vs ~143 test SumR, chance 127)."""
    data = load_data(ensure_synthetic("ci"))
    sumr = {}
    for backbone in ("mssl", "meanpool"):
        runs = [train({"backbone": backbone, "epochs": 8, "batch_size": 16, "lr": 1e-3, "hidden_size": 64,
                       "hard_negative_start_epoch": 100, "seed": seed}, data) for seed in (0, 1)]
        sumr[backbone] = float(np.mean([r.test["fused"]["SumR"] for r in runs]))
    assert sumr["mssl"] > sumr["meanpool"] + 15, sumr


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_autocast_runs_the_same_code_path(tiny, bf16):
    """With ``bf16`` the linear layers of training and evaluation really compute in bfloat16 (autocast on),
    without it in float32; the run completes with finite losses and metrics either way."""
    dtypes: list[torch.dtype] = []

    def linear_output(module, args, output):
        if isinstance(module, torch.nn.Linear):
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(linear_output)
    try:
        result = train(_config("mssl", epochs=1, bf16=bf16), tiny)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    assert np.isfinite(result.test["fused"]["SumR"]) and result.history[0]["loss"]
    assert all(np.isfinite(v) for v in result.history[0]["loss"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda(tiny):
    with pytest.raises(ValueError, match=r"device 'cuda' requested but CUDA is not available"):
        train(_config(device="cuda"), tiny)
