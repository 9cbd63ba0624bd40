"""report.py: a real tiny run (segment -> folds -> two trained folds -> predict) -> one HTML page.

The run is an EfficientNet-B0 trained for one epoch on 32 px crops per fold: the point is the
page (every picture exists and shows, every section is there, a missing piece names its
command), not the score.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from cellloc.browser import dump_dom, screenshot
from cellloc.config import save_config
from cellloc.errors import InputError
from cellloc.generators import write_dataset
from cellloc.plots_report import ap_bars_figure
from cellloc.render import nearest_resize, overlay_thumbnail
from cellloc.report_page import Gallery, Image, Note, Section, Table, Text, image_sources, render_page
from cellloc.runs.folds import FoldsConfig, make_folds
from cellloc.runs.predict import PredictConfig, load_predictor, run_predict
from cellloc.runs.report import ReportConfig, build_report, find_run, fold_names, spread_pick, top_examples
from cellloc.runs.segment import SegmentRunConfig, run_segmentation
from cellloc.runs.train import TrainConfig, train_fold
from cellloc.synth import SynthConfig

from conftest import module_folder
from test_evaluate_cli import load_script, run_script

SECTIONS = ("summary", "overlays", "folds", "training", "scores", "examples", "submission")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """6 segmented fields in 2 folds, both folds trained, and a scored submission for 2 test fields."""
    with module_folder(tmp_path_factory, "report") as root:
        write_dataset(SynthConfig(size=256, seed=5), root / "train_data", 6)
        seg = root / "seg"
        run_segmentation(SegmentRunConfig(input=str(root / "train_data" / "train"), out=str(seg), crop_size=32, overlay=True))
        make_folds(FoldsConfig(cells=str(seg / "cells.csv"), out=str(seg / "folds.csv"), folds=2, seed=0))
        for fold in (0, 1):
            train_fold(TrainConfig(folds_csv=str(seg / "folds.csv"), fold=fold, out_dir=str(root / "models"), run_name="tiny",
                                   model="efficientnet-b0", pretrained="none", image_size=32, batch_size=8, epochs=1,
                                   num_workers=0, device="cpu", stats_samples=8),
                       command=f"python src/train.py --fold {fold} --epochs 1 --image-size 32 --run-name tiny")
        write_dataset(SynthConfig(size=256, seed=9), root / "test_data", 2, split="test")
        pred = root / "pred"
        cfg = PredictConfig(input=str(root / "test_data" / "test"), models=str(root / "models" / "tiny"), out=str(pred))
        run_predict(cfg, load_predictor(cfg))
        save_config(cfg, pred / "predict_config.json")  # as src/predict.py does
        yield {"root": root, "seg": seg, "models": root / "models" / "tiny", "pred": pred}


def report_cfg(run: dict[str, Path], out: Path, **kw) -> ReportConfig:
    base = dict(run_dir=str(run["models"]), seg=str(run["seg"]), sample=str(run["seg"]), predictions=str(run["pred"]),
                out=str(out), fields=2, examples=2)
    return ReportConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def full(run, tmp_path_factory) -> Path:
    """The report of the complete run, made through the script's main()."""
    out = tmp_path_factory.mktemp("full_report")
    argv = [str(run["models"]), "--seg", str(run["seg"]), "--sample", str(run["seg"]), "--predictions", str(run["pred"]),
            "--out", str(out), "--fields", "2", "--examples", "2"]
    assert load_script("report").main(argv) == 0
    return out / "report.html"


def check_images(page: Path) -> list[str]:
    """Every <img src> of the page is a non-empty PNG beside it that PIL decodes; returns the sources."""
    sources = image_sources(page.read_text())
    assert sources
    for src in sources:
        assert not re.match(r"^[a-z]+:|^/", src), f"{src}: not a relative link"
        path = page.parent / src
        assert path.is_file() and path.stat().st_size > 0, src
        with PILImage.open(path) as img:
            assert img.format == "PNG"
            img.load()
            assert img.width > 0 and img.height > 0
    return sources


