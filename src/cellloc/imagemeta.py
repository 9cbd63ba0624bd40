"""The pixel size an image file records about itself, when it records one.

Microscopes and Fiji write it into TIFFs: ImageJ's own (``unit=micron`` in the description and
pixels per micron in XResolution), OME-TIFF (``PhysicalSizeX`` and its unit), or plain
XResolution with an inch or centimetre ResolutionUnit. PNGs carry a pHYs chunk (pixels per
metre) and JPEGs a JFIF density. Only the header is read. Most exported PNGs and JPEGs carry a
screen resolution (72-300 dpi = 85-350 um per pixel) that says nothing about the sample, so a
value outside ``segmentation.scale``'s plausible range (0.01-5 um) counts as none.
"""

from __future__ import annotations

import re
from pathlib import Path

from .fieldio import quiet_tifffile
from .segmentation.scale import plausible_pixel_size

_UM_PER_UNIT = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "\u00b5m": 1.0, "micron": 1.0, "microns": 1.0,
                "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "inch": 25400.0, "in": 25400.0}


def pixel_size_of_file(path: str | Path) -> float | None:
    """Micrometres per pixel (x) recorded in an image file's header, or None (none, or implausible)."""
    path = Path(path)
    try:
        um = _tiff_pixel_size(path) if path.suffix.lower() in (".tif", ".tiff") else _pillow_pixel_size(path)
    except (OSError, ValueError, KeyError, ZeroDivisionError, IndexError, TypeError):
        return None  # a header we cannot read says nothing; decoding the pixels reports real damage
    return float(f"{um:.6g}") if plausible_pixel_size(um) else None  # pHYs holds whole pixels per metre


def _pillow_pixel_size(path: Path) -> float | None:
    """PNG pHYs (metre unit) and JPEG JFIF density, as Pillow reports them (dots per inch)."""
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi")
    if not dpi or not dpi[0]:
        return None
    return 25400.0 / float(dpi[0])


def _tiff_pixel_size(path: Path) -> float | None:
    import tifffile

    with quiet_tifffile(), tifffile.TiffFile(path) as tif:
        ome = tif.ome_metadata
        if ome:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
            if m:
                unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
                return float(m.group(1)) * _UM_PER_UNIT[unit.group(1) if unit else "um"]
        page = tif.pages.first
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        num, den = tag.value
        per_unit = num / den  # pixels per unit
        ij = tif.imagej_metadata or {}
        if ij.get("unit"):
            unit = str(ij["unit"]).strip().lower().replace("\\u00b5", "µ")
            return _UM_PER_UNIT[unit] / per_unit if unit in _UM_PER_UNIT else None
        resunit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2  # TIFF's default: inch
        um_per_unit = {2: 25400.0, 3: 10000.0}.get(resunit)  # 1 = no unit: a ratio, not a size
        return um_per_unit / per_unit if um_per_unit else None
