"""Shared fixtures: small generated datasets written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A 4-field, 256 px generated training set with truth (input/<name> layout)."""
    from cellloc.generators import write_dataset
    from cellloc.synth import SynthConfig

    out = tmp_path_factory.mktemp("synth")
    write_dataset(SynthConfig(size=256, seed=3), out, 4)
    return out


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium binary; tests that need one are skipped (with the reason) where it is absent."""
    from cellloc.browser import find_chromium

    browser = find_chromium()
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set CELLLOC_CHROMIUM)")
    return browser
