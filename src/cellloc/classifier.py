"""A trained model as a callable classifier that carries its own recipe.

``load_classifier(fold_dir)`` rebuilds the network from the fold folder's ``recipe.json`` and
loads ``best.pt`` (a plain state_dict); ``load_ensemble(run_dir)`` averages every trained fold
behind the same interface. The recipe says everything inference must reproduce from training,
so a loaded classifier needs no path from training:

    {"task": "hpa-sc", "level": "cell", "model": "efficientnet-b2", "in_chans": 4, "num_classes": 19,
     "image_size": 64, "mean": [...], "std": [...], "kind": "multilabel",
     "input": {"kind": "cell_crop", "crop_size": 128, "crop_mask": "cell", "crop_fit": "pad", "segment": {...SegmentConfig...}}
          or {"kind": "field", "resize": 512, "tiles": 1},
     "thresholds": null | {"global": 0.3, "per_class": [...]}}

``classifier.predict(samples, tta)`` takes HxWxC uint8/uint16 arrays (cell crops or whole fields,
as the recipe says; crops may also be ``.npy`` paths) and returns ``(N, num_classes)``
probabilities of the task's kind: sigmoid per class (multilabel) or softmax rows (multiclass).
Preprocessing is the training Dataset's own (:mod:`cellloc.data`), so train and inference inputs
cannot drift apart. This module needs neither tez nor accelerate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import InputKind, load_crop, make_input
from .errors import InputError
from .fieldio import atomic_path, write_json
from .losses import probabilities
from .models import create_model
from .segmentation import SegmentConfig
from .runtime import compile_for_runtime, resolve_runtime, set_torch_threads
from .tasks import Task, get_task
from .torchfile import load_checkpoint

TTA_CHOICES: tuple[int, ...] = (1, 2, 4, 8)
RECIPE_FILE = "recipe.json"


@dataclass
class Recipe:
    """What a trained fold needs at inference (``recipe.json``; see the module docstring)."""

    task: str
    level: str
    model: str
    in_chans: int
    num_classes: int
    image_size: int
    mean: list[float]
    std: list[float]
    kind: str
    input: dict[str, Any]
    thresholds: dict[str, Any] | None = None

    @property
    def task_record(self) -> Task:
        return get_task(self.task)

    @property
    def channels(self) -> tuple[str, ...]:
        """The channel files the model reads, in input order: the task's, or the subset it was trained on
        (``input["channels"]``, e.g. an RxRx1 model of 5 of the 6 stains)."""
        return tuple(self.input.get("channels") or self.task_record.channels)

    def segment_config(self) -> SegmentConfig | None:
        """The segmentation that made the training crops (cell models), or None when not recorded."""
        seg = self.input.get("segment")
        if not seg:
            return None
        tuples = {k: tuple(v) for k, v in seg.items() if isinstance(v, list)}
        return SegmentConfig(**{**seg, **tuples})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> Recipe:
        """A recipe file, checked: one-line errors name the file and what is wrong with it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: not found (is {path.parent} a fold folder trained by src/train.py?)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read recipe ({' '.join(str(exc).split())})") from None
        fields = set(cls.__dataclass_fields__)
        missing = sorted(f for f in fields - {"thresholds"} if f not in data)
        if missing:
            raise InputError(f"{path}: missing {', '.join(missing)}")
        recipe = cls(**{k: v for k, v in data.items() if k in fields})
        task = recipe.task_record
        unknown = [c for c in recipe.channels if c not in task.channels]
        if unknown:
            raise InputError(f"{path}: channel(s) {', '.join(unknown)} are not channels of task {task.name} "
                             f"({', '.join(task.channels)})")
        if (recipe.num_classes, recipe.in_chans) != (task.num_classes, len(recipe.channels)):
            raise InputError(f"{path}: {recipe.num_classes} classes and {recipe.in_chans} channels do not fit task {task.name} "
                             f"({task.num_classes} classes, channels {', '.join(recipe.channels)})")
        if len(recipe.mean) != recipe.in_chans or len(recipe.std) != recipe.in_chans:
            raise InputError(f"{path}: mean/std need {recipe.in_chans} values each")
        return recipe


class RecipeFacts:
    """What a model's ``recipe`` says of it, for :class:`Classifier` and :class:`Ensemble` alike."""

    recipe: Recipe

    @property
    def task(self) -> Task:
        return self.recipe.task_record

    @property
    def num_classes(self) -> int:
        return self.recipe.num_classes

    @property
    def kind(self) -> str:
        return self.recipe.kind


