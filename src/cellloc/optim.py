"""Optimisers and learning-rate schedules by name, the ones the related competition pipelines used.

``make_optimizer(name, net, lr, weight_decay, momentum)`` and ``make_schedule(name, optimizer,
total_steps, steps_per_epoch, ...)``; both registries are filled by decorators, so a config names
them by string. Schedules are stepped once per *optimizer* step (not per micro-batch), and every
one is a torch scheduler whose ``state_dict`` resumes it exactly.

Optimisers: ``adam``, ``adamw`` (decoupled weight decay), ``nadam`` (Adam with Nesterov momentum,
decoupled weight decay), ``sgd`` (Nesterov momentum). Weight decay never applies to biases and
normalisation weights (1-D parameters). ``momentum`` is SGD's momentum and the Adam family's
beta1. Where torch has a fused kernel for the optimizer (Adam, AdamW, SGD) and the parameters'
device (CPU, CUDA), the step runs as one kernel instead of a Python loop over the parameter
tensors: the same update to float rounding; on the demo's ResNet-18 on 2 CPU cores the AdamW step
is 5.7x faster, a whole training step 1.04x (``bench/bench_optimizer.py``, BENCHMARKS.md).

Schedules:

* ``cosine``: linear warmup over ``warmup_steps`` to ``lr``, then half a cosine down to ``min_lr``.
* ``onecycle`` (Smith 2018, torch's ``OneCycleLR``): from ``start_lr`` up to ``lr`` over the
  first ``warmup_share`` of the steps, then down to ``min_lr`` along a cosine; momentum (or
  beta1) moves the other way, from ``momentum_range[1]`` down to ``momentum_range[0]`` and back.
* ``exponential``: ``lr * lr_decay ** (step / steps_per_epoch)``: a factor ``lr_decay`` per
  epoch, applied smoothly at every step.
* ``constant``: ``lr`` throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .registry import Registry

Optimizer = torch.optim.Optimizer
Scheduler = torch.optim.lr_scheduler.LRScheduler


def parameter_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: weights with ``weight_decay``, biases and norm weights (1-D) without."""
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS: Registry[Callable[[list[dict], float, float, bool], Optimizer]] = Registry("optimizer")
FUSED = frozenset({"adam", "adamw", "sgd"})  # torch has a fused kernel for these (nadam: none)
FUSED_DEVICES = frozenset({"cpu", "cuda"})  # where their fused kernels run


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], lr: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], lr: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)


@OPTIMIZERS.register("nadam")
def _nadam(groups: list[dict], lr: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.NAdam(groups, lr=lr, betas=(momentum, 0.999), decoupled_weight_decay=True)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], lr: float, momentum: float, fused: bool) -> Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, fused=fused or None)


def can_fuse(name: str, params: list[torch.Tensor]) -> bool:
    """Whether optimizer ``name`` can step ``params`` with torch's fused kernel: one it has, on devices it
    runs on, for floating-point tensors."""
    return name in FUSED and bool(params) and all(
        p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def make_optimizer(name: str, net: nn.Module, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   fused: bool | None = None) -> Optimizer:
    """The optimizer ``name`` over ``net``'s trainable parameters (no decay on 1-D ones).

    ``fused``: step with torch's fused kernel (None: wherever :func:`can_fuse`; True where it cannot is an error).
    """
    groups = parameter_groups(net, weight_decay)
    params = [p for g in groups for p in g["params"]]
    factory = OPTIMIZERS[name]
    possible = can_fuse(name, params)
    if fused and not possible:
        raise ValueError(f"optimizer {name} has no fused step for these parameters")
    return factory(groups, lr, momentum, possible if fused is None else fused)


@dataclass(frozen=True)
class ScheduleParams:
    """Everything any schedule reads; each uses only its own fields (see the module docstring)."""

    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    start_lr: float = 0.0  # onecycle; 0 = lr / 25
    warmup_share: float = 0.3  # onecycle
    momentum_range: tuple[float, float] = (0.85, 0.95)  # onecycle
    lr_decay: float = 0.9  # exponential, per epoch


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup to 1, then cosine down to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


SCHEDULES: Registry[Callable[[Optimizer, float, ScheduleParams], Scheduler]] = Registry("schedule")


@SCHEDULES.register("cosine")
def _cosine(optimizer: Optimizer, lr: float, p: ScheduleParams) -> Scheduler:
    floor = p.min_lr / lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, p.total_steps, p.warmup_steps, floor))


@SCHEDULES.register("onecycle")
def _onecycle(optimizer: Optimizer, lr: float, p: ScheduleParams) -> Scheduler:
    start = p.start_lr or lr / 25.0
    low, high = p.momentum_range
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(p.total_steps, 2), pct_start=p.warmup_share, anneal_strategy="cos",
        div_factor=lr / start, final_div_factor=start / max(p.min_lr, 1e-12),
        cycle_momentum=True, base_momentum=low, max_momentum=high,
    )


@SCHEDULES.register("exponential")
def _exponential(optimizer: Optimizer, lr: float, p: ScheduleParams) -> Scheduler:
    per_step = p.lr_decay ** (1.0 / max(p.steps_per_epoch, 1))
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=per_step)


@SCHEDULES.register("constant")
def _constant(optimizer: Optimizer, lr: float, p: ScheduleParams) -> Scheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def make_schedule(name: str, optimizer: Optimizer, params: ScheduleParams) -> Scheduler:
    """The schedule ``name`` on ``optimizer`` (its groups' current lr is the peak ``lr``)."""
    lr = float(optimizer.param_groups[0]["lr"])
    return SCHEDULES[name](optimizer, lr, params)
