"""The per-field core: one field's arrays in, its cells and their scores out, never a folder.

A web request, a cluster worker and a folder run (:mod:`cellloc.runs.predict`) call the same
functions; only where the arrays come from and where the answers go differ.

    cells, nuclei = segmenter.segment(image)                     # cellloc.segmentation
    table, crops = crop_field(image, cells, nuclei, classifier)  # the crops the model was trained on
    scores = field_scores(image, cells, nuclei, classifier, image_classifier=None, options=FieldOptions())
    text = encode_prediction(cells, scores.table, scores.scores)  # the submission's PredictionString

Shapes: ``image`` is HxWxC uint8/uint16 in the task's channel order, ``cells``/``nuclei`` HxW
integer instance labels (0 = background), ``probs`` (n_cells, n_classes) float in [0, 1].

Blending: winning HPA single-cell solutions scored a cell as cell x image, or 0.7-0.9 cell +
0.1-0.3 image: a class the whole field shows is more likely in each of its cells. A blend mode
(:data:`BLENDS`) names the rule and where the field's score comes from: the (area-weighted) mean
of its cells' own scores (``product``, ``mean``) or a separate image-level model's prediction on
the whole field, trained on the field labels, which are exact at that level (``image``,
``image_mean``). ``centred`` (the default without an image model) first moves each cell's logits
by its field's mean logit, so that the cell's part says how much more than its neighbours it shows
a class and the field's part how much the field does: a model trained on image labels scores every
cell of a field naming several classes lower in each, whether the cell shows it or not; and its
field's score is the geometric mean of the cells' cubic mean (``Blend.field_power``), which a class
that only some cells show lifts more than the plain mean does, and their highest score
(``Blend.field_max``; :func:`cells_field_score`). Then the
Negative class gets its score by a rule (:data:`NEGATIVE_RULES`): by default ``prod(1 - p)`` over
the other classes, the chance that the cell shows none of them. The rule reads the cells' own
scores (not centred) blended with a field share of its own (``Blend.negative_weight``): whether a
cell shows nothing is a question about the cell, which the field's score answers for every cell
alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .cells import cell_table, crop_cells
from .classifier import Classifier, Ensemble
from .errors import InputError
from .plate_norm import FieldNormaliser
from .submission import encode_field, prediction_string

CONFIDENCE_MODES = ("none", "weight")
Model = Classifier | Ensemble


@dataclass(frozen=True)
class Blend:
    """A blend mode: how a cell's scores and its field's are mixed, and what the field score is."""

    rule: str  # "none" (cells alone) | "product" cell^(1 - w) * field^w | "mean" (1 - w) * cell + w * field
    field: str  # "" (none) | "cells": the cells' weighted mean | "image": an image-level model's score of the field
    weight: float  # w, the field's share, unless the caller gives one
    help: str
    negative_weight: float | None = None  # the field's share in the scores the Negative rule reads (None: weight)
    centre: bool = False  # the cell's part is its logits less the field's mean logits (centre_on_field)
    field_power: float = 1.0  # r of the cells' power mean that is the field's score ("cells" fields; 1: the mean)
    field_max: float = 0.0  # m: the field's score is the power mean^(1 - m) * the highest cell's score^m

    def negative_share(self, field_weight: float) -> float:
        """The field's share in what the Negative rule reads, given the share ``field_weight`` of the classes."""
        return field_weight if self.negative_weight is None else self.negative_weight


