"""Optimisers and schedules by name: the learning rate each schedule gives, step by step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellloc.errors import InputError
from cellloc.optim import FUSED, OPTIMIZERS, ScheduleParams, can_fuse, make_optimizer, make_schedule, warmup_cosine


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def lrs(name: str, steps: int, lr: float = 1.0, optimizer: str = "sgd", **kw) -> tuple[list[float], list[float]]:
    """(lr, momentum) at each of ``steps`` optimizer steps."""
    opt = make_optimizer(optimizer, net(), lr, weight_decay=0.0, momentum=0.9)
    sched = make_schedule(name, opt, ScheduleParams(total_steps=steps, steps_per_epoch=kw.pop("steps_per_epoch", 10), **kw))
    out, mom = [], []
    for _ in range(steps):
        group = opt.param_groups[0]
        out.append(group["lr"])
        mom.append(group.get("momentum", group.get("betas", (None,))[0]))
        opt.step()
        sched.step()
    return out, mom


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.01) == pytest.approx(0.01)
    assert warmup_cosine(0, 10, 0, 0.0) == 1.0


def test_cosine_constant_and_exponential():
    cos, _ = lrs("cosine", 11, warmup_steps=0, min_lr=0.0)
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5 + 0.5 * torch.cos(torch.tensor(torch.pi * 5 / 11)).item())
    assert cos == sorted(cos, reverse=True)
    assert lrs("constant", 5)[0] == [1.0] * 5
    exp, _ = lrs("exponential", 21, lr_decay=0.5, steps_per_epoch=10)
    assert exp[10] == pytest.approx(0.5) and exp[20] == pytest.approx(0.25)  # a factor 0.5 per epoch of 10 steps
    assert exp[5] == pytest.approx(0.5 ** 0.5)


def test_onecycle_lr_range_warmup_share_and_momentum_range():
    lr, mom = lrs("onecycle", 100, lr=0.4, start_lr=0.04, min_lr=0.0004, warmup_share=0.25, momentum_range=(0.8, 0.95))
    peak = max(range(100), key=lambda i: lr[i])
    assert lr[0] == pytest.approx(0.04) and lr[peak] == pytest.approx(0.4, rel=1e-3) and 23 <= peak <= 25
    assert lr[-1] == pytest.approx(0.0004, rel=0.05)
    assert mom[0] == pytest.approx(0.95) and mom[peak] == pytest.approx(0.8, rel=1e-3)  # momentum falls while lr rises
    lr_default, _ = lrs("onecycle", 10, lr=1.0)
    assert lr_default[0] == pytest.approx(1.0 / 25)  # start_lr 0: lr / 25
    _, beta1 = lrs("onecycle", 10, lr=0.4, optimizer="adamw", momentum_range=(0.85, 0.95))
    assert beta1[0] == pytest.approx(0.95)  # the Adam family cycles beta1


def test_optimizers_by_name_and_no_decay_on_1d_parameters():
    assert sorted(OPTIMIZERS) == ["adam", "adamw", "nadam", "sgd"]
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("nadam", torch.optim.NAdam),
                      ("sgd", torch.optim.SGD)):
        opt = make_optimizer(name, net(), 0.1, weight_decay=0.01, momentum=0.9)
        assert isinstance(opt, cls)
        decay, no_decay = opt.param_groups
        assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
        assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert make_optimizer("sgd", net(), 0.1, momentum=0.9).param_groups[0]["nesterov"] is True
    with pytest.raises(InputError, match="unknown optimizer 'lamb'"):
        make_optimizer("lamb", net(), 0.1)


def trained(name: str, fused: bool | None, steps: int = 5) -> torch.Tensor:
    """The first layer's weights after ``steps`` steps of optimizer ``name`` on a fixed regression."""
    model = net()
    opt = make_optimizer(name, model, 0.05, weight_decay=0.01, momentum=0.9, fused=fused)
    model.train()
    for i in range(steps):
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model[0].weight.detach()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_fused_step_is_the_default_where_torch_has_one_and_makes_the_same_update(name):
    opt = make_optimizer(name, net(), 0.1)
    assert bool(opt.defaults.get("fused")) == (name in FUSED)
    if name in FUSED:
        assert torch.allclose(trained(name, True), trained(name, False), atol=1e-6)
        assert not torch.equal(trained(name, True), net()[0].weight.detach())  # it did train
    else:
        with pytest.raises(ValueError, match=f"optimizer {name} has no fused step"):
            make_optimizer(name, net(), 0.1, fused=True)


def test_no_fused_step_for_integer_or_missing_parameters():
    assert can_fuse("adamw", [torch.zeros(2)])
    assert not can_fuse("adamw", [torch.zeros(2, dtype=torch.int64)])
    assert not can_fuse("adamw", [])
    assert not can_fuse("nadam", [torch.zeros(2)])


def test_a_schedule_resumes_from_its_state():
    opt = make_optimizer("sgd", net(), 1.0)
    params = ScheduleParams(total_steps=20, steps_per_epoch=5, start_lr=0.1)
    sched = make_schedule("onecycle", opt, params)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = make_optimizer("sgd", net(), 1.0)
    sched2 = make_schedule("onecycle", opt2, params)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    for _ in range(3):
        opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])


def test_a_state_saved_by_the_loop_step_resumes_with_the_loop_step():
    """A last.pt written before the fused default carries fused=None: --resume goes on exactly as it began."""
    model = net()
    old = make_optimizer("adamw", model, 0.05, fused=False)
    model(torch.randn(8, 3)).pow(2).mean().backward()
    old.step()
    resumed = make_optimizer("adamw", model, 0.05)  # the default now: fused
    assert resumed.defaults["fused"]
    resumed.load_state_dict(old.state_dict())
    assert all(not g["fused"] for g in resumed.param_groups)
    resumed.step()  # and steps
