"""An exponential moving average of a network's weights, validated and saved in place of the live ones.

A short run from scratch ends wherever its last few hundred steps left it: another seed, another
point near the same minimum, a score that moves by a few hundredths. The average of the weights over
the last steps sits nearer the middle of that region (Polyak averaging; the EMA of timm's
``--model-ema``), at the cost of one copy of the parameters and one fused update per optimiser step.
That holds for runs that end at a higher learning rate or last many thousands of steps; the demo's
short cosine runs, which end at 1e-6, scored lower with it (docs/cellgap.md, "Round 8").

Only parameters are averaged. BatchNorm statistics of an average are not the average of the
statistics, so the trainer recomputes them for the averaged weights before each validation
(``train.py --bn-recalibrate``), as stochastic weight averaging does.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """EMA of the floating-point parameters of ``net``; swaps them in for validation and back for training.

    ``update`` after every optimiser step; ``swap_in`` before a validation (the live weights are
    kept aside); ``restore`` before training goes on. ``state_dict`` holds what ``--resume`` needs.

    The sum starts at zero and is divided by ``1 - decay ** updates`` (Adam's bias correction): the
    weights after each step count ``decay`` times less per later step, from the first step on, and the
    random initial weights not at all. A warm-up that caps the decay early on (``(1 + n) / (10 + n)``)
    would instead hold it below 0.99 for the first 900 steps: the whole of a short run, whatever was asked.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.names = [name for name, p in net.named_parameters() if p.dtype.is_floating_point]
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in self._params(net)]
        self._live: dict[str, torch.Tensor] | None = None

    def _params(self, net: nn.Module) -> list[torch.Tensor]:
        named = dict(net.named_parameters())
        return [named[name] for name in self.names]

    @property
    def swapped(self) -> bool:
        """True between :meth:`swap_in` and :meth:`restore`: ``net`` holds the average."""
        return self._live is not None

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average towards the current weights (call after each optimiser step)."""
        if self.swapped:
            raise RuntimeError("update() while the average is swapped in: restore() first")
        params = [p.detach().float() for p in self._params(net)]
        if params and self.shadow[0].device != params[0].device:  # the trainer moved the network
            self.shadow = [s.to(p.device) for s, p in zip(self.shadow, params)]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)
        self.updates += 1

    def averaged(self) -> list[torch.Tensor]:
        """The average of the weights seen so far, one tensor per parameter (float32)."""
        if self.updates == 0:
            raise RuntimeError("no update yet: nothing to average")
        scale = 1.0 / (1.0 - self.decay ** self.updates)
        return [s * scale for s in self.shadow]

    @torch.no_grad()
    def swap_in(self, net: nn.Module) -> None:
        """Put the average into ``net``, keeping its live parameters and buffers aside (no-op if already in, or
        before the first update)."""
        if self.swapped or self.updates == 0:  # nothing averaged yet: the live weights are all there is
            return
        average = self.averaged()
        self._live = {k: v.detach().clone() for k, v in net.state_dict().items()}
        for p, s in zip(self._params(net), average):
            p.copy_(s.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def restore(self, net: nn.Module) -> None:
        """Put the live parameters and buffers back (no-op if they are in)."""
        if self._live is None:
            return
        net.load_state_dict(self._live)
        self._live = None

    def live_state_dict(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """``net``'s live state_dict on the CPU, whether or not the average is swapped in."""
        state = self._live if self._live is not None else net.state_dict()
        return {k: v.detach().cpu() for k, v in state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "names": list(self.names),
                "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("the saved weight average belongs to another network")
        self.updates = int(state["updates"])
        self.shadow = [s.to(device=t.device, dtype=torch.float32).clone() for s, t in zip(state["shadow"], self.shadow)]
