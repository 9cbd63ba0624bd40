"""A cell head and an image head on one backbone, both trained on the field's labels.

HPA single-cell labels are per image: a plain cell model gives every cell its field's label and
so learns that a cell shows classes it may not show. A second head sees the field as a whole:
each batch holds the cells of a few fields (:class:`cellloc.data.FieldBatchSampler`), the
backbone's features of each cell (:func:`cellloc.models.embed`) go to the *cell head* (the
backbone's own classifier; its logits stay the model's per-cell answer, so a trained fold loads
and predicts like any cell model), and the features of one field's cells are pooled and go to the
*image head*, whose loss against the field's label is exact at that level. Both losses are taken
against the field's labels and added (the image loss times ``image_loss_weight``): the 2nd-place
HPA single-cell recipe (16 cells of a field per sample, about 0.55 private mAP alone).

Pools (:data:`POOLS`) over the cells of one field, features ``h`` (n, F) -> (F,):

* ``mean``: the average cell;
* ``max``: per feature, the strongest cell (a class one cell shows is enough for the field);
* ``attention``: ``sum_i a_i h_i`` with ``a = softmax(w . h_i + b)`` over the field's cells, a
  learned mix between the two (Ilse et al. 2018, attention-based multiple-instance learning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .engine import TezModule
from .models import classify, embed, num_features
from .registry import Registry

PoolFn = Callable[[torch.Tensor, torch.Tensor, int, "torch.Tensor | None"], torch.Tensor]
POOLS: Registry[PoolFn] = Registry("image-head pool")


def _mean(h: torch.Tensor, group: torch.Tensor, n: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    sums = h.new_zeros(n, h.shape[1]).index_add_(0, group, h)
    counts = torch.bincount(group, minlength=n).clamp_min(1).to(h.dtype)
    return sums / counts[:, None]


def _max(h: torch.Tensor, group: torch.Tensor, n: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    out = h.new_full((n, h.shape[1]), float("-inf"))
    return out.scatter_reduce(0, group[:, None].expand_as(h), h, reduce="amax", include_self=True)


def _attention(h: torch.Tensor, group: torch.Tensor, n: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    if scores is None:
        raise ValueError("attention pooling needs a score per cell")
    top = scores.new_full((n,), float("-inf")).scatter_reduce(0, group, scores, reduce="amax", include_self=True)
    e = torch.exp(scores - top[group])
    a = e / scores.new_zeros(n).index_add_(0, group, e)[group]
    return h.new_zeros(n, h.shape[1]).index_add_(0, group, a[:, None] * h)


POOLS["mean"] = _mean
POOLS["max"] = _max
POOLS["attention"] = _attention


def pool_cells(pool: str, h: torch.Tensor, group: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (G, F), inverse (n,)): the features ``h`` (n, F) of each of the G distinct ``group`` values pooled.

    Row ``g`` of the result belongs to the ``g``-th smallest group code; ``inverse[i]`` is the row of cell ``i``.
    """
    codes, inverse = torch.unique(group, return_inverse=True)
    return POOLS[pool](h, inverse, len(codes), scores), inverse


class ImageHead(nn.Module):
    """Pool a field's cell features (``pool``), then dropout and a linear layer to ``num_classes`` logits."""

    def __init__(self, features: int, num_classes: int, pool: str, dropout: float = 0.2) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS.names())}, got {pool!r}")
        self.pool = pool
        self.attention = nn.Linear(features, 1) if pool == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, h: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (G, C) per field, inverse (n,) the row of each cell's field)."""
        scores = self.attention(h).squeeze(1) if self.attention is not None else None
        pooled, inverse = pool_cells(self.pool, h, group, scores)
        return self.fc(self.dropout(pooled)), inverse


class TwoHeadModule(TezModule):
    """:class:`~cellloc.engine.TezModule` with an image head: ``loss = cell loss + image_loss_weight * image loss``.

    Batches carry ``group`` (the field of each cell) and ``image_targets`` (its field's labels)
    besides ``image`` and ``targets`` (the cell targets: the field's labels, or soft ones); without
    them (validation) only the cell loss is computed. Checkpoints hold the backbone (``net``) only,
    so the image head is a training device: :attr:`image_head` is saved with the training state.
    """

    def __init__(self, net: nn.Module, loss_fn: nn.Module, optimizer_factory, num_classes: int, pool: str,
                 image_loss_weight: float = 1.0, channels_last: bool = False) -> None:
        super().__init__(net, loss_fn, optimizer_factory, channels_last)
        if image_loss_weight < 0:
            raise ValueError(f"image_loss_weight must be >= 0, got {image_loss_weight}")
        self.image_head = ImageHead(num_features(net), num_classes, pool)
        self.image_loss_weight = float(image_loss_weight)

    def forward(self, image: torch.Tensor, targets: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                group: torch.Tensor | None = None, image_targets: torch.Tensor | None = None, **_: Any):
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        h = embed(self.net, image)
        logits = classify(self.net, h)
        loss = self.loss(logits, targets, weight)
        if loss is not None and group is not None and image_targets is not None:
            image_logits, inverse = self.image_head(h, group)
            per_field = image_targets.new_zeros(len(image_logits), image_targets.shape[1]).index_copy_(0, inverse, image_targets)
            loss = loss + self.image_loss_weight * self.loss_fn(image_logits.float(), per_field)
        return logits, loss, {}

    def optimizer_scheduler(self):
        return self.optimizer_factory(nn.ModuleList([self.net, self.image_head]))
