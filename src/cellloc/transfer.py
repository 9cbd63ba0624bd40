"""Start a model from another run's weights (``train.py --init-from RUN``): stages of a recipe.

RxRx1's winning pipelines trained in stages, each starting from the previous one's weights:
the control wells first, then every siRNA, then with pseudo-labelled test wells; a model per
subset of the six stains started from the all-stain model; a model per cell type started from
the all-types model. The source and the new model share a backbone but may differ at both ends:

- the **stem** (first convolution, ``(out, C, kh, kw)``) when the channel set differs: each of
  the new model's channels takes the source filter of the channel of the same name; a channel the
  source never saw takes the mean of its filters; all are then scaled by ``C_source / C_new`` so
  an input equally bright in every channel drives the stem as it did (the rule
  :func:`cellloc.models.adapt_stem_channels` uses for ImageNet's RGB);
- the **head** (the parameters whose first dimension is the class count) when the class count
  differs: the rows of the classes both share are copied, the others keep their fresh init.

Everything else must match in shape; a mismatch is a one-line error naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .errors import InputError


@dataclass
class TransferReport:
    """What :func:`transfer_state` did, tensor by tensor (names of the state dict)."""

    copied: list[str] = field(default_factory=list)
    stem: list[str] = field(default_factory=list)  # channel-adapted
    head: list[str] = field(default_factory=list)  # class rows copied, the rest fresh
    fresh: list[str] = field(default_factory=list)  # not in the source: kept as initialised

    def line(self) -> str:
        parts = [f"{len(self.copied)} tensors copied"]
        if self.stem:
            parts.append(f"stem adapted ({', '.join(self.stem)})")
        if self.head:
            parts.append(f"head resized ({', '.join(self.head)})")
        if self.fresh:
            parts.append(f"{len(self.fresh)} new")
        return ", ".join(parts)


def adapt_stem(weight: torch.Tensor, source_channels: Sequence[str], channels: Sequence[str]) -> torch.Tensor:
    """Stem filters ``(out, len(source_channels), kh, kw)`` re-ordered and re-sized for ``channels``.

    A channel in both keeps its filter; a new channel gets the mean filter; everything is scaled
    by ``len(source_channels) / len(channels)``. Returns a new tensor of ``weight``'s dtype.
    """
    if weight.ndim != 4 or weight.shape[1] != len(source_channels):
        raise ValueError(f"stem weights {tuple(weight.shape)} do not have {len(source_channels)} input channels")
    mean = weight.mean(dim=1)
    index = {c: i for i, c in enumerate(source_channels)}
    cols = [weight[:, index[c]] if c in index else mean for c in channels]
    return (torch.stack(cols, dim=1) * (len(source_channels) / len(channels))).to(weight.dtype)


def transfer_state(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_channels: Sequence[str],
    channels: Sequence[str],
    source_classes: int,
    num_classes: int,
    where: str = "init-from",
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """``target``'s state dict with every tensor taken from ``source``, adapted where the ends differ.

    ``source``/``target``: state dicts of the same backbone; ``*_channels`` the input channel
    names of each (in order), ``*_classes`` their class counts. Returns the new state dict and a
    :class:`TransferReport`. A tensor that differs otherwise raises ``InputError`` naming ``where``.
    """
    out: dict[str, torch.Tensor] = {}
    report = TransferReport()
    for name, new in target.items():
        old = source.get(name)
        if old is None:
            out[name] = new
            report.fresh.append(name)
        elif old.shape == new.shape:
            out[name] = old.to(new.dtype).clone()
            report.copied.append(name)
        elif (old.ndim == 4 and new.ndim == 4 and old.shape[1] == len(source_channels)
              and new.shape[1] == len(channels) and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:]):
            out[name] = adapt_stem(old, source_channels, channels).to(new.dtype)
            report.stem.append(name)
        elif (old.ndim == new.ndim and old.shape[0] == source_classes and new.shape[0] == num_classes
              and old.shape[1:] == new.shape[1:]):
            shared = min(source_classes, num_classes)
            head = new.clone()
            head[:shared] = old[:shared].to(new.dtype)
            out[name] = head
            report.head.append(name)
        else:
            raise InputError(f"{where}: {name} has shape {tuple(old.shape)} in the source model but {tuple(new.shape)} "
                             "here (another backbone?)")
    return out, report


__all__ = ["TransferReport", "adapt_stem", "transfer_state"]
