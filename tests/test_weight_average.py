"""weight_average.py: the exponential moving average of a network's weights, swapped in for validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cellloc.weight_average import WeightAverage, average_decay


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


def test_the_decay_warms_up_so_the_initial_weights_fade_fast():
    assert average_decay(0.99, 0) == pytest.approx(0.1)
    assert average_decay(0.99, 10) == pytest.approx(11 / 20)
    assert average_decay(0.99, 10_000) == 0.99


def test_the_average_follows_the_weights_by_the_decayed_update():
    net = small_net()
    avg = WeightAverage(net, decay=0.9)
    expected = [p.detach().clone() for p in net.parameters()]
    for k in range(30):
        step(net, k)
        d = average_decay(0.9, k)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, net.parameters())]
        avg.update(net)
    assert avg.updates == 30
    for e, s in zip(expected, avg.shadow):
        torch.testing.assert_close(s, e)
    assert any(not torch.allclose(s, p) for s, p in zip(avg.shadow, net.parameters()))  # it lags the live weights


def test_swap_in_and_restore_give_back_the_live_parameters_and_buffers_exactly():
    net = small_net()
    avg = WeightAverage(net, decay=0.5)
    for k in range(5):
        step(net, k)
        avg.update(net)
    live = {k: v.clone() for k, v in net.state_dict().items()}
    avg.swap_in(net)
    assert avg.swapped
    for p, s in zip(net.parameters(), avg.shadow):
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
    avg = WeightAverage(net, decay=0.8)
    for k in range(4):
        step(net, k)
        avg.update(net)
    again = WeightAverage(small_net(seed=1), decay=0.8)
    again.load_state_dict(avg.state_dict())
    assert again.updates == 4
    for a, b in zip(avg.shadow, again.shadow):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="another network"):
        WeightAverage(nn.Linear(2, 2), decay=0.8).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(net, decay=1.0)