BLENDS: dict[str, Blend] = {
    "none": Blend("none", "", 0.0, "each cell's own scores"),
    # w 0.75 rather than sqrt(cell * field) (0.5): on held-out generated fields +0.01-0.02 mAP, for models
    # trained on image labels and on true labels alike (docs/cellgap.md, "Round 3")
    # the Negative rule reads cell^0.75 * field^0.25: a negative cell of a positive field is the gap image labels
    # leave, and the field's mean raises its other classes like its neighbours' (docs/cellgap.md, "Round 6")
    "product": Blend("product", "cells", 0.75, "cell^(1 - w) * (mean cell score of the field)^w", negative_weight=0.25),
    # the cell's part centred on its field's mean logit: +0.011 +- 0.003 on the demo's five seeds and +0.007 to
    # +0.011 for each model of seed 0's fields, true labels too; the field's score the cubic mean of its cells'
    # (a class some cells show weighs more than the plain mean gives it): +0.024 more; the field's share 0.85
    # rather than 0.75: +0.006 more, every seed higher (docs/cellgap.md, "Round 23"). The Negative rule reads the
    # cells as the product blend does (centred, its AP fell by 0.08-0.13: whether a cell shows nothing is a
    # question about the cell, not about it against its neighbours)
    # its field's score the geometric mean of that cubic mean and the field's highest cell (m 0.5): +0.0046 +- 0.0031
    # on the demo's five seeds, none lower (docs/cellgap.md, "Round 25")
    "centred": Blend("product", "cells", 0.85, "sigmoid(logit(cell) - the field's mean logit)^(1 - w) * (the field's "
                     "score)^w, the field's score sqrt(the cubic mean of its cell scores * the highest)",
                     negative_weight=0.25, centre=True, field_power=3.0, field_max=0.5),
    "mean": Blend("mean", "cells", 0.3, "(1 - w) * cell + w * mean cell score"),
    "image": Blend("product", "image", 0.5, "cell^(1 - w) * (image model's score of the field)^w: the winning "
                   "solutions' cell x image"),
    "image_mean": Blend("mean", "image", 0.3, "(1 - w) * cell + w * image model's score"),
}
BLEND_MODES = tuple(BLENDS)


def default_blend(has_image_model: bool) -> str:
    """The blend a cell model's prediction uses unless told: with its image partner's score of the field
    when there is one, else ``centred`` (the cells centred on their field, the field's cubic mean and highest cell)."""
    return "image" if has_image_model else "centred"