class Classifier(nn.Module, RecipeFacts):
    """A backbone and its recipe. ``forward`` takes preprocessed ``(N, C, S, S)`` tensors and returns logits."""

    def __init__(self, net: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.net = net
        self.recipe = recipe
        self.view: InputKind = make_input(recipe.input, recipe.image_size, recipe.mean, recipe.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def predict(self, samples: Sequence[np.ndarray | str | Path], tta: int = 1, batch_size: int = 64,
                num_workers: int = 0, amp: bool = True) -> np.ndarray:
        """``(N, num_classes)`` float32 probabilities; see :func:`predict_samples`."""
        return predict_samples(self, samples, tta, batch_size, num_workers, amp)


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "best.pt",
                    runtime: str = "torch", threads: int = 0) -> Classifier:
    """Build a fold's model from ``run_dir/recipe.json`` and load ``run_dir/<weights>``, in eval mode.

    ``weights`` may be ``best.pt`` (the early-stopping pick, a plain state_dict) or ``last.pt``
    (the resume checkpoint; its ``model`` entry is used). ``runtime="openvino"`` (CPU, the
    ``fast`` extra) runs the backbone as a converted graph, cached in ``compiled/`` beside the
    weights by their checksum (``cellloc.runtime.compile_for_runtime``): same probabilities
    within 1e-5, several times faster on CPU; ``"auto"`` is openvino on the CPU when installed,
    else torch (``cellloc.runtime.choose_runtime``).
    """
    run_dir = Path(run_dir)
    recipe = Recipe.read(run_dir / RECIPE_FILE)
    net = create_model(recipe.model, recipe.in_chans, recipe.num_classes, "none", image_size=recipe.image_size)
    path = run_dir / weights
    sd = load_checkpoint(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:
        raise InputError(f"{path}: does not fit {recipe.model} ({str(exc).splitlines()[0]})") from None
    runtime = resolve_runtime(runtime, device)
    if runtime != "torch":
        if torch.device(device).type != "cpu":
            raise InputError(f"the {runtime} runtime runs on the CPU; use --runtime torch for --device {device}")
        side = recipe.image_size
        net = compile_for_runtime(net.eval(), (recipe.in_chans, side, side), path, runtime, threads=threads, stem=recipe.model)
    model = Classifier(net, recipe)
    device = torch.device(device)
    if runtime == "torch" and device.type == "cpu":
        set_torch_threads(threads)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model.eval()


def save_untrained(fold_dir: str | Path, recipe: Recipe, seed: int = 0) -> Path:
    """A fold folder as ``train.py`` leaves it, with random weights: ``recipe.json`` and ``best.pt``.

    What a benchmark or a test of the inference side needs (the speed and plumbing of a model
    do not depend on its weights) without training one. Returns ``fold_dir``.
    """
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = create_model(recipe.model, recipe.in_chans, recipe.num_classes, "none", image_size=recipe.image_size)
    with atomic_path(fold_dir / "best.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    write_json(fold_dir / RECIPE_FILE, recipe.to_dict())
    return fold_dir


@dataclass
class Ensemble(RecipeFacts):
    """Several classifiers of one task and input recipe (e.g. the K folds), averaged: the same interface."""

    members: list[Classifier]
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one model")
        first = self.members[0].recipe
        for m, name in zip(self.members[1:], self.names[1:] or [""] * len(self.members)):
            r = m.recipe
            if (r.task, r.level, r.input, r.kind) != (first.task, first.level, first.input, first.kind):
                raise InputError(f"{name or 'a member'}: another task or input recipe than the first model "
                                 f"({r.task}/{r.level}/{r.input.get('kind')} vs {first.task}/{first.level}/{first.input.get('kind')})")

    @property
    def recipe(self) -> Recipe:  # type: ignore[override]
        return self.members[0].recipe

    def predict(self, samples: Sequence[np.ndarray | str | Path], tta: int = 1, batch_size: int = 64,
                num_workers: int = 0, amp: bool = True) -> np.ndarray:
        """The members' mean probability ``(N, num_classes)`` float32."""
        return np.mean([m.predict(samples, tta, batch_size, num_workers, amp) for m in self.members], axis=0).astype(np.float32)


def fold_dirs(models: str | Path, folds: Sequence[int] = ()) -> list[Path]:
    """The trained fold folders (``fold*/best.pt``) under a run folder, optionally only some folds."""
    root = Path(models)
    dirs = sorted(d for d in root.glob("fold*") if (d / "best.pt").exists() and d.name[4:].isdigit())
    if folds:
        dirs = [d for d in dirs if int(d.name[4:]) in set(folds)]
    if not dirs:
        which = f" among folds {list(folds)}" if folds else ""
        raise InputError(f"{root}: no trained fold (fold*/best.pt){which}; run src/train.py first")
    return dirs


def load_ensemble(run_dir: str | Path, folds: Sequence[int] = (), device: str | torch.device = "cpu",
                  runtime: str = "torch", threads: int = 0) -> Ensemble:
    """Every trained fold of a run folder (or only ``folds``) as one :class:`Ensemble` (``runtime``:
    see :func:`load_classifier`)."""
    dirs = fold_dirs(run_dir, folds)
    return Ensemble([load_classifier(d, device, runtime=runtime, threads=threads) for d in dirs], [str(d) for d in dirs])


def load_image_partner(run_dir: str | Path, cell_model: Classifier | Ensemble, cell_run: str | Path = "",
                       device: str | torch.device = "cpu", runtime: str = "torch", threads: int = 0) -> Ensemble:
    """The image-level run whose field scores ``cell_model``'s cells are blended with: every fold of
    ``run_dir``, which must be an image-level run of the cell model's task (InputError otherwise)."""
    if cell_model.recipe.level != "cell":
        raise InputError(f"--image-models blends with cell scores; {cell_run or 'the model'} is an image-level run")
    image_model = load_ensemble(run_dir, (), device, runtime, threads)
    if image_model.recipe.level != "image" or image_model.task.name != cell_model.task.name:
        raise InputError(f"{run_dir}: not an image-level run of task {cell_model.task.name} "
                         f"({image_model.recipe.level}-level, task {image_model.task.name})")
    return image_model


class _Views(Dataset):
    """Samples (arrays or ``.npy`` paths) -> the model's prediction views ``(T, C, S, S)`` (lazily, in workers)."""

    def __init__(self, samples: Sequence[np.ndarray | str | Path], view: InputKind) -> None:
        self.samples, self.view = samples, view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        sample = self.samples[i]
        if not isinstance(sample, np.ndarray):
            sample = load_crop(sample)
        elif sample.dtype not in (np.uint8, np.uint16) or sample.ndim != 3:
            raise InputError(f"sample {i}: expected an HxWxC uint8/uint16 array, got {sample.dtype} {sample.shape}")
        return torch.from_numpy(self.view.predict_views(sample))


def dihedral_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` (1, 2, 4 or 8) of the 8 flips/transposes of a ``(N, C, H, W)`` batch."""
    t = x.transpose(-1, -2)
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2), t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]
    return views[:n]


@torch.no_grad()
def predict_samples(
    model: Classifier,
    samples: Sequence[np.ndarray | str | Path],
    tta: int = 1,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
) -> np.ndarray:
    """Probabilities ``(N, num_classes)`` float32 of HxWxC uint8/uint16 samples (or ``.npy`` crop paths).

    Each sample's views (one for a crop, ``tiles**2`` for a field) and ``tta`` dihedral views of
    each (flips/transposes: the training augmentation, so every view is in-distribution) are
    scored, turned into probabilities of the task's kind, and averaged. ``amp`` uses fp16
    autocast on CUDA only.
    """
    if tta not in TTA_CHOICES:
        raise InputError(f"tta must be one of {', '.join(map(str, TTA_CHOICES))}, got {tta}")
    if len(samples) == 0:
        return np.zeros((0, model.num_classes), np.float32)
    device = model.device
    on_cuda = device.type == "cuda"
    loader = DataLoader(_Views(samples, model.view), batch_size=batch_size, num_workers=num_workers, pin_memory=on_cuda)
    model.eval()
    out = []
    for x in loader:  # (B, T, C, S, S)
        b, t = x.shape[:2]
        x = x.flatten(0, 1).to(device, non_blocking=True)
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=on_cuda and amp):
            probs = torch.stack([probabilities(model(v).float(), model.kind) for v in dihedral_views(x, tta)]).mean(0)
        out.append(probs.reshape(b, t, -1).mean(1).cpu())
    return torch.cat(out).numpy().astype(np.float32)
