"""The per-field core on hand-made arrays: blending, Negative, cell weights, a field through a model."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.classifier import Recipe
from cellloc.errors import InputError
from cellloc.pipeline import (
    FieldOptions,
    blend_with_field,
    cell_weights,
    cells_field_score,
    centre_on_field,
    crop_field,
    encode_prediction,
    field_scores,
    default_blend,
    mean_cell_score,
    mix_with_field,
    shown_weights,
    with_negative,
)
from cellloc.submission import decode_mask
from cellloc.tasks import get_task


def test_blend_product_and_mean():
    p = np.array([[0.9, 0.1], [0.1, 0.1]], np.float32)
    field = p.mean(0)
    # product: the weighted geometric mean, the field's share 0.75 unless given (0.5: sqrt(cell * field))
    np.testing.assert_allclose(blend_with_field(p, "product"), p ** 0.25 * field ** 0.75, rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "product", 0.5), np.sqrt(p * field), rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "product", 0.0), p, rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "mean"), 0.7 * p + 0.3 * field, rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "mean", 0.25), 0.75 * p + 0.25 * field, rtol=1e-6)
    with pytest.raises(ValueError, match="field weight must be in"):
        blend_with_field(p, "product", 1.5)
    np.testing.assert_array_equal(blend_with_field(p, "none"), p)
    # a weighted field score ignores a zero-weight cell
    np.testing.assert_allclose(blend_with_field(p, "mean", 1.0, np.array([1.0, 0.0]))[1], p[0], rtol=1e-6)
    # the image modes: an image model's field score in place of the cells' mean
    image = np.array([0.0, 1.0])
    np.testing.assert_allclose(blend_with_field(p, "image", field_score=image), np.sqrt(p * image), rtol=1e-6)  # w 0.5
    np.testing.assert_allclose(blend_with_field(p, "image_mean", 0.25, field_score=image), 0.75 * p + 0.25 * image, rtol=1e-6)
    np.testing.assert_allclose(mean_cell_score(p, np.array([3.0, 1.0])), [0.7, 0.1], rtol=1e-6)
    with pytest.raises(ValueError):
        blend_with_field(p, "max")
    with pytest.raises(ValueError, match="needs an image model"):
        blend_with_field(p, "image")
    with pytest.raises(ValueError, match="not a given field score"):
        blend_with_field(p, "product", field_score=image)


def test_mixing_with_a_given_field_score():
    # the mixing step alone: any field score (C,), the rule and the share given
    p = np.array([[0.9, 0.1], [0.1, 0.1]])
    field = np.array([0.4, 0.8])
    np.testing.assert_allclose(mix_with_field(p, field, "product", 0.75), p ** 0.25 * field ** 0.75, rtol=1e-6)
    np.testing.assert_allclose(mix_with_field(p, field, "mean", 0.3), 0.7 * p + 0.3 * field, rtol=1e-6)
    np.testing.assert_allclose(mix_with_field(p, field, "product", 1.0, centre=True), np.broadcast_to(field, p.shape))
    np.testing.assert_allclose(mix_with_field(p, field, "product", 0.0, np.array([1.0, 0.0]), centre=True),
                               centre_on_field(p, np.array([1.0, 0.0])), rtol=1e-6)
    np.testing.assert_array_equal(mix_with_field(p, field, "none", 0.5), p)
    # a cells mode is the mixing of the cells' own power mean
    w = np.array([1.0, 0.5])
    np.testing.assert_allclose(blend_with_field(p, "centred", cell_weights=w),
                               mix_with_field(p, cells_field_score(p, w, 3, 0.5), "product", 0.85, w, centre=True),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="field weight must be in"):
        mix_with_field(p, field, "mean", -0.1)
    with pytest.raises(ValueError, match="blend rule must be"):
        mix_with_field(p, field, "max", 0.5)
    assert FieldOptions().share() == 0.85 and FieldOptions(field_weight=0.5).share() == 0.5
    assert FieldOptions(blend="product").share() == 0.75


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def test_centred_blend_takes_the_fields_level_out_of_the_cells_part():
    # two fields naming the first class: the model scores every cell of the second lower (a field naming
    # several classes), though in each field the same cells show it; centred, their parts are alike
    one = np.array([[0.95, 0.2], [0.9, 0.2], [0.3, 0.2]])
    lowered = 1 / (1 + np.exp(-(logit(one) - np.array([2.0, 0.0]))))  # every cell 2 logits lower in class 0
    np.testing.assert_allclose(centre_on_field(one), centre_on_field(lowered), rtol=1e-9)
    # 0.5 is the field's average cell; a class every cell shows alike is 0.5 in each
    np.testing.assert_allclose(centre_on_field(one)[:, 1], 0.5)
    assert centre_on_field(one)[0, 0] > 0.5 > centre_on_field(one)[2, 0]
    np.testing.assert_allclose(logit(centre_on_field(one)).mean(0), 0.0, atol=1e-9)
    # weighted as the field's mean: a zero-weight cell does not move the centre
    w = np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(logit(centre_on_field(one, w))[:2].sum(0), 0.0, atol=1e-9)
    # certain scores stay finite
    assert np.isfinite(centre_on_field(np.array([[0.0, 1.0], [1.0, 0.0]]))).all()
    # the blend: the centred cell's part times the field's score, the geometric mean of the cubic mean of the
    # field's cells and its highest cell, each with its share
    cubic = ((one ** 3).mean(0)) ** (1 / 3)
    field = np.sqrt(cubic * one.max(0))
    np.testing.assert_allclose(blend_with_field(one, "centred"), centre_on_field(one) ** 0.15 * field ** 0.85, rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(one, "centred", 0.75, centre=False, field_power=1, field_max=0),
                               blend_with_field(one, "product"), rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(one, "product", 0.85, centre=True, field_power=3, field_max=0.5),
                               blend_with_field(one, "centred"), rtol=1e-6)


def test_the_fields_score_is_a_power_mean_of_its_cells():
    # one cell of three shows the class: the mean gives the field a third of it, the cubic mean more
    p = np.array([[0.9], [0.0], [0.0]])
    np.testing.assert_allclose(mean_cell_score(p), [0.3])
    np.testing.assert_allclose(mean_cell_score(p, power=3), [0.9 / 3 ** (1 / 3)])
    np.testing.assert_allclose(mean_cell_score(p, np.array([1.0, 0.0, 0.0]), power=3), [0.9])  # weighted as the mean
    assert mean_cell_score(p, power=64)[0] == pytest.approx(0.9, abs=0.02)  # towards the max
    alike = np.full((4, 2), 0.4)
    for r in (1, 2, 3):  # cells alike: every power mean is their score
        np.testing.assert_allclose(mean_cell_score(alike, power=r), [0.4, 0.4])
    with pytest.raises(ValueError, match="field power must be > 0"):
        mean_cell_score(p, power=0)
    with pytest.raises(ValueError, match="field power must be in"):
        FieldOptions(field_power=-1)
    assert FieldOptions().power() == 3.0 and FieldOptions(blend="product").power() == 1.0
    assert FieldOptions(blend="product", field_power=2).power() == 2.0
    # the default of a cell model: centred without an image model, the image model's score with one
    assert (default_blend(False), default_blend(True), FieldOptions().blend) == ("centred", "image", "centred")


def test_the_fields_score_can_lean_on_its_highest_cell():
    # m, the highest cell's share: mean^(1 - m) * max^m; m 0 is the power mean, m 1 the highest cell
    p = np.array([[0.9, 0.2], [0.1, 0.2], [0.2, 0.2]])
    w = np.array([1.0, 1.0, 0.5])
    np.testing.assert_array_equal(cells_field_score(p, w, 3.0), mean_cell_score(p, w, 3.0))
    np.testing.assert_allclose(cells_field_score(p, w, 3.0, 1.0), [0.9, 0.2])
    half = cells_field_score(p, w, 3.0, 0.5)
    np.testing.assert_allclose(half, np.sqrt(mean_cell_score(p, w, 3.0) * [0.9, 0.2]))
    assert mean_cell_score(p, w, 3.0)[0] < half[0] < 0.9 and half[1] == pytest.approx(0.2)  # cells alike: their score
    # a cell that weighs nothing is not the field's highest
    np.testing.assert_allclose(cells_field_score(p, np.array([0.0, 1.0, 1.0]), 1.0, 1.0), [0.2, 0.2])
    np.testing.assert_allclose(cells_field_score(p, np.zeros(3) + 1e-12, 1.0, 1.0), [0.9, 0.2])
    with pytest.raises(ValueError, match="field max share must be in"):
        cells_field_score(p, w, 3.0, 1.5)
    with pytest.raises(ValueError, match="field max share must be in"):
        FieldOptions(field_max=-0.1)
    # the cells blends read it; the Blend's own share unless given
    np.testing.assert_allclose(blend_with_field(p, "centred", 1.0, w, field_max=1.0), np.broadcast_to([0.9, 0.2], p.shape),
                               rtol=1e-6)
    assert FieldOptions(field_max=0.25).max_share() == 0.25
    assert FieldOptions(blend="product").max_share() == 0.0


def test_cells_that_show_nothing_count_less_in_the_fields_score():
    # the third cell the model sees showing nothing (Negative 0.9, the last class): its weight in the field's
    # score is (1 - 0.9)^k of its trust weight, so the field's class 0 comes from the two cells that show things
    p = np.array([[0.8, 0.1, 0.0], [0.6, 0.1, 0.1], [0.05, 0.05, 0.9]])
    w = np.array([1.0, 0.5, 1.0])
    shown = shown_weights(p, w, 2, 2.0)
    np.testing.assert_allclose(shown, [1.0, 0.5 * 0.81, 0.01])
    np.testing.assert_array_equal(shown_weights(p, w, 2, 0.0), w)  # k 0: the weights as they were
    np.testing.assert_array_equal(shown_weights(p, w, None, 2.0), w)  # a task without a Negative class
    np.testing.assert_array_equal(shown_weights(p, None, 2, 0.0), np.ones(3))
    assert mean_cell_score(p, shown, 3)[0] > mean_cell_score(p, w, 3)[0]
    # the blend reads them for the field's part only: w 1 is the field's score, w 0 the cells centred on the trust
    # weights as before
    np.testing.assert_allclose(blend_with_field(p, "centred", 1.0, w, field_cell_weights=shown),
                               np.broadcast_to(cells_field_score(p, shown, 3, 0.5), p.shape), rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "centred", 0.0, w, field_cell_weights=shown), centre_on_field(p, w),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="shown power must be in"):
        FieldOptions(shown_power=-1)


def test_negative_rules():
    # cell 0 shows no class, cell 1 a confident first class; the model's own Negative score is the field's (0.6)
    p = np.array([[0.05, 0.1, 0.6], [0.9, 0.1, 0.6]], np.float32)
    absent = with_negative(p, negative=2)  # the default: the chance the cell shows none of the other classes
    np.testing.assert_allclose(absent[:, 2], [0.95 * 0.9, 0.1 * 0.9], rtol=1e-6)
    np.testing.assert_array_equal(absent[:, :2], p[:, :2])  # only the Negative column changes
    np.testing.assert_allclose(with_negative(p, 2, "exclusive")[:, 2], [0.6 * 0.95 * 0.9, 0.6 * 0.1 * 0.9], rtol=1e-6)
    np.testing.assert_allclose(with_negative(p, 2, "raise")[:, 2], [0.9, 0.6], rtol=1e-6)  # max(own, min(1 - p))
    np.testing.assert_array_equal(with_negative(p, 2, "model"), p)
    np.testing.assert_array_equal(with_negative(p, None), p)  # a task without a Negative class
    with pytest.raises(ValueError, match="negative rule"):
        with_negative(p, 2, "min")
    with pytest.raises(ValueError, match="negative rule"):
        FieldOptions(negative="min")
    # the rule can read other scores than the ones it writes into: here cell 0 confident of the first class
    basis = np.array([[0.5, 0.0, 0.6], [0.0, 0.0, 0.6]], np.float32)
    from_basis = with_negative(p, 2, basis=basis)
    np.testing.assert_allclose(from_basis[:, 2], [0.5, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(from_basis[:, :2], p[:, :2])
    with pytest.raises(ValueError, match="shape"):
        with_negative(p, 2, basis=basis[:1])


def test_negative_reads_the_cells_blended_with_a_share_of_its_own():
    """The default blend gives the field 0.85 of each class's score but 0.25 of what the Negative rule reads."""
    assert FieldOptions().negative_share() == 0.25
    assert FieldOptions(blend="mean").negative_share() == 0.3  # other blends: the classes' own share
    assert FieldOptions(blend="mean", field_weight=0.4).negative_share() == 0.4
    assert FieldOptions(negative_field_weight=0.6).negative_share() == 0.6
    with pytest.raises(ValueError, match="negative field weight"):
        FieldOptions(negative_field_weight=1.5)
    image, cells = two_cell_field()
    nuclei = np.zeros_like(cells)
    default = field_scores(image, cells, nuclei, FixedScores("cell")).scores
    same = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(negative_field_weight=0.75)).scores
    # cell 1 is sure of class 0, cell 2 of nothing: the field's mean of class 0 is 0.5, its cubic mean 0.5^(1/3),
    # its highest cell 1, so the field's score (what the default blend reads) 0.5^(1/6); the cell's part, centred, is 1
    np.testing.assert_allclose(default[0, 0], 0.5 ** (0.85 / 6), rtol=1e-5)
    # --shown-power 2: cell 2, sure it shows nothing, weighs (1 - 1)^2 in the field's score, which is cell 1's, 1
    np.testing.assert_allclose(field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(
        shown_power=2)).scores[0, 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(default[:, :18], same[:, :18])  # the classes are blended alike ...
    np.testing.assert_allclose(default[0, 18], 1 - 0.5 ** 0.25, rtol=1e-5)  # ... Negative reads cell^0.75 * field^0.25
    np.testing.assert_allclose(same[0, 18], 1 - 0.5 ** 0.75, rtol=1e-5)
    np.testing.assert_allclose(default[1, 18], 1.0)


def test_cell_weights_downweight_small_and_edge_cells():
    w = cell_weights(np.array([100, 100, 25]), np.array([False, True, False]))
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25])
    # a cell without a nucleus counts for nothing, unless no cell of the field has one (no nucleus masks)
    w = cell_weights(np.array([100, 100, 25]), np.array([False, True, False]), np.array([30, 0, 10]), edge_weight=0.25)
    np.testing.assert_allclose(w, [1.0, 0.0, 0.25])
    np.testing.assert_allclose(cell_weights(np.array([100, 100, 50]), np.zeros(3, bool), np.zeros(3)), [1.0, 1.0, 0.5])


