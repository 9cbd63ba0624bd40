"""The hpa backend end to end, with weights the test writes.

The weights (``shortcut_state_dict``) are a random-init DPNUnet rewired so that the head calls
a pixel "body" where the nucleus or microtubule plane is bright: both networks then find the
bright discs drawn below, so labels can be checked at known places.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import transform

from cellloc.errors import InputError
from cellloc.segmentation import BACKENDS, SegmentConfig
from cellloc.segmentation.dpn_unet import shortcut_state_dict
from cellloc.segmentation.hpa import (
    MEAN,
    STD,
    HPASegmenter,
    cutoffs_for,
    network_input,
    pad_amounts,
    quantise,
    rescale_plane,
)
from cellloc.segmentation.postprocess import REFERENCE_CUTOFFS
from cellloc.segmentation.weights import CELL_MODELS, NUCLEI_MODEL

from conftest import module_folder

CENTRES = [(60, 60), (70, 200), (190, 120), (180, 270)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall badly whenever
    another process is busy (measured 0.35 s -> 4 s per forward); one is steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    with module_folder(tmp_path_factory, "hpa_weights") as folder:
        torch.save(shortcut_state_dict(), folder / NUCLEI_MODEL)
        for name in CELL_MODELS.values():  # one file serves every role
            (folder / name).symlink_to(NUCLEI_MODEL)
        yield folder


@pytest.fixture(scope="module")
def cfg(weights_dir) -> SegmentConfig:
    return SegmentConfig(backend="hpa", weights_dir=str(weights_dir), scale_factor=0.25)


@pytest.fixture(scope="module")
def seg(cfg) -> HPASegmenter:
    return HPASegmenter(cfg)


@pytest.fixture(scope="module")
def labelled(seg):
    """The default field (256x320, uint8) segmented once for the tests that compare against it."""
    return seg.segment(field())


def field(h=256, w=320, dtype=np.uint8, centres=CENTRES) -> np.ndarray:
    """An HPA-ordered (red, green, blue, yellow) field: a nucleus disc inside a microtubule disc per cell."""
    img = np.zeros((h, w, 4), np.uint8)
    yy, xx = np.ogrid[:h, :w]
    for y, x in centres:
        d2 = (yy - y) ** 2 + (xx - x) ** 2
        img[..., 0][d2 <= 40**2] = 200
        img[..., 3][d2 <= 40**2] = 90
        img[..., 2][d2 <= 18**2] = 230
    if dtype == np.uint16:
        return img.astype(np.uint16) * 257
    return img


def assert_found_at_centres(cells, nuclei, centres=CENTRES):
    ids = [cells[c] for c in centres]
    assert 0 not in ids and len(set(ids)) == len(centres) == cells.max()
    assert [nuclei[c] for c in centres] == ids  # nucleus carries its cell's id
    for i in ids:
        area = (cells == i).sum()
        assert 0.6 * np.pi * 40**2 < area < 1.1 * np.pi * 40**2
        assert (nuclei == i).sum() < 1.2 * np.pi * 18**2


# --------------------------------------------------------------------------- pure pieces


def test_registered():
    assert BACKENDS["hpa"] is HPASegmenter


def test_rescale_plane_matches_scikit_image_and_maps_dtype_range():
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 256, (40, 56), dtype=np.uint8)
    want = transform.rescale(plane, 0.25)  # the reference's call: float64 /255, anti-aliased
    got = rescale_plane(plane, 0.25)
    assert got.shape == (10, 14) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(rescale_plane(plane.astype(np.uint16) * 257, 0.25), want, atol=1e-6)
    assert rescale_plane(plane, 1.0).max() <= 1.0


def test_padding_layout():
    assert pad_amounts(512, 512) == (0, 0, 0, 0)
    assert pad_amounts(432, 432) == (32, 16, 32, 16)  # a 1728 field at 0.25
    assert pad_amounts(64, 80) == (32, 32, 32, 16)
    planes = [np.arange(12, dtype=np.float32).reshape(3, 4) / 12] * 3
    x = network_input(planes)
    assert x.shape == (3, 3 + 32 + 29, 4 + 32 + 28)
    core = x[:, 32:35, 32:36]
    np.testing.assert_allclose(core * STD + MEAN[:, None, None], np.stack(planes), atol=1e-6)
    np.testing.assert_array_equal(x[:, 31, 32:36], x[:, 32, 32:36])  # the edge pixel is repeated


def test_quantise_rounds_like_img_as_ubyte():
    p = np.array([0.0, 0.5 / 255, 0.49, 1.0], np.float32)
    assert quantise(p).tolist() == [0, 0, 125, 255]


def test_cutoffs_follow_the_field_scale():
    cfg = SegmentConfig()
    full = cutoffs_for(cfg, (2048, 2048), (2048, 2048))  # 0.08 um/px: the reference's own numbers
    for name in ("min_seed_px", "max_hole_px", "min_fragment_px", "min_nucleus_px", "min_cell_px", "closing_radius_px"):
        assert getattr(full, name) == pytest.approx(getattr(REFERENCE_CUTOFFS, name))
    net = cutoffs_for(cfg, (2048, 2048), (512, 512))
    assert net.min_cell_px == pytest.approx(5500 / 16) and net.closing_radius_px == pytest.approx(1.5)
    # A 1728 field spans the same field of view: same physical cut-off, fewer pixels.
    assert cutoffs_for(cfg, (1728, 1728), (1728, 1728)).min_cell_px == pytest.approx(5500 * (1728 / 2048) ** 2)


# --------------------------------------------------------------------------- construction


def test_missing_weights_is_one_line(tmp_path):
    with pytest.raises(InputError) as err:
        HPASegmenter(SegmentConfig(backend="hpa", weights_dir=str(tmp_path)))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / NUCLEI_MODEL) in msg and "zenodo.org" in msg


def test_bad_config_is_one_line(weights_dir):
    with pytest.raises(InputError, match="unknown HPA cell model 'v3'"):
        HPASegmenter(SegmentConfig(backend="hpa", weights_dir=str(weights_dir), cell_model="v3"))
    with pytest.raises(InputError, match="'purple' is not among the input channels"):
        HPASegmenter(SegmentConfig(backend="hpa", weights_dir=str(weights_dir), nucleus_channel="purple"))
    with pytest.raises(InputError, match="reads 2 cell channel"):
        HPASegmenter(SegmentConfig(backend="hpa", weights_dir=str(weights_dir), cell_channels=("red",)))


# --------------------------------------------------------------------------- segmenting


def test_segment_finds_cells_in_a_non_square_field(labelled):
    cells, nuclei = labelled
    assert cells.shape == nuclei.shape == (256, 320)
    assert cells.dtype == nuclei.dtype == np.uint16
    assert_found_at_centres(cells, nuclei)


def test_segment_tall_field_keeps_orientation(seg):
    centres = [(60, 60), (200, 150), (330, 70)]
    cells, nuclei = seg.segment(field(384, 224, centres=centres))
    assert cells.shape == (384, 224)
    assert_found_at_centres(cells, nuclei, centres)


def test_uint16_field_gives_the_same_labels(seg, labelled):
    a = labelled
    b = seg.segment(field(dtype=np.uint16))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_wrong_field_shape_is_refused(seg):
    with pytest.raises(InputError, match="HxWx4"):
        seg.segment(np.zeros((64, 64, 3), np.uint8))


def test_batch_equals_one_at_a_time(cfg):
    seg2 = HPASegmenter(replace(cfg, batch_size=2))
    second = field(centres=[(60, 250), (180, 80)])
    small = field(128, 128, centres=[(64, 64)])  # another size: its own group
    batched = seg2.segment_batch([field(), small, second])
    singles = [seg2.segment(im) for im in (field(), small, second)]
    for (bc, bn), (sc, sn) in zip(batched, singles):
        assert np.array_equal(bc, sc) and np.array_equal(bn, sn)
    assert batched[0][0].max() == 4 and batched[1][0].max() == 1 and batched[2][0].max() == 2


def test_full_resolution_postprocess_agrees(cfg, labelled):
    fast_cells, _ = labelled
    full_cells, full_nuclei = HPASegmenter(replace(cfg, postprocess_at_network_scale=False)).segment(field())
    assert_found_at_centres(full_cells, full_nuclei)
    for c in CENTRES:
        a, b = fast_cells == fast_cells[c], full_cells == full_cells[c]
        assert (a & b).sum() / (a | b).sum() > 0.85  # 0.78 before the rim was given back


def test_edge_cells_removed_on_request(cfg):
    seg = HPASegmenter(replace(cfg, remove_edge_cells=True, cell_model="v2"))
    img = field(centres=[*CENTRES, (20, 300)])  # the last cell is cut by the top and right edges
    cells, nuclei = seg.segment(img)
    assert cells[20, 300] == 0
    assert_found_at_centres(cells, nuclei)
    # v2 never reads the ER plane: its slot is zeros.
    _, cell_in, _ = seg.network_inputs(img)
    np.testing.assert_allclose(cell_in[1], (0 - MEAN[1]) / STD)


def test_predict_gives_network_scale_maps(seg):
    (nuc, cell), = seg.predict([field()])  # 256x320 at 0.25: 64x80, padded to 128x128 inside
    assert nuc.shape == cell.shape == (64, 80, 3) and nuc.dtype == np.float32
    assert np.all(nuc[..., 0] == 0) and np.all(cell[..., 0] == 0)
    for y, x in CENTRES:
        assert nuc[y // 4, x // 4, 2] > 0.9 and cell[y // 4, x // 4, 2] > 0.9
    assert nuc[0, 0, 2] < 0.05 and nuc[:, :, 1].max() < 0.01
    # A microtubule-only ring: the cell network sees it, the nuclei network does not.
    y, x = CENTRES[0][0] // 4, (CENTRES[0][1] + 32) // 4
    assert cell[y, x, 2] > 0.3 and nuc[y, x, 2] < 0.05  # MT at 200/255 scores 0.45 body


# --------------------------------------------------------------------------- runtimes


def test_openvino_runtime_gives_the_torch_maps_and_masks(cfg, seg, labelled):
    pytest.importorskip("openvino", reason='the openvino runtime is the optional extra: pip install -e ".[fast]"')
    fast = HPASegmenter(replace(cfg, runtime="openvino", threads=1))
    img = field()
    (nuc, cell), = fast.predict([img])
    (nuc0, cell0), = seg.predict([img])
    assert np.abs(nuc - nuc0).max() < 1e-4 and np.abs(cell - cell0).max() < 1e-4
    cells, nuclei = fast.labels_from_maps(nuc, cell, img.shape)
    assert np.array_equal(cells, labelled[0]) and np.array_equal(nuclei, labelled[1])
    # Both roles read the same test file here, so they share one converted graph.
    assert len(list((Path(cfg.weights_dir) / "compiled").glob("dpn_unet_phased-*.xml"))) == 1


def test_openvino_runtime_missing_is_one_line(cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(InputError, match=r'pip install -e "\.\[fast\]"'):
        HPASegmenter(replace(cfg, runtime="openvino"))


def test_auto_runtime_reaches_both_networks(cfg, openvino_installed):
    from cellloc.runtime import OpenVINORuntime, TorchRuntime

    auto = HPASegmenter(replace(cfg, runtime="auto", threads=1))
    want = OpenVINORuntime if openvino_installed else TorchRuntime
    assert isinstance(auto.nuclei_net, want) and isinstance(auto.cell_net, want)
