"""One training step of the demo's cell network, as the benches that time it take it."""

from __future__ import annotations

from collections.abc import Callable

import torch


def demo_batch(seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """32 random 4-channel 64 px crops and multi-hot targets over 19 classes (the demo's batch)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(32, 4, 64, 64, generator=gen), (torch.rand(32, 19, generator=gen) < 0.2).float()


def training_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  bf16: bool) -> Callable[[], None]:
    """A forward (bf16 autocast when ``bf16``), BCE loss, backward and optimizer step on ``x, y``."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step