class FixedScores:
    """A loaded model's interface with fixed outputs: sure of class 0 for the first sample only, and that the
    others show nothing (Negative, the last class)."""

    def __init__(self, level: str, crop_size: int = 16) -> None:
        task = get_task("hpa-sc")
        recipe_input = {"kind": "cell_crop", "crop_size": crop_size, "crop_mask": "cell", "segment": None} \
            if level == "cell" else {"kind": "field", "resize": 32, "tiles": 1}
        self.recipe = Recipe("hpa-sc", level, "efficientnet-b0", 4, 19, 32, [0.0] * 4, [1.0] * 4, "multilabel", recipe_input)
        self.task = task
        self.seen: list[np.ndarray] = []

    def predict(self, samples, tta: int = 1, batch_size: int = 64) -> np.ndarray:
        self.seen += list(samples)
        out = np.zeros((len(samples), 19), np.float32)
        if len(samples):
            out[0, 0] = 1.0
            out[1:, -1] = 1.0
        return out


def two_cell_field() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((64, 64, 4), 100, np.uint8)
    cells = np.zeros((64, 64), np.uint16)
    cells[5:25, 5:25] = 1
    cells[35:55, 35:55] = 2
    return image, cells


def test_field_with_no_cells_gets_no_rows():
    model = FixedScores("cell")
    empty = np.zeros((64, 64), np.uint16)
    result = field_scores(np.zeros((64, 64, 4), np.uint8), empty, empty, model)
    assert len(result.table) == 0 and result.scores.shape == (0, 19) and model.seen == []


