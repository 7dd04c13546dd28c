"""BertAdam and the warm-up/linear-decay schedule against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.training.optim import BertAdam, build_optimizer, parameter_groups, warmup_linear


def test_warmup_linear_hand_values():
    assert warmup_linear(0.0) == 0.0
    assert warmup_linear(0.005) == pytest.approx(0.5)
    assert warmup_linear(0.01) == pytest.approx(1.0)
    assert warmup_linear(0.5) == pytest.approx((0.5 - 1) / (0.01 - 1))
    assert warmup_linear(1.0) == 0.0 and warmup_linear(1.5) == 0.0


def test_one_step_without_bias_correction_and_with_decoupled_decay():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.1, 0.2])
    BertAdam([p], lr=0.1, weight_decay=0.01).step()
    m = 0.1 * torch.tensor([0.1, 0.2])  # (1 - beta1) * g, no bias correction
    v = 0.001 * torch.tensor([0.01, 0.04])  # (1 - beta2) * g^2
    update = m / (v.sqrt() + 1e-6) + 0.01 * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(p.data, torch.tensor([1.0, -2.0]) - 0.1 * update)


def test_gradient_clipping_is_per_tensor():
    big, small = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    big.grad, small.grad = torch.tensor([6.0, 8.0]), torch.tensor([0.06, 0.08])  # norms 10 and 0.1
    BertAdam([big, small], lr=0.0, weight_decay=0.0, max_grad_norm=1.0).step()
    torch.testing.assert_close(big.grad, torch.tensor([0.6, 0.8]))  # clipped to norm 1 on its own
    torch.testing.assert_close(small.grad, torch.tensor([0.06, 0.08]))  # untouched (a global norm would scale it)


def test_no_decay_for_biases_and_layer_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_schedule_starts_at_zero_peaks_after_warmup_and_ends_at_zero():
    model = nn.Linear(2, 2)
    optimizer, schedule = build_optimizer(model, lr=1e-3, total_steps=200, warmup_proportion=0.01)
    lrs = []
    for _ in range(200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.0  # as released: the first update uses the schedule at step 0
    assert lrs[1] == pytest.approx(0.5e-3) and lrs[2] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(1e-3 * (0.5 - 1) / (0.01 - 1))
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_bad_settings():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        BertAdam([nn.Parameter(torch.zeros(1))], lr=-1.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        build_optimizer(nn.Linear(1, 1), lr=1e-3, total_steps=0)
    assert math.isclose(warmup_linear(0.02, warmup=0.04), 0.5)
