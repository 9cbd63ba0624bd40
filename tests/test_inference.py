"""Scoring helpers of the inference stage, on hand-made score arrays."""

from __future__ import annotations

import numpy as np
import pytest

from cellloc.inference import blend_with_field, cell_weights, ensemble, with_negative


def test_ensemble_averages_models():
    crops = np.zeros((3, 8, 8, 4), np.uint8)
    a = lambda c: np.full((len(c), 2), 0.2)  # noqa: E731
    b = lambda c: np.full((len(c), 2), 0.6)  # noqa: E731
    np.testing.assert_allclose(ensemble([a, b], crops), 0.4)
    with pytest.raises(ValueError):
        ensemble([], crops)


def test_blend_product_and_mean():
    p = np.array([[0.9, 0.1], [0.1, 0.1]], np.float32)
    field = p.mean(0)
    np.testing.assert_allclose(blend_with_field(p, "product"), np.sqrt(p * field), rtol=1e-6)
    np.testing.assert_allclose(blend_with_field(p, "mean", 0.25), 0.75 * p + 0.25 * field, rtol=1e-6)
    np.testing.assert_array_equal(blend_with_field(p, "none"), p)
    # a weighted field score ignores a zero-weight cell
    np.testing.assert_allclose(blend_with_field(p, "mean", 1.0, np.array([1.0, 0.0]))[1], p[0], rtol=1e-6)
    with pytest.raises(ValueError):
        blend_with_field(p, "max")


def test_negative_rises_when_no_class_is_confident():
    p = np.array([[0.05, 0.1, 0.0], [0.9, 0.1, 0.0]], np.float32)
    out = with_negative(p, negative=2)
    assert out[0, 2] == pytest.approx(0.9) and out[1, 2] == pytest.approx(0.1)
    np.testing.assert_array_equal(out[:, :2], p[:, :2])
    np.testing.assert_array_equal(with_negative(p, None), p)


def test_cell_weights_downweight_small_and_edge_cells():
    w = cell_weights(np.array([100, 100, 25]), np.array([False, True, False]))
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25])


def test_load_model_garbage_checkpoint_gives_no_unsafe_advice(tmp_path):
    import json

    from cellloc.errors import InputError
    from cellloc.inference_model import load_model

    config = {"task": "hpa-sc", "model": "efficientnet-b0", "image_size": 32, "mean": [0.1] * 4, "std": [0.2] * 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "best.pt").write_bytes(b"garbage, not a checkpoint")
    with pytest.raises(InputError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'best.pt'}: cannot load checkpoint") and "weights_only" not in msg
