"""Train one config on one dataset: the release protocol, reproducible and resumable.

Per epoch: train on batches of videos (each with all its queries), evaluate the full validation corpus,
keep the weights with the best validation SumR of the fused score, and stop once more than
``patience`` epochs in a row brought no gain (the release's ``es_cnt > max_es_cnt``). At the end the
best weights are evaluated on the test split.

Reproducibility: every random stream (dropout, batch order, the backbone's and each plugin's sampled
negatives) is reseeded from (seed, epoch) at the start of each epoch, so an epoch's randomness does not
depend on what ran before it in the same process, and the initial weights of the backbone and of each
plugin come from streams of their own (``random_streams``: common random numbers, so two runs with one
seed that differ in one setting share the draws that setting does not need to change); together with
the optimiser/scheduler state in the checkpoint, a run resumed from the checkpoint of epoch k continues
exactly as the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.data.loader import PreparedSplit, load_split, train_loader
from trainables.data.manifest import read_manifest
from trainables.data.split_overlap import check_val_test, data_overlap
from trainables.errors import InputError
from trainables.evaluation.evaluate import evaluate, evaluate_ranks
from trainables.evaluation.metrics import NonFiniteScores, metrics_from_ranks
from trainables.models.base import Backbone, Dims, LossContext
from trainables.training.checkpoint import load_checkpoint, save_checkpoint
from trainables.training.config import TrainConfig
from trainables.training.optim import build_optimizer
from trainables.training.random_streams import DATA_ORDER, DROPOUT, NEGATIVES, stream_seed

SELECTION_BRANCH = "fused"
SELECTION_METRIC = "SumR"


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite: the run stops (it is never reported as a metric)."""


@dataclass
class DataSplits:
    """The prepared train/val/test splits of one dataset and what identifies it."""

    train: PreparedSplit
    val: PreparedSplit
    test: PreparedSplit
    dims: Dims
    manifest_sha256: str
    location: str


def load_data(location: str | Path, dtype: str = "float32") -> DataSplits:
    """Load and prepare a dataset's train, val and test splits once."""
    manifest = read_manifest(location)
    return DataSplits(
        train=load_split(location, "train", dtype=dtype),
        val=load_split(location, "val", dtype=dtype),
        test=load_split(location, "test", dtype=dtype),
        dims=Dims(manifest.video_dim, manifest.query_dim),
        manifest_sha256=manifest.sha256(),
        location=str(location),
    )


@dataclass
class EpochReport:
    """What a run tells its caller after each epoch (Ray Tune's report, a progress line, ...)."""

    epoch: int  # completed epochs, from 1
    train_loss: dict[str, float]
    val: dict[str, dict[str, float]]
    best_epoch: int
    best_score: float
    stopping: bool
    save_checkpoint: Callable[[str | Path], Path]
    #: every epoch of the run so far, this one last (a resumed run's earlier epochs come from its checkpoint)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.val[SELECTION_BRANCH][SELECTION_METRIC]


@dataclass
class TrainResult:
    """The outcome of a run: the best epoch's validation metrics and its test metrics."""

    config: TrainConfig
    best_epoch: int
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    stopped_early: bool
    model: Backbone = field(repr=False)
    #: per branch, each test query's rank of its relevant video (``data.test.query_ids`` order)
    test_ranks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


