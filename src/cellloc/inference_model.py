"""A trained fold as a callable classifier: ``load_model(run_dir)`` + ``predict_crops(model, crops, tta)``.

Kept apart from ``training.py`` so the inference stage loads a model without importing tez or
accelerate: it needs only the run's ``config.json`` (model name, image size, channel mean/std)
and ``best.pt`` (a plain state_dict). Preprocessing is :func:`cellloc.data.preprocess_crop`,
the same function the training Dataset uses, so train and inference inputs cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import load_crop, preprocess_crop
from .errors import InputError
from .models import create_model
from .tasks import get_task
from .torchfile import load_checkpoint

TTA_CHOICES: tuple[int, ...] = (1, 2, 4, 8)


class CellClassifier(nn.Module):
    """A backbone plus what its inputs must look like (``image_size``, channel ``mean``/``std``).

    ``forward`` takes preprocessed ``(N, C, S, S)`` float tensors and returns logits.
    """

    def __init__(
        self, net: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float], num_classes: int
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "best.pt") -> CellClassifier:
    """Build the fold's model from ``run_dir/config.json`` and load ``run_dir/<weights>``, in eval mode.

    ``weights`` may be ``best.pt`` (the early-stopping pick, a plain state_dict) or ``last.pt``
    (the resume checkpoint; its ``model`` entry is used).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise InputError(f"{cfg_path}: not found (is {run_dir} a training run folder?)")
    cfg = json.loads(cfg_path.read_text())
    missing = [k for k in ("task", "model", "image_size", "mean", "std") if k not in cfg]
    if missing or not cfg.get("mean"):
        raise InputError(f"{cfg_path}: missing {', '.join(missing) or 'mean/std'}")
    task = get_task(cfg["task"])
    net = create_model(cfg["model"], len(task.channels), task.num_classes, "none", image_size=cfg["image_size"])
    path = run_dir / weights
    sd = load_checkpoint(path)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:
        raise InputError(f"{path}: does not fit {cfg['model']} ({str(exc).splitlines()[0]})") from None
    model = CellClassifier(net, cfg["image_size"], cfg["mean"], cfg["std"], task.num_classes)
    device = torch.device(device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model.eval()


class _Crops(Dataset):
    """Arrays or ``.npy`` paths -> preprocessed float32 CxSxS tensors (loaded lazily, in workers)."""

    def __init__(self, crops: Sequence[np.ndarray | str | Path], image_size: int, mean, std) -> None:
        self.crops, self.image_size, self.mean, self.std = crops, image_size, mean, std

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> torch.Tensor:
        crop = self.crops[i]
        if not isinstance(crop, np.ndarray):
            crop = load_crop(crop)
        elif crop.dtype not in (np.uint8, np.uint16) or crop.ndim != 3:
            raise InputError(f"crop {i}: expected an HxWxC uint8/uint16 array, got {crop.dtype} {crop.shape}")
        return torch.from_numpy(preprocess_crop(crop, self.image_size, self.mean, self.std))


def dihedral_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first ``n`` (1, 2, 4 or 8) of the 8 flips/transposes of a ``(N, C, H, W)`` batch."""
    t = x.transpose(-1, -2)
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2), t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]
    return views[:n]


@torch.no_grad()
def predict_crops(
    model: CellClassifier,
    crops: Sequence[np.ndarray | str | Path],
    tta: int = 1,
    batch_size: int = 64,
    num_workers: int = 0,
    amp: bool = True,
) -> np.ndarray:
    """Per-class probabilities ``(N, num_classes)`` float32 for HxWxC uint8/uint16 crops (or ``.npy`` paths).

    ``tta`` averages the sigmoid over that many dihedral views (flips/transposes: the training
    augmentation, so every view is in-distribution). ``amp`` uses fp16 autocast on CUDA only.
    """
    if tta not in TTA_CHOICES:
        raise InputError(f"tta must be one of {', '.join(map(str, TTA_CHOICES))}, got {tta}")
    if len(crops) == 0:
        return np.zeros((0, model.num_classes), np.float32)
    device = model.device
    on_cuda = device.type == "cuda"
    loader = DataLoader(
        _Crops(crops, model.image_size, model.mean, model.std),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=on_cuda,
    )
    model.eval()
    return _predict_loop(model, loader, tta, on_cuda and amp)


def _predict_loop(model: CellClassifier, loader: DataLoader, tta: int, amp: bool) -> np.ndarray:
    device = model.device
    on_cuda = device.type == "cuda"
    out = []
    for x in loader:
        x = x.to(device, non_blocking=True)
        if on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            probs = torch.stack([torch.sigmoid(model(v).float()) for v in dihedral_views(x, tta)]).mean(0)
        out.append(probs.cpu())
    return torch.cat(out).numpy().astype(np.float32)
