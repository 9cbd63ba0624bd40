"""Post-processing on small hand-made maps: the reference procedures and the shared label helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.segmentation.postprocess import (
    REFERENCE_CUTOFFS,
    Cutoffs,
    fill_holes_per_label,
    fill_small_holes,
    keep_large_components,
    label_cell,
    label_nuclei,
    match_nuclei_to_cells,
    relabel_sequential,
    remove_edge_labels,
    remove_small_labels,
)

SMALL = Cutoffs(min_seed_px=5, max_hole_px=10, min_fragment_px=2, min_nucleus_px=20, min_cell_px=60, closing_radius_px=1)


def disc(shape, center, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def maps(shape, nuclei, cells, border=()):
    """uint8 HxWx3 nuclei and cell maps: body 255 inside the given masks, border channel 255 on ``border``."""
    n = np.zeros((*shape, 3), np.uint8)
    c = np.zeros((*shape, 3), np.uint8)
    for m in nuclei:
        n[m, 2] = 255
    for m in cells:
        c[m, 2] = 255
    for m in border:
        c[m, 1] = 255
        c[m, 2] = 0
    return n, c


def two_cell_scene(scale=1):
    shape = (48 * scale, 64 * scale)
    s = scale
    nuclei = [disc(shape, (24 * s, 18 * s), 5 * s), disc(shape, (24 * s, 46 * s), 5 * s)]
    cells = [disc(shape, (24 * s, 18 * s), 13 * s), disc(shape, (24 * s, 46 * s), 13 * s)]
    return maps(shape, nuclei, cells)


# --------------------------------------------------------------------------- label_cell


def test_label_cell_two_cells_with_matching_nuclei():
    n, c = two_cell_scene()
    cells, nuclei = label_cell(n, c, SMALL)
    assert cells.dtype == np.uint16 and nuclei.dtype == np.uint16 and cells.shape == (48, 64)
    assert set(np.unique(cells)) == {0, 1, 2}
    assert set(np.unique(nuclei)) == {0, 1, 2}
    # each nucleus sits inside the cell with its id, at the place drawn
    assert cells[24, 18] == nuclei[24, 18] == 1 and cells[24, 46] == nuclei[24, 46] == 2
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
    for i in (1, 2):
        # The reference's hole filling, run twice, trims a 1-px rim each time: radius 13 -> ~11.
        assert np.pi * 10.5**2 < (cells == i).sum() < np.pi * 12**2
        assert 0.6 * np.pi * 5**2 < (nuclei == i).sum() <= np.pi * 5**2 + 5


def test_label_cell_needs_a_nucleus():
    shape = (48, 64)
    n, c = maps(shape, [disc(shape, (24, 18), 5)], [disc(shape, (24, 18), 13), disc(shape, (24, 46), 13)])
    cells, nuclei = label_cell(n, c, SMALL)
    assert set(np.unique(cells)) == {0, 1}
    assert cells[24, 46] == 0


def test_label_cell_touching_cells_split_by_border():
    shape = (40, 72)
    nuclei = [disc(shape, (20, 18), 5), disc(shape, (20, 54), 5)]
    body = np.zeros(shape, bool)
    body[6:34, 4:68] = True  # one block of body...
    border = np.zeros(shape, bool)
    border[6:34, 35:37] = True  # ...with a border line where the two cells touch
    n, c = maps(shape, nuclei, [body], [border])
    cells, _ = label_cell(n, c, SMALL)
    assert set(np.unique(cells)) == {0, 1, 2}
    assert cells[20, 10] != cells[20, 62]


def test_label_cell_cutoffs_scale_with_resolution():
    small_n, small_c = two_cell_scene(scale=1)
    big_n, big_c = two_cell_scene(scale=2)
    big_cut = SMALL.scaled(4)
    assert big_cut.min_cell_px == 240 and big_cut.closing_radius_px == 2.0
    small_cells, _ = label_cell(small_n, small_c, SMALL)
    big_cells, _ = label_cell(big_n, big_c, big_cut)
    assert small_cells.max() == big_cells.max() == 2
    # Cut-offs for the doubled field, applied unchanged to the original: cells drop out.
    assert label_cell(small_n, small_c, SMALL.scaled(10))[0].max() == 0


def test_label_cell_border_sum_does_not_wrap():
    n, c = two_cell_scene()
    left = disc((48, 64), (24, 18), 5)
    n[left, 1] = 150  # nuclei border + cell border = 300: certainly border, not seed
    c[left, 1] = 150  # (a uint8 sum wraps to 44 and would accept these pixels as seed)
    cells, nuclei = label_cell(n, c, SMALL)
    assert cells[24, 18] == 0 and cells[24, 46] == 1
    assert cells.max() == 1 and nuclei.max() == 1


def test_label_cell_regrow_gives_back_the_trimmed_rim_only_inside_cells():
    shape = (40, 72)
    nuclei = [disc(shape, (20, 18), 5), disc(shape, (20, 54), 5)]
    body = np.zeros(shape, bool)
    body[6:34, 4:68] = True
    border = np.zeros(shape, bool)
    border[6:34, 35:37] = True
    n, c = maps(shape, nuclei, [body], [border])
    trimmed, _ = label_cell(n, c, SMALL)
    regrown, _ = label_cell(n, c, SMALL, regrow_px=2)
    assert set(np.unique(regrown)) == {0, 1, 2}  # touching cells stay apart
    assert np.all(regrown[trimmed > 0] == trimmed[trimmed > 0])
    assert (regrown > 0).sum() > (trimmed > 0).sum()
    assert np.all(regrown[~(body | border)] == 0)  # never into background
    assert (regrown > 0).sum() >= 0.98 * (body | border).sum()  # the whole block but its corners


def test_label_cell_more_than_255_cells_keep_distinct_ids():
    rows, cols, step = 15, 20, 12
    shape = (rows * step, cols * step)
    nuclei, cells = [], []
    for r in range(rows):
        for k in range(cols):
            y, x = r * step + 6, k * step + 6
            nuclei.append(disc(shape, (y, x), 2))
            cells.append(disc(shape, (y, x), 5))
    n, c = maps(shape, nuclei, cells)
    cut = Cutoffs(min_seed_px=3, max_hole_px=4, min_fragment_px=1, min_nucleus_px=5, min_cell_px=15, closing_radius_px=1)
    labels, nuc = label_cell(n, c, cut)
    assert labels.max() == rows * cols == len(np.unique(labels)) - 1
    assert len(np.unique(nuc)) - 1 == rows * cols


def test_label_cell_empty_and_bad_input():
    z = np.zeros((32, 32, 3), np.uint8)
    cells, nuclei = label_cell(z, z, SMALL)
    assert cells.max() == 0 and nuclei.max() == 0 and cells.dtype == np.uint16
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        label_cell(z.astype(np.float32), z, SMALL)
    with pytest.raises(ValueError, match="differ in shape"):
        label_cell(z, np.zeros((32, 30, 3), np.uint8), SMALL)


def test_reference_cutoffs_are_the_published_pixels():
    assert REFERENCE_CUTOFFS == Cutoffs(500, 1000, 8, 2500, 5500, 6)
    quarter = REFERENCE_CUTOFFS.scaled(1 / 16)
    assert quarter.min_nucleus_px == 2500 / 16 and quarter.min_cell_px == 5500 / 16
    assert quarter.closing_radius_px == 1.5  # a radius scales with the square root of the area


# --------------------------------------------------------------------------- label_nuclei


def test_label_nuclei_splits_touching_nuclei():
    shape = (40, 60)
    a, b = disc(shape, (20, 20), 9), disc(shape, (20, 38), 9)
    n = np.zeros((*shape, 3), np.uint8)
    n[a | b, 2] = 230
    n[a & b, 1] = 200  # border where they overlap
    n[a & b, 2] = 40
    labels = label_nuclei(n, SMALL)
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1, 2}
    assert labels[20, 14] != labels[20, 44]


def test_label_nuclei_thresholds_are_probabilities():
    shape = (30, 30)
    n = np.zeros((*shape, 3), np.uint8)
    n[disc(shape, (15, 15), 8), 2] = 60  # p = 0.24: a seed (> 0.15) but not body (<= 0.4)
    assert label_nuclei(n, SMALL).max() == 0  # the reference's uint8 comparison would keep it
    n[disc(shape, (15, 15), 8), 2] = 120  # p = 0.47
    assert label_nuclei(n, SMALL).max() == 1


# --------------------------------------------------------------------------- helpers


def test_component_sizes_strictly_below_are_removed():
    m = np.zeros((10, 10), bool)
    m[1:3, 1:4] = True  # 6 px
    m[6, 6] = True  # 1 px
    assert keep_large_components(m, 6).sum() == 6
    assert keep_large_components(m, 7).sum() == 0
    diag = np.eye(4, dtype=bool)
    assert keep_large_components(diag, 2, connectivity=1).sum() == 0
    assert keep_large_components(diag, 2, connectivity=2).sum() == 4


def test_fill_small_holes_includes_edge_background():
    m = np.ones((10, 10), bool)
    m[4:6, 4:6] = False  # 4-px hole
    m[0, 0] = False  # 1 px of background at the edge
    assert fill_small_holes(m, 4).sum() == 100 - 4
    assert fill_small_holes(m, 5).all()


def test_remove_small_labels_per_id():
    lab = np.array([[1, 1, 0, 2], [3, 0, 0, 2], [3, 3, 0, 2]], np.int32)
    out = remove_small_labels(lab, 3)
    assert out.dtype == np.int32
    assert np.array_equal(out, np.where(lab == 1, 0, lab))
    assert remove_small_labels(np.zeros((3, 3), np.uint16), 5).max() == 0


def test_remove_edge_labels():
    lab = np.zeros((6, 6), np.uint16)
    lab[0, 1:3] = 4
    lab[2:4, 2:4] = 7
    lab[5, 5] = 9
    assert set(np.unique(remove_edge_labels(lab))) == {0, 7}


def test_relabel_sequential():
    lab = np.array([[0, 40, 40], [7, 0, 300]], np.int64)
    out = relabel_sequential(lab)
    assert out.dtype == np.uint16
    assert out.tolist() == [[0, 2, 2], [1, 0, 3]]
    assert relabel_sequential(np.array([[5, 9]])).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="uint16"):
        relabel_sequential(np.arange(1, 70_001).reshape(1, -1))
    with pytest.raises(ValueError, match="non-negative"):
        relabel_sequential(np.array([[0, -3]]))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64])
@pytest.mark.parametrize("background", [True, False])
def test_relabel_sequential_agrees_with_ranking_the_unique_ids(dtype, background):
    rng = np.random.default_rng(1)
    lab = rng.choice(np.array([3, 9, 40, 41, 200], dtype), size=(20, 30))
    if background:
        lab[::3] = 0
    ids = np.unique(lab)
    expected = np.searchsorted(ids, lab) + (0 if background else 1)
    assert np.array_equal(relabel_sequential(lab), expected)
    huge = lab.astype(np.int64) * 10**9  # ids far above the pixel count: the sorting route
    assert np.array_equal(relabel_sequential(huge), expected)


def test_fill_holes_per_label():
    lab = np.zeros((9, 12), np.uint8)
    lab[1:6, 1:6] = 1
    lab[2:5, 2:5] = 0  # hole in 1 ...
    lab[3, 3] = 2  # ... holding another label
    lab[1:6, 7:11] = 3
    lab[3, 8] = 0  # enclosed by 3 on three sides ...
    lab[3, 9:11] = 4  # ... and by 4, which cuts through 3's right edge
    out = fill_holes_per_label(lab)
    assert out[2, 2] == 1 and out[3, 3] == 2 and out[4, 4] == 1
    assert out[3, 8] == 0  # bounded by labels 3 and 4 together: not a hole of either
    assert np.array_equal(out[lab > 0], lab[lab > 0])


def test_match_nuclei_to_cells():
    cells = np.array([[1, 1, 0], [2, 2, 0]], np.uint16)
    nuclei = np.array([[5, 0, 5], [6, 6, 0]], np.uint16)
    assert match_nuclei_to_cells(cells, nuclei).tolist() == [[1, 0, 0], [2, 2, 0]]
    with pytest.raises(ValueError):
        match_nuclei_to_cells(cells, nuclei[:, :2])


def test_size_helpers_match_scikit_image_with_reference_semantics():
    from skimage import morphology

    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) > 0.55
    for n in (1, 3, 8, 20):
        # scikit-image 0.26 removes area <= max_size; the reference meant area < n.
        assert np.array_equal(keep_large_components(mask, n), morphology.remove_small_objects(mask, max_size=n - 1))
        assert np.array_equal(fill_small_holes(mask, n), morphology.remove_small_holes(mask, max_size=n - 1))
    labels = morphology.label(mask)
    assert np.array_equal(remove_small_labels(labels, 8), morphology.remove_small_objects(labels, max_size=7))