@dataclass
class _State:
    """Mutable training state (what a checkpoint holds)."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """One run of ``config`` on ``data``; ``run()`` trains to the end, resuming if asked."""

    def __init__(self, config: TrainConfig, data: DataSplits) -> None:
        self.config = config
        self.data = data
        config.check_dims(data.dims.video_dim, data.dims.query_dim, data.location)
        self.device = resolve_device(config.device)
        # TrainConfig.resolved() (from_dict) fills these from the backbone's defaults
        assert config.lr is not None and config.batch_size is not None and config.epochs is not None
        torch.manual_seed(config.seed)
        self.model: Backbone = config.build_model(data.dims, seed=config.seed).to(self.device)
        steps_per_epoch = math.ceil(data.train.num_videos / config.batch_size)
        self.optimizer, self.schedule = build_optimizer(
            self.model, config.lr, config.epochs * steps_per_epoch, weight_decay=config.weight_decay,
            warmup_proportion=config.warmup_proportion, max_grad_norm=config.max_grad_norm)
        self.state = _State()

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "config": self.config.to_dict(),
            "manifest_sha256": self.data.manifest_sha256,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": s.epoch,
            "best_score": s.best_score,
            "best_epoch": s.best_epoch,
            # the best weights are the model's own when this epoch is the best: not stored twice
            "best_weights": None if s.best_epoch == s.epoch else s.best_weights,
            "bad_epochs": s.bad_epochs,
            "stopped": s.stopped,
            "history": s.history,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, folder: str | Path) -> Path:
        return save_checkpoint(self.checkpoint_state(), folder)

    def restore(self, location: str | Path) -> None:
        """Continue from a checkpoint made by the same config on the same data."""
        saved = load_checkpoint(location)
        mine = self.config.to_dict()
        differing = sorted(k for k in set(mine) | set(saved["config"]) if mine.get(k) != saved["config"].get(k))
        if differing:
            raise InputError(f"{location}: checkpoint was made with another config "
                             f"({differing[0]}={saved['config'].get(differing[0])!r}, now {mine.get(differing[0])!r})")
        if saved["manifest_sha256"] != self.data.manifest_sha256:
            raise InputError(f"{location}: checkpoint was made on another dataset (manifest hash differs)")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["torch_rng"])
        best_weights = saved["best_weights"]
        if best_weights is None and saved["best_epoch"] == saved["epoch"] and saved["epoch"] > 0:
            best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.state = _State(epoch=saved["epoch"], best_score=saved["best_score"], best_epoch=saved["best_epoch"],
                            best_weights=best_weights, bad_epochs=saved["bad_epochs"],
                            stopped=saved["stopped"], history=saved["history"])

    # -- one epoch ---------------------------------------------------------------------------------
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training videos; returns the mean of each loss term."""
        c = self.config
        seed, hard_start, batch_size = c.seed, c.hard_negative_start_epoch, c.batch_size
        assert seed is not None and hard_start is not None and batch_size is not None  # by resolved()
        torch.manual_seed(stream_seed(seed, epoch, DROPOUT))
        def negatives(*plugin: str) -> torch.Generator:
            return torch.Generator().manual_seed(stream_seed(seed, epoch, NEGATIVES, *plugin))

        context = LossContext(epoch=epoch, hard_negatives=epoch >= hard_start,
                              hard_pool_size=c.hard_pool_size, generator=negatives(),
                              plugin_generators={name: negatives(name) for name in self.model.plugins})
        self.model.train()
        sums: dict[str, float] = {}
        batches = train_loader(self.data.train, batch_size, seed=stream_seed(seed, epoch, DATA_ORDER))
        for step, batch in enumerate(batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self._autocast():
                terms = self.model.training_losses(batch, context)
            for name, value in terms.items():
                if not torch.isfinite(value).all():
                    raise NonFiniteLoss(f"epoch {epoch + 1}, batch {step + 1}: loss term {name!r} is {value.item()}")
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            total = torch.stack([v.float() for v in terms.values()]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.schedule.step()
        return {name: value / max(step + 1, 1) for name, value in sums.items()}

    def evaluate_split(self, split: PreparedSplit) -> dict[str, dict[str, float]]:
        """R@k, SumR and ranks of each branch on ``split`` (the val split each epoch, test at the end)."""
        with self._autocast():
            return evaluate(self.model, split, self.device, video_batch=self.config.eval_video_batch,
                            query_chunk=self.config.eval_query_chunk)

    # -- the run -----------------------------------------------------------------------------------
    def run(self, on_epoch: Callable[[EpochReport], None] | None = None) -> TrainResult:
        s, c = self.state, self.config
        assert c.epochs is not None and c.patience is not None  # filled by TrainConfig.resolved()
        while not s.stopped and s.epoch < c.epochs:
            losses = self.train_epoch(s.epoch)
            try:
                val = self.evaluate_split(self.data.val)
            except NonFiniteScores as exc:  # a diverged model; any other error is a bug and shows as one
                raise NonFiniteLoss(f"epoch {s.epoch + 1}: validation failed: {exc}") from None
            s.epoch += 1
            score = val[SELECTION_BRANCH][SELECTION_METRIC]
            if score > s.best_score:
                s.best_score, s.best_epoch, s.bad_epochs = score, s.epoch, 0
                s.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                s.bad_epochs += 1
            s.stopped = s.bad_epochs > c.patience
            s.history.append({"epoch": s.epoch, "loss": losses, "val": val})
            if on_epoch is not None:
                on_epoch(EpochReport(epoch=s.epoch, train_loss=losses, val=val, best_epoch=s.best_epoch,
                                     best_score=s.best_score, stopping=s.stopped or s.epoch >= c.epochs,
                                     save_checkpoint=self.save, history=list(s.history)))
        return self.finish()

    def finish(self) -> TrainResult:
        """Load the best weights and evaluate them on test (their val metrics are the best epoch's, from the
        history: the same weights, not evaluated again)."""
        s = self.state
        if s.best_weights is not None:
            self.model.load_state_dict(s.best_weights)
        best_val = s.history[s.best_epoch - 1]["val"] if s.best_epoch else {}
        with self._autocast():
            ranks = evaluate_ranks(self.model, self.data.test, self.device, video_batch=self.config.eval_video_batch,
                                   query_chunk=self.config.eval_query_chunk)
        return TrainResult(config=self.config, best_epoch=s.best_epoch, val=best_val,
                           test={branch: metrics_from_ranks(values) for branch, values in ranks.items()},
                           history=s.history, stopped_early=s.stopped, model=self.model, test_ranks=ranks)


def train(
    config: TrainConfig | dict[str, Any],
    data: DataSplits | str | Path,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
    resume_from: str | Path | None = None,
    allow_val_test_overlap: bool = False,
) -> TrainResult:
    """Train ``config`` (a TrainConfig or a flat trial dict) on ``data`` (prepared splits or a dataset).

    A dataset whose val split shares queries or videos with its test split is refused (the best epoch
    would be selected on the test queries) unless ``allow_val_test_overlap`` (a paper's protocol).
    A flat dict may name a release preset (``{"preset": "ral-gmmformer2-tvr", ...}``, see
    ``trainables.presets``): its other keys override the preset's values.
    """
    if not isinstance(config, TrainConfig):
        from trainables.presets import apply_preset

        config = TrainConfig.from_dict(apply_preset(dict(config)))
    if not isinstance(data, DataSplits):
        data = load_data(data)
    check_val_test(data_overlap(data.val, data.test), data.location, allow=allow_val_test_overlap)
    trainer = Trainer(config, data)
    if resume_from is not None:
        trainer.restore(resume_from)
    return trainer.run(on_epoch)

