"""The notebooks run clean from a fresh kernel, make figures, and are committed without outputs;
the label-figure helpers they use return figures of the expected shape."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"label_examples.ipynb", "segmentation.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A ``python3`` kernelspec that runs this interpreter (the venv), found before any other."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernel")
    install(prefix=str(prefix), kernel_name="python3")
    monkeypatch_module.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    # the notebooks put <repo>/src first on sys.path themselves; this covers their subprocesses too
    monkeypatch_module.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    return sys.executable


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, kernel_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, f"{path.name} produced no PNG figure"


# --------------------------------------------------------------------------- plots_labels


NAMES = ("a", "b", "c", "d")


def test_class_counts_and_cooccurrence():
    from cellloc.plots_labels import class_counts, cooccurrence

    labels = [[0, 1], [1], [1, 3, 3], []]
    assert class_counts(labels, 4).tolist() == [1, 3, 0, 1]
    m = cooccurrence(labels, 4)
    assert m.shape == (4, 4) and (m == m.T).all()
    assert np.diag(m).tolist() == [1, 3, 0, 1]
    assert m[0, 1] == 1 and m[1, 3] == 1 and m[0, 3] == 0


def test_class_counts_figure_axes():
    from cellloc.plots_labels import class_counts_figure

    fig = class_counts_figure({"fields": np.array([1, 2, 0, 3]), "cells": np.array([4, 0, 1, 9])}, NAMES, title="t")
    assert len(fig.axes) == 2
    assert len(class_counts_figure({"fields": np.arange(4)}, NAMES).axes) == 1
    with pytest.raises(ValueError):
        class_counts_figure({"fields": np.arange(3)}, NAMES)


def test_cooccurrence_figure_axes():
    from cellloc.plots_labels import cooccurrence, cooccurrence_figure

    m = cooccurrence([[0, 1], [1, 2], [3]], 4)
    for normalise in (False, True):
        fig = cooccurrence_figure(m, NAMES, normalise=normalise)
        assert len(fig.axes) == 2  # the map and its colour bar
    with pytest.raises(ValueError):
        cooccurrence_figure(m[:3, :3], NAMES)


def test_image_and_crops_grid_axes():
    from cellloc.plots_labels import crops_grid_figure, image_grid_figure

    rgb = np.zeros((8, 8, 3), np.uint8)
    assert len(image_grid_figure([rgb] * 5, [str(i) for i in range(5)], columns=3).axes) == 5
    assert len(image_grid_figure([rgb[..., 0]]).axes) == 1
    fig = crops_grid_figure({0: [rgb, rgb], 3: [rgb] * 6}, NAMES, per_class=4)
    assert len(fig.axes) == 2 * 4
    with pytest.raises(ValueError):
        image_grid_figure([rgb], ["a", "b"])


def test_figures_save_as_png(tmp_path):
    from cellloc.plots import save_figure
    from cellloc.plots_labels import class_counts_figure

    out = save_figure(class_counts_figure({"fields": np.arange(4)}, NAMES), tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
