"""The ``hpa`` backend: the HPA Cell Segmentator's two DPN-U-Nets, then its post-processing.

Preprocessing follows the reference (rescale by ``scale_factor`` with Gaussian anti-aliasing,
integer images mapped to [0, 1] by dtype range, per-channel mean/std, reflect-padding to a
multiple of 32, softmax) with these differences, all of them fixes or savings:

* non-square fields come back at their own (H, W) (the reference's final resize swaps them);
* the nucleus plane is rescaled once and shared by both networks (the reference rescales a
  3-plane stack for the nuclei network, two planes of which are copies it never reads), and at
  an integer factor (every HPA field at 0.25) the rescale is computed directly, same numbers
  to 1e-7, 4-6x faster (:func:`shrink_by`);
* fields of one size go through each network together, ``batch_size`` at a time (on a GPU this
  fills the device; on 2 CPU cores it is 1.08x slower per field than one at a time, so the
  default is 1; the two networks cannot share a batch, their weights differ);
* each decoder upsampling (x2 nearest, then conv 3x3) runs as four 2x2 convs, one per output
  phase, on the un-enlarged input: the same outputs to float32 rounding with 23% fewer
  multiply-adds for the whole network (:meth:`DPNUnet.fold_upsampling`);
* the networks run under ``cfg.runtime``: PyTorch (any device), or OpenVINO on the CPU
  (``cellloc.runtime``; fp32, outputs equal to PyTorch's within 1e-4, graphs converted once per
  weight file and input size and cached in ``compiled/`` beside the weights);
* padding is added only when the network-scale size is not a multiple of 32, and then laid out
  as the reference's ``padding=True`` (32 px before, up to the next multiple after);
* with ``postprocess_at_network_scale`` (default) the labelling runs on the network-scale maps
  with the size cut-offs converted to that scale, and the labels are enlarged nearest-neighbour
  (about 16x fewer pixels at 0.25; the 3rd-place HPA solution measured -0.002 mAP for it).
  The rim that the reference's hole filling trims (2 px, nothing at full size) is 4x wider on
  quarter-scale maps, so it is partly grown back (``label_cell(regrow_px=...)``): on the test
  fields that raises the per-cell IoU with the full-size path from 0.78 to 0.89.
  Otherwise the maps are enlarged first (INTER_AREA) and labelled at full size, as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from skimage import transform

from ..errors import InputError
from ..fieldio import to_unit_float
from ..runtime import NetworkRuntime, create_runtime
from .base import SegmentConfig, register_backend
from .dpn_unet import DPNUnet
from .postprocess import REFERENCE_CUTOFFS, REFERENCE_PIXEL_UM, Cutoffs, label_cell, match_nuclei_to_cells, relabel_sequential, remove_edge_labels
from .weights import CELL_MODELS, NUCLEI_MODEL, ensure_weights, load_weights, weights_folder

# Normalisation the networks were trained with: (x - mean) / std per input channel, x in [0, 1].
MEAN = np.array([124, 117, 104], np.float32) / 255
STD = np.float32(1 / (0.0167 * 255))
PAD_MULTIPLE = 32


def rescale_plane(plane: np.ndarray, scale: float) -> np.ndarray:
    """One channel (HxW, uint8/uint16/float) -> float32 (round(H*s), round(W*s)) in the networks' range.

    Integers map to [0, 1] by dtype range (uint16 /65535, as the reference; floats are taken
    as they are), then scikit-image ``rescale``: bilinear, Gaussian anti-aliasing with
    sigma (1/s - 1)/2 when shrinking, mirrored edges. When 1/s is an integer k that divides H
    and W (every HPA field at 0.25) the same numbers come from :func:`shrink_by`, ~10x faster.
    """
    x = to_unit_float(plane)
    if scale == 1:
        return x
    k = round(1 / scale)
    if k >= 2 and abs(1 / scale - k) < 1e-9 and x.shape[0] % k == 0 and x.shape[1] % k == 0 and min(x.shape) > 4 * k:
        return shrink_by(x, k)
    out = transform.rescale(x, scale, order=1, mode="reflect", anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32, copy=False)


def shrink_by(x: np.ndarray, k: int) -> np.ndarray:
    """float32 HxW -> (H/k, W/k): scikit-image's ``rescale(x, 1/k, order=1, mode="reflect",
    anti_aliasing=True)`` computed directly (H and W multiples of k).

    That call blurs with a Gaussian of sigma (k-1)/2 (truncated at 4 sigma, mirrored edges) and
    samples bilinearly at input coordinate k*i + (k-1)/2 for output pixel i: one pixel when k is
    odd, the mean of two neighbours when k is even. OpenCV's blur with the same kernel and
    BORDER_REFLECT_101 (scipy's "mirror") does the first, strided slices the second.
    """
    sigma = (k - 1) / 2
    radius = int(4 * sigma + 0.5)
    blurred = cv2.GaussianBlur(np.asarray(x, np.float32), (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
    c = (k - 1) // 2
    if k % 2:
        return np.ascontiguousarray(blurred[c::k, c::k])
    rows = (blurred[c::k] + blurred[c + 1 :: k]) * 0.5
    return np.ascontiguousarray((rows[:, c::k] + rows[:, c + 1 :: k]) * 0.5)


def pad_amounts(h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that makes (h, w) fit the network; zeros if it already does.

    When padding is needed it is the reference's layout: 32 before, 32 - (n mod 32) after.
    """
    if h % PAD_MULTIPLE == 0 and w % PAD_MULTIPLE == 0:
        return 0, 0, 0, 0
    return PAD_MULTIPLE, PAD_MULTIPLE - h % PAD_MULTIPLE, PAD_MULTIPLE, PAD_MULTIPLE - w % PAD_MULTIPLE


def network_input(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Three float32 hxw planes in [0, 1] -> float32 (3, h', w'): padded (edge pixel repeated,
    OpenCV's BORDER_REFLECT) and normalised as in training."""
    x = np.stack(planes)
    top, bottom, left, right = pad_amounts(*x.shape[1:])
    if top or left:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right)), mode="symmetric")
    return (x - MEAN[:, None, None]) / STD


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 rint(p * 255), as scikit-image's ``img_as_ubyte``."""
    return np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)