@dataclass(frozen=True)
class FieldOptions:
    """How one field's cells are scored: blending, TTA views, batch size (plain values, no config file)."""

    blend: str = "centred"  # a name in BLENDS
    field_weight: float | None = None  # w, the field score's share (None: the blend mode's own)
    tta: int = 1  # dihedral views averaged per crop (1, 2, 4, 8)
    batch_size: int = 64  # crops per forward pass
    cell_confidence: str = "none"  # none | weight: final scores times the cell's weight (small, edge-cut, no nucleus)
    negative: str = "absent"  # a name in NEGATIVE_RULES: how the Negative class is scored
    negative_field_weight: float | None = None  # the field's share in what the rule reads (None: the blend's own)
    field_power: float | None = None  # r of the cells' power mean, the field's score (None: the blend's own)
    shown_power: float = 0.0  # k: each cell's weight in the field's score times (1 - its Negative score)^k
    field_max: float | None = None  # m, the highest cell's share in the field's score (None: the blend's own)

    def __post_init__(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {BLEND_MODES}, not {self.blend!r}")
        if self.negative not in NEGATIVE_RULES:
            raise ValueError(f"negative rule must be one of {NEGATIVE_MODES}, not {self.negative!r}")
        if self.cell_confidence not in CONFIDENCE_MODES:
            raise ValueError(f"cell confidence must be one of {CONFIDENCE_MODES}, not {self.cell_confidence!r}")
        for name, w in (("field weight", self.field_weight), ("negative field weight", self.negative_field_weight)):
            if w is not None and not 0 <= w <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {w}")
        if self.field_power is not None and not 0 < self.field_power <= 64:
            raise ValueError(f"field power must be in (0, 64], got {self.field_power}")
        if not 0 <= self.shown_power <= 64:
            raise ValueError(f"shown power must be in [0, 64], got {self.shown_power}")
        if self.field_max is not None and not 0 <= self.field_max <= 1:
            raise ValueError(f"field max share must be in [0, 1], got {self.field_max}")

    def power(self) -> float:
        """r of the power mean of the cells' scores that is the field's score."""
        return BLENDS[self.blend].field_power if self.field_power is None else self.field_power

    def max_share(self) -> float:
        """m, the share of the field's highest cell in the field's score."""
        return BLENDS[self.blend].field_max if self.field_max is None else self.field_max

    def share(self) -> float:
        """w, the field's share in the classes' blend."""
        return BLENDS[self.blend].weight if self.field_weight is None else self.field_weight

    def negative_share(self) -> float:
        """The field's share in the scores the Negative rule reads."""
        if self.negative_field_weight is not None:
            return self.negative_field_weight
        return BLENDS[self.blend].negative_share(self.share())


@dataclass
class FieldScores:
    """One field's cells (the :func:`cellloc.cells.cell_table` rows) and their scores at each step."""

    table: pd.DataFrame
    cell_probs: np.ndarray  # (n_cells, C) the cell model's own scores
    field_score: np.ndarray  # (C,) what the cells were blended with
    scores: np.ndarray  # (n_cells, C) final: blended, Negative by its rule


# --------------------------------------------------------------------------- pure scoring steps


def cell_weights(area: np.ndarray, edge: np.ndarray, nucleus_area: np.ndarray | None = None,
                 edge_weight: float = 0.5) -> np.ndarray:
    """How much a field's cells are trusted: area relative to the field's median (capped at 1), times
    ``edge_weight`` for edge-cut cells, and 0 for a cell without a nucleus (``nucleus_area`` 0).

    A small or edge-cut cell shows less of its pattern, and a "cell" without a nucleus is mostly
    a segmentation error: their scores are the least reliable. Used to weight the field's mean
    cell score, and optionally the training loss and the submission's confidences. When no cell
    of the field has a nucleus (masks given without nucleus masks) the nucleus rule is skipped.
    """
    area = np.asarray(area, float)
    rel = np.clip(area / max(np.median(area), 1.0), 0.0, 1.0) if len(area) else area
    w = rel * np.where(np.asarray(edge, bool), edge_weight, 1.0)
    if nucleus_area is not None and (np.asarray(nucleus_area, float) > 0).any():
        w = np.where(np.asarray(nucleus_area, float) > 0, w, 0.0)
    return w


def mean_cell_score(probs: np.ndarray, weights: np.ndarray | None = None, power: float = 1.0) -> np.ndarray:
    """(C,) the weighted power mean of a field's cell scores, ``(sum w p^r / sum w)^(1/r)`` with r ``power``
    (1: the mean; larger r leans towards the field's highest scores; equal weights by default)."""
    if power <= 0:
        raise ValueError(f"field power must be > 0, got {power}")
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, float)
    p = np.asarray(probs, np.float64)
    return ((p ** power * w[:, None]).sum(0) / max(w.sum(), 1e-9)) ** (1.0 / power)


def cells_field_score(probs: np.ndarray, weights: np.ndarray | None = None, power: float = 1.0,
                      max_share: float = 0.0) -> np.ndarray:
    """(C,) a field's score from its cells' scores: their weighted power mean (:func:`mean_cell_score`) times,
    with share ``max_share`` m, the highest score of a cell that weighs anything:
    ``mean^(1 - m) * max^m``.

    A class one cell of many shows lifts the field's highest cell even where its mean stays low; the max
    alone also takes one cell's false alarm for the field's answer, the mean of the two less so.
    """
    mean = mean_cell_score(probs, weights, power)
    if not 0 <= max_share <= 1:
        raise ValueError(f"field max share must be in [0, 1], got {max_share}")
    if max_share == 0 or len(probs) == 0:
        return mean
    p = np.asarray(probs, np.float64)
    if weights is not None and (np.asarray(weights) > 0).any():
        p = p[np.asarray(weights) > 0]
    return mean ** (1 - max_share) * p.max(0) ** max_share


