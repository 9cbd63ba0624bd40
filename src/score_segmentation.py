"""Score segmentation against instance ground truth: AP at IoU 0.5:0.95 and F1@0.5.

    python src/score_segmentation.py input/synth                     # generated fields: cells + nuclei
    python src/score_segmentation.py ../shared/data/nuclei_gt                 # pixel size estimated per image
    python src/score_segmentation.py ../shared/data/nuclei_gt --pattern 'gowt1*' --pixel-size-um 0.24
    python src/score_segmentation.py input/synth --rescale 0.25 --snap-to-width 0   # the estimate alone, at 1/4 size
    python src/score_segmentation.py DIR --backend hpa --weights-dir ~/hpa_weights
    python src/score_segmentation.py input/synth --masks output/synth/masks   # score what segment.py wrote

Before the table, one line says where each image's pixel size came from. The last line reads
``AP50=0.xxxx F1_50=0.xxxx`` (cells when cell truth exists, else nuclei).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm

from cellloc.config import opt, parse_config
from cellloc.errors import InputError, exit_on_input_error
from cellloc.fieldio import write_csv
from cellloc.runtime import AUTO, RUNTIME_HELP, runtime_choices, runtime_line
from cellloc.runs.score_segmentation import (describe_scales, find_items, saved_masks, score_items, segmenting,
                                             summarise)
from cellloc.segmentation import SegmentConfig
from cellloc.tasks import DEFAULT_TASK, TASKS, get_task


@dataclass
class ScoreConfig:
    folder: str = opt("input/synth", "dataset with truth/, or a folder of {name}_image.png + {name}_mask.png")
    task: str = opt(DEFAULT_TASK, "task of the dataset (names its layout and segmentation channels)", choices=TASKS.names())
    backend: str = opt("classical", "segmentation backend", choices=["classical", "hpa"])
    pattern: str = opt("*", "only images whose name matches this glob")
    pixel_size_um: float = opt(0.0, "micrometres per pixel (0: the file's resolution tags, else --scale-from)")
    scale_from: str = opt("image", "no pixel size given or in the file: estimate it from the nucleus size (image) or assume the HPA field of view (width)", choices=["image", "width"])
    snap_to_width: float = opt(0.25, "an estimate within this fraction of the HPA field-of-view value takes that value (0: never)")
    rescale: float = opt(1.0, "score the images resized by this factor (predictions resized back to the truth)")
    weights_dir: str = opt("", "HPA weight files (hpa backend)")
    device: str = opt("cpu", "torch device (hpa backend)")
    runtime: str = opt(AUTO, RUNTIME_HELP, choices=runtime_choices())
    masks: str = opt("", "score the masks in this folder ({name}_cell_mask, {name}_nucleus_mask: what segment.py "
                     "writes to output/<name>/masks, or another tool's PNG/NPZ/TIFF) instead of segmenting")
    out: str = opt("", "also write per-image scores to this CSV")


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ScoreConfig, argv, __doc__, positional=("folder",))
    task = get_task(cfg.task)
    if cfg.masks and cfg.rescale != 1:
        raise InputError(f"--masks {cfg.masks}: saved masks are scored as they are; --rescale needs segmentation")
    items = find_items(Path(cfg.folder), task, cfg.pattern)
    if cfg.masks:  # nothing is segmented: no segmenter is built and no runtime chosen
        predict = saved_masks(cfg.masks)
    else:
        if cfg.backend == "hpa":
            print(runtime_line(cfg.runtime, cfg.device), flush=True)
        predict = segmenting(SegmentConfig(backend=cfg.backend, **task.segment_channels(),
                                           pixel_size_um=cfg.pixel_size_um or None, scale_from=cfg.scale_from,
                                           snap_to_width=cfg.snap_to_width, weights_dir=cfg.weights_dir or None,
                                           device=cfg.device, runtime=cfg.runtime), cfg.rescale)
    with tqdm(total=len(items), desc="score", unit="image", disable=None) as bar:
        per_image = score_items(items, predict, bar.update)
    if cfg.out:
        write_csv(cfg.out, per_image)
    print(describe_scales(per_image))
    summary = summarise(per_image)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    main_row = summary.iloc[0]
    print(f"AP50={main_row['AP50']:.4f} F1_50={main_row['F1_50']:.4f}")


if __name__ == "__main__":
    main()
