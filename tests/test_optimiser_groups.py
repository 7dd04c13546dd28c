"""The trainer's optimiser uses the config's weight decay (a searched setting) on the right parameters.

The release's BertAdam (HuiGuanLab/ms-sl ``method/train.py``: ``no_decay = ['bias', 'LayerNorm.bias',
'LayerNorm.weight']``, weight decay 0.01) decays every weight except biases and LayerNorm parameters.
Here the groups of the optimiser a ``Trainer`` builds are checked against the config and against a
classification of the parameters written in the test (by name and module type), and one step with zero
gradients shows the decay really applied: p <- p - lr * wd * p on decayed tensors, nothing on the others.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.data.synthetic import ensure_synthetic
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, Trainer, load_data


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


def expected_no_decay(model: nn.Module) -> set[str]:
    """Names of the parameters the release does not decay: biases and LayerNorm weights/biases."""
    names = {name for name, _ in model.named_parameters() if name.split(".")[-1] == "bias"}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names |= {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
    return names


@pytest.mark.parametrize("backbone, extra", [("mssl", {}), ("gmmformer", {"ral": True})])
@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_trainer_optimiser_groups_follow_the_config(tiny: DataSplits, backbone: str, extra: dict,
                                                    weight_decay: float):
    config = TrainConfig.from_dict({"backbone": backbone, "epochs": 1, "batch_size": 16, "lr": 1e-3,
                                    "hidden_size": 32, "n_heads": 4, "weight_decay": weight_decay, **extra})
    trainer = Trainer(config, tiny)
    model, optimizer = trainer.model, trainer.optimizer
    name_of = {id(p): n for n, p in model.named_parameters()}
    no_decay = expected_no_decay(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay and trainable - no_decay  # both kinds exist

    by_decay: dict[float, set[str]] = {}
    for group in optimizer.param_groups:
        by_decay.setdefault(group["weight_decay"], set()).update(name_of[id(p)] for p in group["params"])
    seen = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) and set(seen) == trainable  # every trainable tensor exactly once
    if weight_decay == 0.0:
        assert set(by_decay) == {0.0}
    else:
        assert by_decay == {weight_decay: trainable - no_decay, 0.0: trainable & no_decay}

    # one step with zero gradients at lr 1: decayed tensors shrink by (1 - wd), the others stay
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1.0 if name in no_decay else 1.0 - weight_decay
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=0, atol=1e-7, msg=name)


def test_release_default_weight_decay_is_0_01():
    """BertAdam's weight_decay 0.01 in every release (ms-sl ``method/train.py``, GMMFormer ``src/main.py``)."""
    assert TrainConfig(backbone="mssl").weight_decay == 0.01
