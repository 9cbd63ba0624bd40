"""Training a cell model on field labels, keeping each class only on the field's cells most like it.

A field's label is the union of its cells' labels, so a class it names is missing from some of
its cells (on the generated data, 28% of the cells of a Golgi field do not show Golgi). Trained
on the field's label, those cells teach the model that a cell unlike the class shows it. Which
cells they are is unknown, but within one field they are the ones the model finds least like
the class: noisy labels are fitted last.

:class:`FieldTopTargets` wraps a multilabel loss and remembers the model's latest (detached,
training-time) score of every training cell. After a warm-up, for each class its field names, a
cell whose current score falls below the field's ``1 - fraction`` quantile of those remembered
scores is not trained on that class: its target becomes its own score, so that term's gradient
is zero (binary cross-entropy's gradient is ``p - target``). The other cells keep the field's
label, a class the field lacks stays 0 for all of them, and one model is trained, at the cost of
a plain run. ``fraction = 1`` trains on the field labels unchanged.

Measured on the demo's fields (docs/cellgap.md, round 9) it did not help: the classes whose
fields' labels are noisiest are the ones the model cannot yet rank within a field, so the cut
drops real positives as often as false ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .losses import RefinedTargets


class FieldTopTargets(RefinedTargets):
    """A multilabel ``base`` loss trained only on the top ``fraction`` of a field's cells per class it names.

    ``groups`` (n,) is each training sample's field; the loss is called with ``index`` (the
    samples of the batch, what :class:`cellloc.data.SampleDataset` passes; without it nothing is
    remembered or cut). It starts after ``start_batches`` training batches (:class:`RefinedTargets`),
    but remembers scores from the first. The remembered scores (:attr:`memory`, NaN until a cell
    is first seen) are the module's extra state, so a training state that saves its state_dict
    resumes them; under distributed training each process remembers the cells it has seen.
    """

    takes_index = True

    def __init__(self, base: nn.Module, groups: Sequence[int] | np.ndarray, num_classes: int, fraction: float,
                 start_batches: int = 0, batches_done: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"field top fraction must be in (0, 1], got {fraction}")
        super().__init__(base, start_batches, batches_done)
        codes = np.asarray(groups)
        self.fraction = float(fraction)
        _, inverse = np.unique(codes, return_inverse=True)
        self.group = torch.as_tensor(inverse.reshape(-1), dtype=torch.long)
        order = np.argsort(inverse, kind="stable")
        self.members = list(torch.split(torch.as_tensor(order, dtype=torch.long), np.bincount(inverse).tolist()))
        # not a buffer: distributed training broadcasts buffers from rank 0, which would drop the other ranks' cells
        self.memory = torch.full((len(codes), num_classes), float("nan"))

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"memory": self.memory.detach().cpu()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if state["memory"].shape != self.memory.shape:
            raise ValueError(f"remembered scores of shape {tuple(state['memory'].shape)}, "
                             f"expected {tuple(self.memory.shape)}")
        self.memory = state["memory"].to(self.memory.device, self.memory.dtype).clone()

    def cuts(self, index: torch.Tensor) -> torch.Tensor:
        """(B, C): for each sample of ``index``, its field's ``1 - fraction`` quantile of remembered scores per class."""
        fields = self.group[index.cpu()]
        out = self.memory.new_empty(len(index), self.memory.shape[1])
        for f in torch.unique(fields).tolist():
            rows = (fields == f).nonzero().squeeze(1).to(out.device)
            cut = torch.nanquantile(self.memory[self.members[f].to(out.device)], 1.0 - self.fraction, dim=0)
            out[rows] = cut
        return out

    def observe(self, logits: torch.Tensor, index: torch.Tensor | None) -> None:
        if index is None:
            return
        scores = torch.sigmoid(logits.detach()).float()
        if self.memory.device != scores.device:
            self.memory = self.memory.to(scores.device)
        self.memory[index.to(scores.device)] = scores

    def refine(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if index is None or self.fraction == 1:
            return targets
        scores = self.memory[index.to(self.memory.device)]  # this batch's, just remembered by observe
        below = (targets > 0) & (scores < self.cuts(index))
        return torch.where(below, scores.to(targets.dtype), targets)
