"""The optimiser and learning-rate schedule every PRVR release uses ("BertAdam" + ``warmup_linear``).

BertAdam is Adam **without bias correction** (eps 1e-6, betas 0.9/0.999), with weight decay added to
the update (decoupled: ``update += wd * p``, 0 for biases and LayerNorm), and each parameter tensor's
gradient clipped to norm 1.0 on its own (not a global norm). The schedule multiplies the learning
rate by ``warmup_linear(step / total_steps)``: a linear ramp over the first 1% of the planned steps,
then a linear decay to 0 at the planned end (so early stopping stops mid-decay). As released, the
first update uses the schedule at step 0, i.e. a learning rate of 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import overload

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from trainables.errors import InputError


class BertAdam(Optimizer):
    """Adam without bias correction, decoupled weight decay, per-tensor gradient clipping."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
    ) -> None:
        if lr < 0:
            raise InputError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise InputError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                next_m, next_v = state["next_m"], state["next_v"]
                next_m.mul_(beta1).add_(grad, alpha=1 - beta1)
                next_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = next_m / (next_v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def warmup_linear(progress: float, warmup: float = 0.01) -> float:
    """The release's ``warmup_linear``: ramp to 1 over ``warmup``, then linear decay to 0 at 1."""
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay every weight except biases and LayerNorm parameters (the release's ``no_decay`` list)."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, total_steps: int, *, weight_decay: float = 0.01,
    warmup_proportion: float = 0.01, max_grad_norm: float = 1.0,
) -> tuple[BertAdam, LambdaLR]:
    """BertAdam over ``model`` and its warm-up/linear-decay schedule over ``total_steps`` steps."""
    if total_steps < 1:
        raise InputError(f"total_steps must be >= 1, got {total_steps}")
    optimizer = BertAdam(parameter_groups(model, weight_decay), lr=lr, max_grad_norm=max_grad_norm)
    schedule = LambdaLR(optimizer, lambda step: warmup_linear(step / total_steps, warmup_proportion))
    return optimizer, schedule
