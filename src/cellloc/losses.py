"""Training losses by name, and the output activation that goes with each kind of task.

``create_loss(name, kind, ...)`` builds the ``nn.Module`` a config names; every loss takes
``(logits (N, C) float, targets (N, C) float, weight (N,) float or None)`` and returns the mean
over samples (and classes, for the per-class losses), weighted by ``weight`` when given (e.g.
edge-cut or small cells counting less: ``sum(w_i * loss_i) / sum(w_i)``). Targets are always an
(N, C) matrix: multi-hot (or soft, in [0, 1]) for multilabel tasks, one-hot (or soft) rows for
multiclass ones, so one Dataset serves both.

* ``bce``: binary cross-entropy on sigmoid outputs, one independent yes/no per class (HPA).
* ``focal``: the same with each term scaled by ``(1 - p_t) ** gamma`` (Lin et al. 2017), so
  confidently right samples count less and rare, hard classes more; ``gamma = 0`` is ``bce``.
* ``ce``: softmax cross-entropy for one class per sample (RxRx1), with optional label
  smoothing ``eps``: the target becomes ``(1 - eps) * onehot + eps / C``.

:class:`Bootstrapped` wraps a multilabel loss for training on field labels: after a warm-up,
each cell's target becomes its label times ``1 - w + w * p``, ``p`` the model's own current
(detached) probability, so a class its field has but the cell does not show is pushed less hard
towards 1; a class its field lacks stays 0. Its warm-up is :class:`RefinedTargets`', which
:class:`cellloc.field_top.FieldTopTargets` shares.

:func:`probabilities` turns logits into what a model predicts: sigmoid per class for
multilabel tasks, softmax over classes for multiclass ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .registry import Registry


class SampleLoss(nn.Module):
    """A loss defined per sample (:meth:`per_sample`, shape (N,)), averaged with optional sample weights."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.per_sample(logits, targets)
        if weight is None:
            return loss.mean()
        weight = weight.to(loss.dtype)
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


class BinaryCrossEntropy(SampleLoss):
    """Sigmoid binary cross-entropy, mean over classes per sample (``nn.BCEWithLogitsLoss`` when unweighted)."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)


class FocalLoss(SampleLoss):
    """Sigmoid focal loss, mean over samples and classes. ``alpha`` (optional) weights positives."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = alpha

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = bce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss.mean(1)


class SoftmaxCrossEntropy(SampleLoss):
    """Cross-entropy of softmax outputs against (N, C) target rows, with label smoothing ``eps``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing, reduction="none")


def mix_field_labels(labels, scores, weight: float):
    """``labels * ((1 - weight) + weight * scores)``, numpy arrays or torch tensors alike.

    The one target rule of training on field labels with a cell's scores (out-of-fold
    predictions, :func:`cellloc.data.soft_targets`, or the model's own, :class:`Bootstrapped`):
    a cell keeps ``1 - weight`` of its field's label and takes the rest from its score (clipped
    to [0, 1]), so it never gets a class its field lacks.
    """
    return labels * ((1.0 - weight) + weight * scores.clip(0.0, 1.0))


class RefinedTargets(nn.Module):
    """A multilabel ``base`` loss whose training targets :meth:`refine` rewrites once ``start_batches`` have passed.

    The one warm-up mechanism of the weak-label target rules (:class:`Bootstrapped`,
    :class:`cellloc.field_top.FieldTopTargets`): the model's early scores are noise, so the first
    batches train on the plain targets; validation (eval mode) always sees them and does not count.
    :meth:`observe` sees every training batch, the warm-up's included. ``batches_done`` counts
    training calls; a resumed run passes the count its saved epochs reached.
    """

    def __init__(self, base: nn.Module, start_batches: int = 0, batches_done: int = 0) -> None:
        super().__init__()
        self.base = base
        self.start_batches = max(0, int(start_batches))
        self.batches_done = int(batches_done)

    def observe(self, logits: torch.Tensor, index: torch.Tensor | None) -> None:
        """Called on every training batch before :meth:`refine` (nothing by default)."""

    def refine(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            self.observe(logits, index)
            if self.batches_done >= self.start_batches:
                targets = self.refine(logits, targets, index)
            self.batches_done += 1
        return self.base(logits, targets) if weight is None else self.base(logits, targets, weight)


class Bootstrapped(RefinedTargets):
    """A multilabel ``base`` loss whose targets, in training, are ``targets * (1 - w + w * sigmoid(logits))``.

    Label noise on field labels is one-sided: a class the field lacks is absent from all its
    cells, but a class it has is missing from some. Mixing in the model's own detached score
    (soft bootstrapping) lets the cells that look unlike their field's class keep a lower target
    without a second model. It starts after ``start_batches`` training batches (:class:`RefinedTargets`).
    """

    def __init__(self, base: nn.Module, weight: float, start_batches: int = 0, batches_done: int = 0) -> None:
        if not 0 <= weight <= 1:
            raise ValueError(f"bootstrap weight must be in [0, 1], got {weight}")
        super().__init__(base, start_batches, batches_done)
        self.weight = float(weight)

    def refine(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if self.weight == 0:
            return targets
        return mix_field_labels(targets, torch.sigmoid(logits.detach()).to(targets.dtype), self.weight)


@dataclass(frozen=True)
class LossEntry:
    """How to build a loss, and the task kinds it makes sense for."""

    build: Callable[..., nn.Module]
    kinds: tuple[str, ...]


LOSSES: Registry[LossEntry] = Registry("loss")
LOSSES["bce"] = LossEntry(lambda **_: BinaryCrossEntropy(), ("multilabel", "multiclass"))
LOSSES["focal"] = LossEntry(lambda focal_gamma=2.0, **_: FocalLoss(focal_gamma), ("multilabel", "multiclass"))
LOSSES["ce"] = LossEntry(lambda label_smoothing=0.0, **_: SoftmaxCrossEntropy(label_smoothing), ("multiclass",))


def create_loss(name: str, kind: str, focal_gamma: float = 2.0, label_smoothing: float = 0.0) -> nn.Module:
    """The loss ``name`` for a ``kind`` ("multilabel" or "multiclass") task; one-line error if it does not fit."""
    entry = LOSSES[name]
    if kind not in entry.kinds:
        raise InputError(f"loss {name} is for {' or '.join(entry.kinds)} tasks, not {kind} (one class per sample needs ce; "
                         "several need bce or focal)")
    return entry.build(focal_gamma=focal_gamma, label_smoothing=label_smoothing)


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Model outputs as probabilities: sigmoid per class (multilabel) or softmax over classes (multiclass)."""
    if kind == "multilabel":
        return torch.sigmoid(logits)
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    raise ValueError(f"kind must be multilabel or multiclass, got {kind!r}")
