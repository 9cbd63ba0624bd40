"""weight_average.py: the exponential moving average of a network's weights, swapped in for validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cellloc.weight_average import WeightAverage


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def step(net: nn.Module, seed: int) -> None:
    """One SGD step on random data: the live weights move."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 2, 6, 6, generator=g)
    loss = net(x).pow(2).mean()
    net.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.05 * p.grad


def averaged(net: nn.Module, decay: float, steps: int) -> WeightAverage:
    """``net`` trained ``steps`` steps, its average updated after each."""
    avg = WeightAverage(net, decay=decay)
    for k in range(steps):
        step(net, k)
        avg.update(net)
    return avg


def test_the_average_weighs_each_step_decay_times_less_than_the_next_and_the_initial_weights_not_at_all():
    net = small_net()
    avg = WeightAverage(net, decay=0.9)
    seen = []
    for k in range(30):
        step(net, k)
        avg.update(net)
        seen.append([p.detach().clone() for p in net.parameters()])
    assert avg.updates == 30
    weights = torch.tensor([0.9 ** (29 - k) for k in range(30)])
    weights /= weights.sum()  # what 1 - 0.9 ** 30 corrects: they sum to one
    for i, got in enumerate(avg.averaged()):
        expected = sum(w * s[i] for w, s in zip(weights, seen))
        torch.testing.assert_close(got, expected)
    assert not all(torch.allclose(a, b) for a, b in zip(avg.averaged(), seen[-1]))  # it lags the live weights
    first = WeightAverage(small_net(), decay=0.999)
    with pytest.raises(RuntimeError, match="no update yet"):
        first.averaged()
    net = small_net()
    first.update(net)  # one step: the average is those weights, however slow the decay
    for got, p in zip(first.averaged(), net.parameters()):
        torch.testing.assert_close(got, p.detach())


def test_swap_in_and_restore_give_back_the_live_parameters_and_buffers_exactly():
    net = small_net()
    avg = averaged(net, 0.5, 5)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    avg.swap_in(net)
    assert avg.swapped
    for p, s in zip(net.parameters(), avg.averaged()):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=0)
    net[1].running_mean.add_(1.0)  # what a BatchNorm recalibration of the average does
    assert all(torch.equal(live[k], v) for k, v in avg.live_state_dict(net).items())  # the live ones, kept aside
    with pytest.raises(RuntimeError, match="restore"):
        avg.update(net)
    avg.restore(net)
    avg.restore(net)  # twice is harmless
    assert not avg.swapped
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, live[k], rtol=0, atol=0)


def test_state_round_trip_and_another_network_is_refused():
    net = small_net()
    avg = averaged(net, 0.8, 4)
    again = WeightAverage(small_net(seed=1), decay=0.8)
    again.load_state_dict(avg.state_dict())
    assert again.updates == 4
    for a, b in zip(avg.shadow, again.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="another network"):
        WeightAverage(nn.Linear(2, 2), decay=0.8).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(net, decay=1.0)