def shown_weights(probs: np.ndarray, weights: np.ndarray | None, negative: int | None, power: float) -> np.ndarray:
    """(n_cells,) each cell's weight in its field's score: ``weights`` (None: 1) times ``(1 - p_negative)^power``.

    A cell the model sees showing nothing says little about which classes its field shows, yet it
    counts in the field's mean as much as one that shows them; ``power`` 0 (or a task without a
    Negative class, ``negative`` None) leaves the weights as they are."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, float)
    if negative is None or power == 0 or len(probs) == 0:
        return w
    return w * np.clip(1.0 - np.asarray(probs, np.float64)[:, negative], 0.0, 1.0) ** power


def centre_on_field(probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(n_cells, C) ``sigmoid(logit(p) - m)`` with ``m`` (C,) the field's weighted mean logit: each cell's
    scores relative to its field's (0.5: as the field's average cell), the field's level taken out."""
    p = np.clip(np.asarray(probs, np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    return 1.0 / (1.0 + np.exp(mean_cell_score(logit, weights)[None, :] - logit))


def mix_with_field(probs: np.ndarray, field: np.ndarray, rule: str, field_weight: float,
                   cell_weights: np.ndarray | None = None, centre: bool = False) -> np.ndarray:
    """Mix each cell's scores ``probs`` (n_cells, C) with a given field score ``field`` (C,) by ``rule``.

    The mixing step alone, apart from where the field's score comes from: ``product`` is the weighted
    geometric mean ``cell^(1 - w) * field^w`` (w 0.5: ``sqrt(cell * field)``), which ranks cells as the
    plain product does at w 0.5 and keeps scores on the probability scale; ``mean`` is
    ``(1 - w) * cell + w * field``; ``none`` leaves the cells as they are. ``centre`` replaces the
    cell's part by :func:`centre_on_field` of the cells (weighted by ``cell_weights``).
    """
    if rule not in ("none", "product", "mean"):
        raise ValueError(f"blend rule must be none, product or mean, not {rule!r}")
    if rule == "none" or len(probs) == 0:
        return probs
    w = float(field_weight)
    if not 0 <= w <= 1:
        raise ValueError(f"field weight must be in [0, 1], got {w}")
    field = np.asarray(field, np.float64)
    cell = centre_on_field(probs, cell_weights) if centre else np.asarray(probs, np.float64)
    if rule == "product":
        return (cell ** (1 - w) * field[None, :] ** w).astype(np.float32)
    return ((1 - w) * cell + w * field[None, :]).astype(np.float32)


def blend_with_field(probs: np.ndarray, mode: str = "product", field_weight: float | None = None,
                     cell_weights: np.ndarray | None = None, field_score: np.ndarray | None = None,
                     centre: bool | None = None, field_power: float | None = None,
                     field_cell_weights: np.ndarray | None = None, field_max: float | None = None) -> np.ndarray:
    """Mix each cell's scores ``probs`` (n_cells, C) with its field's score by a mode of :data:`BLENDS`.

    ``field_score`` (C,) is an image-level model's score of the field, which the ``image`` modes
    need and the others refuse; the ``cells`` modes take :func:`cells_field_score` of the cells: their
    weighted power mean (r ``field_power``) and the share of their highest (``field_max``; None, either:
    the mode's own ``Blend.field_power``, ``Blend.field_max``), each
    cell weighed by ``field_cell_weights`` (None: ``cell_weights``, which down-weight small or
    edge-cut cells; :func:`shown_weights`). ``field_weight`` is w, the field's share (None: the
    mode's own, ``Blend.weight``); ``centre`` None is the mode's own ``Blend.centre``. The mixing
    itself is :func:`mix_with_field`.
    """
    if mode not in BLENDS:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, not {mode!r}")
    blend = BLENDS[mode]
    if (blend.field == "image") != (field_score is not None):
        raise ValueError(f"blend {mode}: " + ("needs an image model's field score" if blend.field == "image"
                                               else "blends with the cells' own mean, not a given field score"))
    if blend.rule == "none" or len(probs) == 0:
        return probs
    w = blend.weight if field_weight is None else float(field_weight)
    if field_score is None:
        r = blend.field_power if field_power is None else float(field_power)
        m = blend.field_max if field_max is None else float(field_max)
        in_field = cell_weights if field_cell_weights is None else field_cell_weights
        field_score = cells_field_score(probs, in_field, r, m)
    return mix_with_field(probs, field_score, blend.rule, w, cell_weights, blend.centre if centre is None else centre)


@dataclass(frozen=True)
class NegativeRule:
    """How a cell's Negative score is made from its (blended) scores: ``fn(negative, others)`` with
    ``negative`` (n,) the model's own Negative score and ``others`` (n, C-1) every other class's."""

    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    help: str


NEGATIVE_RULES: dict[str, NegativeRule] = {
    # A model trained on image labels learns Negative as "this field has some negative cell": every
    # cell of such a field carries the label, so the model's own score barely ranks cells within it.
    # Whether the cell shows none of the other classes does: docs/cellgap.md, "Round 3".
    "absent": NegativeRule(lambda neg, others: np.prod(1.0 - others, axis=1),
                           "prod(1 - p) over the other classes: the chance the cell shows none of them"),
    "exclusive": NegativeRule(lambda neg, others: neg * np.prod(1.0 - others, axis=1),
                              "the model's Negative score times prod(1 - p) over the other classes"),
    "raise": NegativeRule(lambda neg, others: np.maximum(neg, (1.0 - others).min(axis=1)),
                          "the model's Negative score, raised to min(1 - p) over the other classes"),
    "model": NegativeRule(lambda neg, others: neg, "the model's own Negative score"),
}
NEGATIVE_MODES = tuple(NEGATIVE_RULES)


def with_negative(probs: np.ndarray, negative: int | None, rule: str = "absent", basis: np.ndarray | None = None) -> np.ndarray:
    """``probs`` with the Negative column (id ``negative``; None: the task has none) scored by ``rule``
    from ``basis`` (same shape; default ``probs`` itself): e.g. the cells' scores blended with less
    of the field than ``probs`` were.

    Only the Negative column changes, and the competition ranks each class on its own, so a rule
    moves the Negative class's AP and nothing else.
    """
    if rule not in NEGATIVE_RULES:
        raise ValueError(f"negative rule must be one of {NEGATIVE_MODES}, not {rule!r}")
    if negative is None or len(probs) == 0:
        return probs
    basis = probs if basis is None else basis
    if basis.shape != probs.shape:
        raise ValueError(f"the Negative rule's scores have shape {basis.shape}, the cells' {probs.shape}")
    out = probs.copy()
    others = np.delete(basis, negative, axis=1).astype(np.float64)
    out[:, negative] = NEGATIVE_RULES[rule].fn(basis[:, negative].astype(np.float64), others)
    return out


# --------------------------------------------------------------------------- a field through loaded models


def crop_field(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, classifier: Model) -> tuple[pd.DataFrame, np.ndarray]:
    """(cells table, (n_cells, S, S, C) crops) of a field, cut as the cell model's training crops were."""
    recipe = classifier.recipe
    if recipe.level != "cell":
        raise InputError(f"a {recipe.level}-level model scores whole fields, not cells")
    size, mask = recipe.input.get("crop_size"), recipe.input.get("crop_mask")
    if not size or not mask:
        raise InputError("the cell model's recipe does not record its crop size and mask (its cells table had no "
                         "segment_config.json beside it); pass them with the segmentation config")
    table = cell_table(image, cells, nuclei, classifier.task.channels)
    if len(table) == 0:
        return table, np.zeros((0, size, size, image.shape[2]), image.dtype)
    crops = crop_cells(image, cells, table, int(size), mask, recipe.input.get("crop_fit", "pad"))
    return table, np.stack([crops[int(c)] for c in table["cell_id"]])


def score_image(image: np.ndarray, classifier: Model, tta: int = 1) -> np.ndarray:
    """(C,) an image-level model's probabilities for one whole field (HxW x the task's channels; a model
    trained on a subset of them, ``recipe.channels``, sees only those)."""
    if classifier.recipe.level != "image":
        raise InputError(f"a {classifier.recipe.level}-level model scores cells, not whole fields")
    method = classifier.recipe.input.get("normalise", "none")
    if method not in ("none", "site"):
        raise InputError(f"this model standardises each field by its {method} statistics (pixel_stats.csv of its "
                         "dataset), which a lone field lacks: predict its dataset folder with predict.py")
    channels, task_channels = classifier.recipe.channels, classifier.task.channels
    if image.ndim == 3 and channels != task_channels and image.shape[2] == len(task_channels):
        image = image[..., [task_channels.index(c) for c in channels]]  # a model of a subset of the stains
    return classifier.predict([FieldNormaliser(method)("", image)], tta=tta, batch_size=1)[0]


def field_scores(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, classifier: Model,
                 image_classifier: Model | None = None, options: FieldOptions = FieldOptions()) -> FieldScores:
    """Score every cell of one field with a loaded cell classifier (see the module docstring).

    ``image_classifier`` (an image-level model of the same task) is what the ``image`` blend
    modes need: the cells are blended with its score of the whole field; the other modes refuse it.
    """
    task = classifier.task
    check_image_blend(options.blend, image_classifier is not None)
    if image_classifier is not None and image_classifier.task.name != task.name:
        raise InputError(f"the image model is for task {image_classifier.task.name}, the cell model for {task.name}")
    table, crops = crop_field(image, cells, nuclei, classifier)
    n = task.num_classes
    if len(table) == 0:
        empty = np.zeros((0, n), np.float32)
        return FieldScores(table, empty, np.zeros(n, np.float32), empty)
    probs = classifier.predict(crops, tta=options.tta, batch_size=options.batch_size)
    weights = cell_weights(table["area"].to_numpy(), table["edge"].to_numpy())
    image_score = score_image(image, image_classifier, options.tta) if image_classifier is not None else None
    blend = BLENDS[options.blend]
    in_field = shown_weights(probs, weights, task.label_set.negative, options.shown_power)
    field = cells_field_score(probs, in_field, options.power(), options.max_share()) if image_score is None else image_score
    blended = mix_with_field(probs, field, blend.rule, options.share(), weights, blend.centre)
    # what Negative reads: less of the field, the cells' own scores and the field's mean (as the product blend)
    plain = mean_cell_score(probs, weights) if image_score is None else image_score
    basis = mix_with_field(probs, plain, blend.rule, options.negative_share(), weights)
    scores = with_negative(blended, task.label_set.negative, options.negative, basis)
    if options.cell_confidence == "weight":
        trust = cell_weights(table["area"].to_numpy(), table["edge"].to_numpy(), table["nucleus_area"].to_numpy())
        scores = (scores * trust[:, None]).astype(np.float32)
    return FieldScores(table, probs, np.asarray(field, np.float32), scores)


def check_image_blend(mode: str, has_image_model: bool) -> None:
    """InputError unless an image model is given exactly when blend ``mode`` uses one (``--blend image`` and
    ``--image-models`` go together: an image model that no blend reads is a mistake, not a no-op)."""
    uses = BLENDS[mode].field == "image" if mode in BLENDS else False
    if uses and not has_image_model:
        raise InputError(f"--blend {mode} blends each cell with an image-level model's field score: pass --image-models RUN")
    if has_image_model and not uses:
        image_modes = " or ".join(n for n, b in BLENDS.items() if b.field == "image")
        raise InputError(f"--image-models is read by --blend {image_modes}, not --blend {mode}")


def encode_prediction(cells: np.ndarray, table: pd.DataFrame, scores: np.ndarray, min_confidence: float = 0.0,
                      top_k: int | None = None) -> str:
    """The HPA single-cell PredictionString of a field: a ``class confidence mask`` triple per (cell, class)."""
    ids: Sequence[int] = [int(c) for c in table["cell_id"]]
    masks = encode_field(cells, ids) if ids else {}
    return prediction_string([masks[c] for c in ids], scores, min_confidence, top_k)
