"""Pictures for people: the fast composite and outlines give exactly what the plain formulas give."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from cellloc.render import HPA_COLOURS, RXRX1_COMPOSITES, composite_rgb, inner_boundaries, overlay, stretch


def plain_composite(image, channels, colours):
    """The composite as a sum of stretched planes times their colours, in float32."""
    out = np.zeros(image.shape[:2] + (3,), np.float32)
    for i, name in enumerate(channels):
        colour = np.asarray(colours.get(name, (1 / len(channels),) * 3), np.float32)
        out += stretch(image[..., i])[..., None] * colour
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint8, 40), (np.uint16, 65535), (np.uint16, 900), (np.float32, 1)])
def test_composite_equals_the_sum_of_stretched_planes(dtype, top):
    rng = np.random.default_rng(top)
    image = (rng.random((90, 70, 4)) ** 3 * top).astype(dtype)  # dim, skewed, as fluorescence
    image[..., 3] = 0  # a dark channel
    for channels, colours in ((tuple(HPA_COLOURS), HPA_COLOURS), (("red", "other", "blue", "yellow"), HPA_COLOURS),
                              (("w3", "w2", "w1", "w4"), RXRX1_COMPOSITES[0])):
        out = composite_rgb(image, channels, colours=colours)
        assert out.shape == (90, 70, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, plain_composite(image, channels, colours))


def test_inner_boundaries_equal_scikit_image():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.int32):
        for _ in range(15):
            blocks = rng.integers(0, 5, (rng.integers(1, 25), rng.integers(1, 25)))
            labels = np.repeat(np.repeat(blocks, rng.integers(1, 4), 0), rng.integers(1, 4), 1).astype(dtype)
            np.testing.assert_array_equal(inner_boundaries(labels), find_boundaries(labels, mode="inner"))


def test_overlay_paints_outlines_on_the_composite():
    image = np.zeros((30, 40, 4), np.uint8)
    image[..., 2] = 100
    labels = np.zeros((30, 40), np.uint16)
    labels[5:15, 5:20] = 1
    rgb = overlay(image, labels, labels)
    assert tuple(rgb[5, 10]) == (255, 255, 255) and tuple(rgb[10, 10]) == (0, 0, 255) and tuple(rgb[0, 0]) == (0, 0, 255)