def test_field_scores_blend_and_negative():
    """Two cells; the model is sure of class 0 for cell 1 only: blending lifts cell 2, Negative fills in."""
    image, cells = two_cell_field()
    nuclei = np.zeros_like(cells)
    none = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(blend="none")).scores
    mean = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(blend="mean", field_weight=0.5))
    assert none[1, 0] == 0 and none[1, 18] == 1.0 and none[0, 18] == 0
    np.testing.assert_allclose(mean.scores[:, 0], [0.75, 0.25])
    np.testing.assert_allclose(mean.field_score[0], 0.5)
    # an image model's field score instead of the cells' mean: it says class 0 everywhere
    with_image = field_scores(image, cells, nuclei, FixedScores("cell"), FixedScores("image"),
                              FieldOptions(blend="image_mean", field_weight=0.5))
    np.testing.assert_allclose(with_image.scores[:, 0], [1.0, 0.5])
    np.testing.assert_allclose(with_image.field_score[0], 1.0)
    np.testing.assert_array_equal(with_image.cell_probs, mean.cell_probs)
    product = field_scores(image, cells, nuclei, FixedScores("cell"), FixedScores("image"), FieldOptions(blend="image"))
    np.testing.assert_allclose(product.scores[:, 0], [1.0, 0.0])  # sqrt(cell x image)
    # the default: the classes centred on the field and blended with its cubic mean, Negative read as the product
    # blend reads it (the cells uncentred, w 0.25, the field's plain mean)
    default = field_scores(image, cells, nuclei, FixedScores("cell"))
    w = cell_weights(default.table["area"].to_numpy(), default.table["edge"].to_numpy())
    probs = default.cell_probs
    np.testing.assert_allclose(default.scores[:, :18], blend_with_field(probs, "centred", 0.85, w)[:, :18], rtol=1e-5)
    # the field's score it reports is the one its cells were mixed with: at w 1 every cell's classes are it
    whole = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(field_weight=1.0))
    np.testing.assert_allclose(whole.scores[:, :18], np.broadcast_to(whole.field_score[:18], (2, 18)), rtol=1e-6)
    np.testing.assert_allclose(whole.field_score, cells_field_score(probs, w, 3, 0.5), rtol=1e-6)
    # --shown-power 2: the field's score weighs the cell that shows nothing (its own Negative 1) not at all
    shown = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(shown_power=2))
    np.testing.assert_allclose(shown.field_score[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(shown.scores[:, :18], blend_with_field(
        probs, "centred", 0.85, w, field_cell_weights=shown_weights(probs, w, 18, 2.0))[:, :18], rtol=1e-5)
    np.testing.assert_array_equal(shown.scores[:, 18], default.scores[:, 18])  # Negative reads as before
    np.testing.assert_allclose(default.scores[:, 18], with_negative(probs, 18, basis=blend_with_field(probs, "product", 0.25, w))[:, 18],
                               rtol=1e-5)
    assert default.scores[0, 0] > default.scores[1, 0]  # the cell that shows class 0 above the one that does not


@pytest.mark.parametrize("blend, image_model, message", [
    ("image", False, "--blend image blends each cell with an image-level model's field score: pass --image-models"),
    ("image_mean", False, "--blend image_mean blends"),
    ("product", True, "--image-models is read by --blend image or image_mean, not --blend product"),
    ("none", True, "not --blend none"),
])
def test_an_image_model_goes_with_an_image_blend_and_only_with_one(blend, image_model, message):
    image, cells = two_cell_field()
    with pytest.raises(InputError, match=message):
        field_scores(image, cells, np.zeros_like(cells), FixedScores("cell"), FixedScores("image") if image_model else None,
                     FieldOptions(blend=blend))


def test_cell_confidence_weight_ranks_less_trusted_cells_lower():
    """Cell 2 touches the field edge and has no nucleus while cell 1 has one: its answers drop to 0."""
    image, cells = two_cell_field()
    cells[35:64, 35:64] = np.where(cells[35:64, 35:64] == 0, 2, cells[35:64, 35:64])
    nuclei = (cells == 1).astype(np.uint16)
    plain = field_scores(image, cells, nuclei, FixedScores("cell"), options=FieldOptions(blend="none"))
    weighted = field_scores(image, cells, nuclei, FixedScores("cell"),
                            options=FieldOptions(blend="none", cell_confidence="weight"))
    small = 400 / np.median([400, 29 * 29])  # cell 1 is smaller than the field's median cell
    np.testing.assert_allclose(weighted.scores[0], plain.scores[0] * small, rtol=1e-6)
    assert plain.scores[1, 18] == 1.0 and weighted.scores[1].max() == 0.0
    with pytest.raises(ValueError, match="cell confidence must be one of"):
        FieldOptions(cell_confidence="area")


def test_crops_are_cut_as_the_recipe_says_and_levels_are_checked():
    image, cells = two_cell_field()
    table, crops = crop_field(image, cells, np.zeros_like(cells), FixedScores("cell", crop_size=24))
    assert table["cell_id"].tolist() == [1, 2] and crops.shape == (2, 24, 24, 4)
    stretched = FixedScores("cell", crop_size=24)
    stretched.recipe.input["crop_fit"] = "stretch"
    cells[5:25, 5:25] = 0
    cells[5:10, 5:45] = 1  # a flat cell: padded it fills a band, stretched the whole square
    _, pad = crop_field(image, cells, np.zeros_like(cells), FixedScores("cell", crop_size=24))
    _, fill = crop_field(image, cells, np.zeros_like(cells), stretched)
    assert (pad[0, ..., 0] > 0).mean() < 0.3 and (fill[0, ..., 0] > 0).mean() > 0.6  # margins aside
    with pytest.raises(InputError, match="image-level model scores whole fields"):
        crop_field(image, cells, np.zeros_like(cells), FixedScores("image"))
    with pytest.raises(InputError, match="cell-level model scores cells"):
        field_scores(image, cells, np.zeros_like(cells), FixedScores("cell"), FixedScores("cell"), FieldOptions(blend="image"))


def test_encoded_prediction_holds_every_cell_and_class():
    image, cells = two_cell_field()
    result = field_scores(image, cells, np.zeros_like(cells), FixedScores("cell"))
    tokens = encode_prediction(cells, result.table, result.scores).split()
    assert len(tokens) == 3 * 2 * 19
    np.testing.assert_array_equal(decode_mask(tokens[2], 64, 64), cells == 1)
    assert len(encode_prediction(cells, result.table, result.scores, top_k=1).split()) == 3 * 2