def sections_of(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', html)


# --------------------------------------------------------------------------- the full page


def test_full_report_has_every_section_and_every_picture(full):
    html = full.read_text()
    assert sections_of(html) == list(SECTIONS)
    sources = check_images(full)
    assert {"fold_balance.png", "curves_fold0.png", "curves_fold1.png", "ap_fold0.png", "ap_fold1.png"} <= set(sources)
    assert any(s.startswith("overlay_") for s in sources) and any(s.startswith("sample_") for s in sources)
    assert any(s.startswith("cells/") and "_tp" in s for s in sources)
    assert any(s.startswith("cells/") and "_fp" in s for s in sources)
    assert "Missing:" not in html  # nothing is missing from this run
    assert re.search(r"mAP 0\.\d{4}", html)  # the submission is scored against its truth
    assert "of 2 fold(s)" in html  # examples pool both folds' out-of-fold predictions
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "@import" not in html
    assert not [p for p in full.parent.rglob("*") if ".tmp" in p.name]  # atomic writes left no temporary file


def test_examples_are_top_scored_cells_of_the_class(run, tmp_path):
    """Tiles are the highest-scored cells with (and without) each class, scores in captions, descending."""
    out = tmp_path / "r"
    build_report(report_cfg(run, out, examples=3))
    html = (out / "report.html").read_text()
    preds = pd.concat([pd.read_csv(d / "val_predictions.csv", dtype={"ID": str}) for d in sorted(run["models"].glob("fold*"))])
    folds = pd.read_csv(run["seg"] / "folds.csv", dtype={"ID": str, "TrueLabel": str}, keep_default_na=False)
    joined = preds.merge(folds[["ID", "cell_id", "TrueLabel"]], on=["ID", "cell_id"])
    joined = joined[joined["TrueLabel"] != ""]
    has = joined["TrueLabel"].str.split("|").apply(lambda ids: "0" in ids)
    captions = [float(c) for c in re.findall(r'c00_tp\d\.png"[^<]*<figcaption>([0-9.]+) · ', html)]
    expected = np.sort(joined.loc[has, "p0"].to_numpy())[::-1][: len(captions)]
    np.testing.assert_allclose(captions, expected, atol=6e-4)
    assert len(captions) == min(3, int(has.sum()))


# --------------------------------------------------------------------------- missing pieces


def copy_run(run: dict[str, Path], dst: Path, folds: tuple[int, ...] = (0, 1)) -> Path:
    dst.mkdir(parents=True)
    for k in folds:
        shutil.copytree(run["models"] / f"fold{k}", dst / f"fold{k}")
    return dst


def test_untrained_folds_are_named_in_one_note():
    assert fold_names([1]) == "fold 1"
    assert fold_names([1, 2]) == "folds 1, 2"
    assert fold_names(list(range(1, 10))) == "folds 1-9"
    assert fold_names([1, 3, 4]) == "folds 1, 3, 4"


def test_missing_pieces_say_what_is_missing_and_which_command_makes_it(run, tmp_path):
    models = copy_run(run, tmp_path / "tiny", folds=(0,))
    for name in ("metrics.csv", "curves.png", "scores.csv", "val_predictions.csv", "summary.json", "best.pt"):
        (models / "fold0" / name).unlink()  # fold 0 killed before its first epoch ended
    res = build_report(report_cfg(run, tmp_path / "r", run_dir=str(models), sample=str(tmp_path / "no_sample"),
                                  predictions=str(tmp_path / "no_pred")))
    html = res.page.read_text()
    assert sections_of(html) == list(SECTIONS)
    check_images(res.page)
    text = "\n".join(t for _, t in res.notes)
    assert "fold 1 is not trained" in text
    # fold 1 is trained with fold 0's saved config (every setting of it), for fold 1
    command = next(c for c in re.findall(r"<code>([^<]*)</code>", html) if "--fold 1" in c)
    assert command == f"python src/train.py --config {models / 'fold0' / 'config.json'} --fold 1"
    assert "fold 0" in text and "no metrics.csv" in text and "--resume" in html  # last.pt is there: resume it
    assert "no test predictions" in text and "python src/predict.py" in html
    assert "no segmentation output" in text and "python src/segment.py --input input/sample --overlay" in html
    assert "unfinished" in html  # the summary row of the fold without summary.json
    assert html.count('class="missing"') == len(res.notes)


def test_no_folds_table_and_no_truth(run, tmp_path):
    models = copy_run(run, tmp_path / "tiny")
    for k in (0, 1):  # the table the run trained on is gone, and --seg has none either
        path = models / f"fold{k}" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "folds_csv": str(tmp_path / "gone" / "folds.csv")}))
    pred = tmp_path / "pred"
    shutil.copytree(run["pred"], pred)
    cfg = json.loads((pred / "predict_config.json").read_text())
    (pred / "predict_config.json").write_text(json.dumps({**cfg, "input": str(tmp_path / "elsewhere" / "test")}))
    empty = tmp_path / "seg"
    empty.mkdir()
    res = build_report(report_cfg(run, tmp_path / "r", run_dir=str(models), seg=str(empty), predictions=str(pred)))
    html = res.page.read_text()
    check_images(res.page)
    text = "\n".join(t for _, t in res.notes)
    assert f"no folds table at {empty / 'folds.csv'}" in text and "python src/gen_folds.py" in html
    assert "not scored here" in text and "python src/evaluate.py" in html
    assert "ap_fold0.png" in html and "curves_fold1.png" in html  # what the run folder has is still shown
    # a folds table that cannot be read: its one-line error is the note, with the command that remakes it
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "folds.csv").write_text("ID,cell_id\na,1\n")
    res = build_report(report_cfg(run, tmp_path / "r", run_dir=str(models), seg=str(empty), predictions=str(pred)))
    folds_notes = [t for s, t in res.notes if s in ("Fold balance", "Correct and wrong cells per class")]
    assert len(folds_notes) == 2 and all("missing column(s) Label, crop, fold" in t for t in folds_notes)