def cutoffs_for(cfg: SegmentConfig, field_shape: Sequence[int], map_shape: Sequence[int]) -> Cutoffs:
    """Size cut-offs in pixels of a map of ``map_shape`` made from a field of ``field_shape``.

    Nucleus, cell and hole areas come from the config (square micrometres); seed and fragment
    areas and the closing radius, which the config does not expose, keep the reference's
    physical sizes (its pixel values at 0.08 um/px).
    """
    ref_px_area = REFERENCE_PIXEL_UM**2

    def px(area_um2: float) -> float:
        return cfg.area_px(area_um2, field_shape)

    at_field_size = Cutoffs(
        min_seed_px=px(REFERENCE_CUTOFFS.min_seed_px * ref_px_area),
        max_hole_px=px(cfg.max_hole_area_um2),
        min_fragment_px=px(REFERENCE_CUTOFFS.min_fragment_px * ref_px_area),
        min_nucleus_px=px(cfg.min_nucleus_area_um2),
        min_cell_px=px(cfg.min_cell_area_um2),
        closing_radius_px=REFERENCE_CUTOFFS.closing_radius_px * REFERENCE_PIXEL_UM / cfg.pixel_size(field_shape),
    )
    return at_field_size.scaled((map_shape[0] * map_shape[1]) / (field_shape[0] * field_shape[1]))


def load_network(path, device: torch.device | str = "cpu", fold: bool = True) -> DPNUnet:
    """A DPNUnet in eval mode on ``device`` holding the weights of ``path`` (built on the meta
    device, so no random initialisation of 139M parameters is spent and thrown away).

    ``fold``: decoder upsampling folded into phase convs (:meth:`DPNUnet.fold_upsampling`:
    the same outputs to float32 rounding, 23% fewer multiply-adds); ``False`` keeps the
    published structure (the reference's)."""
    with torch.device("meta"):
        net = DPNUnet()
    net = load_weights(net, path)
    if fold:
        net.fold_upsampling()
    return net.to(device).eval().requires_grad_(False)