def test_missing_crops_are_skipped_and_named(run, tmp_path):
    seg = tmp_path / "seg"
    shutil.copytree(run["seg"], seg)
    models = copy_run(run, tmp_path / "tiny")
    for k in (0, 1):
        path = models / f"fold{k}" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "folds_csv": str(seg / "folds.csv")}))
    shutil.rmtree(seg / "crops")
    res = build_report(report_cfg(run, tmp_path / "r", run_dir=str(models), seg=str(seg)))
    check_images(res.page)
    html = res.page.read_text()
    assert [t for s, t in res.notes if "crop file(s) not found" in t]
    assert f"python src/segment.py --config {seg / 'segment_config.json'}" in html and "cells/c" not in html


def test_truth_option_scores_the_submission(run, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(run["pred"], pred)
    (pred / "predict_config.json").unlink()
    res = build_report(report_cfg(run, tmp_path / "r", predictions=str(pred), truth=str(run["root"] / "test_data" / "truth")))
    assert re.search(r"mAP 0\.\d{4}", res.page.read_text()) and not res.notes


def test_run_without_folds_is_a_one_line_error(tmp_path):
    (tmp_path / "empty_run").mkdir()
    for run_dir in (tmp_path / "nowhere", tmp_path / "empty_run"):
        done = run_script("report", str(run_dir), "--out", str(tmp_path / "r"))
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(run_dir) in lines[0], done.stderr
        assert not (tmp_path / "r").exists()
    with pytest.raises(InputError, match="no fold folders"):
        find_run(tmp_path / "empty_run")


def test_bad_option_is_a_one_line_error(tmp_path):
    done = run_script("report", str(tmp_path), "--examples", "-1")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- pure parts


def test_page_escapes_every_text_and_links_images_relatively():
    nasty = '<script>alert("x")</script> & \'q\''
    sec = Section("s<1>", nasty).add(
        Text(nasty), Note(nasty, command=f"python src/x.py --name {nasty}"),
        Table(["a<b", "n"], [[nasty, 0.123456], ["nan", float("nan")]]),
        Image('dir with space/a"b.png', caption=nasty, tooltip=nasty), Gallery([Image("t.png", nasty)], nasty),
    )
    page = render_page(nasty, nasty, [sec])
    assert "<script>alert" not in page and page.count("&lt;script&gt;") >= 8
    assert "0.1235" in page and "<td class=\"num\">-</td>" in page
    assert image_sources(page) == ['dir with space/a"b.png', "t.png"]
    assert 'src="dir%20with%20space/a%22b.png"' in page
    assert page.count("<script>") == 1  # only the page's own image check


def test_top_examples_ranks_known_cells_only():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([1, 0, 1, 0, 1, 0], bool)
    known = np.array([1, 1, 0, 1, 1, 1], bool)  # cell 2 matched no true cell
    tp, fp = top_examples(scores, positive, known, 2)
    assert tp.tolist() == [0, 4] and fp.tolist() == [1, 3]
    assert [len(x) for x in top_examples(scores, positive, known, 0)] == [0, 0]


def test_a_missing_fold_is_trained_from_another_folds_config(run, tmp_path):
    models = copy_run(run, tmp_path / "tiny", folds=(1,))
    res = build_report(report_cfg(run, tmp_path / "r", run_dir=str(models)))
    assert "fold 0 is not trained" in [t for _, t in res.notes]
    assert f"python src/train.py --config {models / 'fold1' / 'config.json'} --fold 0" in res.page.read_text()


def test_small_helpers():
    assert spread_pick(list("abcdefg"), 3) == ["a", "d", "g"] and spread_pick(list("ab"), 5) == ["a", "b"]
    assert spread_pick(list("ab"), 0) == []


def test_ap_bars_figure_with_and_without_true_labels():
    scores = pd.DataFrame({"class": ["0", "1", "2", "macro"], "name": ["a", "b", "c", "mean"],
                           "ap_weak": [0.5, np.nan, 0.2, 0.35], "prevalence_weak": [0.1, np.nan, 0.3, 0.2]})
    assert len(ap_bars_figure(scores).axes) == 1
    both = scores.assign(ap_true=[0.4, np.nan, np.nan, 0.4], prevalence_true=[0.1, np.nan, np.nan, 0.1])
    assert len(ap_bars_figure(both, "t").axes[0].patches) == 6  # 3 classes x 2 label sources
    with pytest.raises(ValueError):
        ap_bars_figure(scores.drop(columns=["ap_weak"]))


def test_overlay_thumbnail_keeps_outlines_when_shrinking():
    labels = np.zeros((400, 300), np.uint16)
    labels[40:200, 30:150] = 1
    labels[220:380, 160:290] = 2
    image = np.random.default_rng(0).integers(0, 255, (400, 300, 4), dtype=np.uint8)
    small = overlay_thumbnail(image, labels, labels, max_side=100)
    assert small.shape == (100, 75, 3) and small.dtype == np.uint8
    assert (small == 255).all(axis=2).sum() > 50  # white cell outlines survive the shrink
    assert set(np.unique(nearest_resize(labels, 50, 37))) == {0, 1, 2}
    assert overlay_thumbnail(image, labels, None, max_side=1000).shape == (400, 300, 3)


# --------------------------------------------------------------------------- in a real browser


def test_headless_chromium_loads_every_image(chromium, full, tmp_path):
    dom = dump_dom(full, chromium)
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_images = len(image_sources(full.read_text()))
    assert f'data-images="{n_images}"' in body and 'data-images-broken="0"' in body and 'data-images-ok="yes"' in body
    shot = screenshot(full, tmp_path / "shot.png", window=(1200, 2000), browser=chromium)
    with PILImage.open(shot) as img:
        assert img.size == (1200, 2000)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # text and pictures, not blank
    small = screenshot(full, tmp_path / "small.png", width=600, colours=64, browser=chromium)
    with PILImage.open(small) as img:
        assert img.width == 600 and img.mode == "P"


def test_headless_chromium_flags_a_broken_image(chromium, full, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(full.parent, copy)
    (copy / "fold_balance.png").write_bytes(b"not a png")
    body = re.search(r"<body[^>]*>", dump_dom(copy / "report.html", chromium)).group(0)
    assert 'data-images-ok="no"' in body and 'data-images-broken="1"' in body