@register_backend("hpa")
class HPASegmenter:
    """``segment(image) -> (cell_labels, nucleus_labels)`` with the published HPA networks.

    ``image`` is HxWxC in the order of ``cfg.channels`` (uint8, uint16 or float in [0, 1]).
    ``fold=False`` runs the networks in their published structure (the reference's; see
    :func:`load_network`), only to measure against. Needs ``dpn_unet_nuclei_v1.pth`` and the cell model's file in the weights folder
    (see ``weights.py``); a missing file is a one-line :class:`InputError`, never a download.
    """

    def __init__(self, cfg: SegmentConfig, fold: bool = True):
        if cfg.cell_model not in CELL_MODELS:
            raise InputError(f"unknown HPA cell model {cfg.cell_model!r}; choose one of {', '.join(CELL_MODELS)}")
        if cfg.scale_factor <= 0:
            raise InputError(f"scale_factor must be positive, got {cfg.scale_factor}")
        if cfg.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {cfg.batch_size}")
        wanted = 2 if cfg.cell_model == "3ch" else 1
        if len(cfg.cell_channels) < wanted:
            raise InputError(f"hpa backend: the {cfg.cell_model} cell model reads {wanted} cell channel(s) (microtubules, ER), got {cfg.cell_channels}")
        needed = [cfg.nucleus_channel, *cfg.cell_channels[:wanted]]
        try:
            self.nucleus_index, self.mt_index, *rest = [cfg.channel_index(name) for name in needed]
        except ValueError as exc:
            raise InputError(f"hpa backend: {exc}") from None
        self.er_index = rest[0] if rest else None
        self.cfg = cfg
        folder = weights_folder(cfg.weights_dir)
        paths = [ensure_weights(name, folder, download=False) for name in (NUCLEI_MODEL, CELL_MODELS[cfg.cell_model])]
        # One graph name for every role: a graph is keyed by its weight file's checksum anyway.
        # The folded network is another graph than the published structure, hence its own stem.
        stem = "dpn_unet_phased" if fold else "dpn_unet"
        self.nuclei_net, self.cell_net = (
            create_runtime(cfg.runtime, lambda p=p: load_network(p, fold=fold), p, stem=stem, threads=cfg.threads,
                           device=cfg.device, half=cfg.half)
            for p in paths
        )

    # ----------------------------------------------------------------- stages

    def _check(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != len(self.cfg.channels):
            raise InputError(f"hpa backend: expected an HxWx{len(self.cfg.channels)} field {self.cfg.channels}, got shape {image.shape}")
        if not (image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)):
            raise InputError(f"hpa backend: unsupported pixel type {image.dtype}; expected uint8, uint16 or float")
        return image

    def network_inputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(nuclei input, cell input, (h, w)): what the two networks see, each float32 (3, h', w')
        (padded), and the network-scale size (h, w) before padding."""
        s = self.cfg.scale_factor
        nucleus = rescale_plane(image[..., self.nucleus_index], s)
        mt = rescale_plane(image[..., self.mt_index], s)
        er = rescale_plane(image[..., self.er_index], s) if self.er_index is not None else np.zeros_like(nucleus)
        return network_input([nucleus] * 3), network_input([mt, er, nucleus]), nucleus.shape

    def _probabilities(self, net: NetworkRuntime, batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Softmax maps (N, h, w, 3) float32 at network scale, padding cropped, channel 0 zeroed."""
        logits = net.runner(batch.shape[1:])(batch)
        probs = torch.softmax(torch.from_numpy(logits), dim=1)
        top, _, left, _ = pad_amounts(*size)
        out = probs[:, :, top : top + size[0], left : left + size[1]].permute(0, 2, 3, 1).numpy().copy()
        out[..., 0] = 0
        return out

    def labels_from_maps(self, nuc_p: np.ndarray, cell_p: np.ndarray, field_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """One field's (nuclei, cell) maps from :meth:`predict` -> (cell_labels, nucleus_labels),
        uint16 at ``field_shape`` (H, W)."""
        H, W = field_shape[:2]
        nuc_map = quantise(nuc_p)  # the reference quantises the nuclei map before resizing
        if self.cfg.postprocess_at_network_scale or nuc_p.shape[:2] == (H, W):
            # label_cell trims 2 map pixels of rim, 2/s field pixels here against the reference's 2:
            # give back 2 - 2s map pixels, rounded down (1 at s = 0.25; rounding up overshot on test fields).
            regrow = int(2 * (1 - nuc_p.shape[1] / W))
            cells, nuclei = label_cell(nuc_map, quantise(cell_p), cutoffs_for(self.cfg, field_shape, nuc_p.shape), regrow)
            if cells.shape != (H, W):
                cells = cv2.resize(cells, (W, H), interpolation=cv2.INTER_NEAREST)
                nuclei = cv2.resize(nuclei, (W, H), interpolation=cv2.INTER_NEAREST)
        else:
            nuc_map = cv2.resize(nuc_map, (W, H), interpolation=cv2.INTER_AREA)  # (width, height)
            cell_map = quantise(cv2.resize(cell_p, (W, H), interpolation=cv2.INTER_AREA))
            cells, nuclei = label_cell(nuc_map, cell_map, cutoffs_for(self.cfg, field_shape, field_shape))
        if self.cfg.remove_edge_cells:
            cells = relabel_sequential(remove_edge_labels(cells))
            nuclei = match_nuclei_to_cells(cells, nuclei)
        return cells, nuclei

    # ----------------------------------------------------------------- API

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per field, the (nuclei, cell) softmax maps at network scale, each float32 hxwx3 =
        [0, border, body]. Fields of one size share network passes, ``batch_size`` at a time."""
        images = [self._check(im) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
        bs = self.cfg.batch_size
        for members in groups.values():
            for start in range(0, len(members), bs):
                chunk = members[start : start + bs]
                nuc_in, cell_in, sizes = zip(*(self.network_inputs(images[i]) for i in chunk))
                nuc_p = self._probabilities(self.nuclei_net, np.stack(nuc_in), sizes[0])
                cell_p = self._probabilities(self.cell_net, np.stack(cell_in), sizes[0])
                for j, i in enumerate(chunk):
                    results[i] = (nuc_p[j], cell_p[j])
        return results  # type: ignore[return-value]

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cell_labels, nucleus_labels), uint16 HxW at the field's size."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`segment` for many fields: :meth:`predict`, then :meth:`labels_from_maps` per field."""
        maps = self.predict(images)
        return [self.labels_from_maps(n, c, np.shape(im)) for (n, c), im in zip(maps, images)]
