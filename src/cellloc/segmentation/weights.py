"""The published HPA Cell Segmentator weight files: where they live, how they arrive, how they load.

The three files (about 557 MB each) are whole pickled ``pytorch_zoo.unet.DPNUnet`` modules,
not state dicts, so a plain ``torch.load`` needs the ``pytorch_zoo`` package and, on
torch >= 2.6, ``weights_only=False`` (which runs arbitrary pickle code). Here they are read
without ``pytorch_zoo`` by :func:`cellloc.torchfile.load`, which bounds what a file can make
it allocate, and builds nothing real while unpickling: every class the published layout names
(the ``pytorch_zoo`` classes and torch's own ``nn`` module classes alike) is an inert
:class:`PickledObject` that only records the arguments and state it is given, so a hostile file
naming ``Conv2d(25000, 25000, 1)`` gets a record of three numbers, not 2.5 GB of weights. Any
other global is refused before it runs. Tensors are rebuilt by torch's own functions; only they
are kept, and they are checked key by key against our ``DPNUnet``.

Files are looked for in one folder: ``SegmentConfig.weights_dir``, else ``$CELLLOC_WEIGHTS``,
else ``~/.cache/cellloc/hpa``. Nothing downloads as a side effect of building a segmenter:
``python -m cellloc.segmentation.weights`` fetches the files (or put them there by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import torchfile
from ..errors import InputError, exit_on_input_error
from ..fieldio import atomic_path

ENV_VAR = "CELLLOC_WEIGHTS"
DEFAULT_DIR = Path("~/.cache/cellloc/hpa")
ZENODO = "https://zenodo.org/record/4665863/files/"


@dataclass(frozen=True)
class WeightFile:
    name: str
    role: str
    url: str


WEIGHT_FILES: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile("dpn_unet_nuclei_v1.pth", "nuclei model: input (nuclei, nuclei, nuclei)", ZENODO + "dpn_unet_nuclei_v1.pth"),
        WeightFile(
            "dpn_unet_cell_3ch_v1.pth",
            "cell model: input (microtubules, ER, nuclei); the default",
            ZENODO + "dpn_unet_cell_3ch_v1.pth",
        ),
        WeightFile("dpn_unet_cell_v2.pth", "cell model: input (microtubules, zeros, nuclei)", ZENODO + "dpn_unet_cell_v2.pth"),
    )
}
# SegmentConfig names -> file names.
NUCLEI_MODEL = "dpn_unet_nuclei_v1.pth"
CELL_MODELS: dict[str, str] = {"3ch": "dpn_unet_cell_3ch_v1.pth", "v2": "dpn_unet_cell_v2.pth"}

# Pinned checksums; none known yet (see ensure_weights).
SHA256: dict[str, str | None] = {name: None for name in WEIGHT_FILES}


def weights_folder(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the weight files: the argument, else ``$CELLLOC_WEIGHTS``, else the cache."""
    if weights_dir:
        return Path(weights_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DIR.expanduser()


def _missing_message(path: Path, url: str, why: str) -> str:
    return (
        f"{path}: {why}; download {url} into {path.parent} "
        f"(or run python -m cellloc.segmentation.weights --dir {path.parent}, or set ${ENV_VAR} to the folder holding it)"
    )


def download_file(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> str:
    """Stream ``url`` into ``dest`` atomically; return the sha256 hex digest of the bytes.

    With ``sha256`` given, a different digest raises :class:`InputError` and leaves no file.
    Network errors propagate as ``urllib.error.URLError`` / ``OSError`` for the caller to word.
    """
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        out.close()
        got = digest.hexdigest()
        if sha256 is not None and got != sha256.lower():
            raise InputError(f"{dest}: download from {url} has sha256 {got}, expected {sha256}; file not kept")
    return got


def ensure_weights(name: str, folder: str | os.PathLike | None = None, download: bool = True, url: str | None = None) -> Path:
    """Path of the weight file ``name`` in ``folder`` (see :func:`weights_folder`), fetching it if allowed.

    A missing file with ``download=False``, or a failed download, raises a one-line
    :class:`InputError` naming the file, the folder to put it in and the URL to get it from.

    Checksums: no publication states a size or checksum for these files, and they could not be
    fetched when this was written, so ``SHA256`` holds None for each. A first download prints
    its sha256 and writes it beside the file as ``<name>.sha256`` (``sha256sum -c`` format); pin
    that value in ``SHA256`` and later downloads whose hash differs are refused. Files already
    in place are not re-hashed on every load (about 1 s each): the restricted reader keeps
    loading closed whatever the bytes are.
    """
    if name not in WEIGHT_FILES:
        raise InputError(f"unknown HPA weight file {name!r}; known: {', '.join(WEIGHT_FILES)}")
    url = url or WEIGHT_FILES[name].url
    path = weights_folder(folder) / name
    if path.is_file():
        return path
    if not download:
        raise InputError(_missing_message(path, url, "HPA weight file not found"))
    print(f"downloading {url} -> {path} (about 557 MB)", file=sys.stderr)
    try:
        got = download_file(url, path, SHA256.get(name))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(_missing_message(path, url, f"HPA weight file not found and its download failed ({reason})")) from None
    with atomic_path(path.with_name(name + ".sha256")) as tmp:
        tmp.write_text(f"{got}  {name}\n")
    print(f"sha256 {got}  {name}" + ("" if SHA256.get(name) else " (not pinned yet: recorded beside the file)"), file=sys.stderr)
    return path


# --------------------------------------------------------------------------- restricted unpickling


RefusedGlobal = torchfile.RefusedGlobal


class PickledObject:
    """Inert stand-in for every class a weight file's pickle names: it records the arguments it
    is called with (``args``) and the state it is given (``state``, a module's ``__dict__``), and
    does nothing else: no code from the file, no allocation beyond what the pickle holds."""

    pickled_as = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_as}>"


ZOO_CLASSES = ("DPNUnet", "UnetDecoderBlock", "ConvBottleneck", "DualPathBlock", "BnActConv2d", "CatBnAct")
TORCH_CLASSES = (
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.parallel.data_parallel.DataParallel",
    "torch.device",
)
_standins: dict[str, type[PickledObject]] = {}


def _standin(qualified: str) -> type[PickledObject]:
    if qualified not in _standins:
        short = qualified.rsplit(".", 1)[-1]
        _standins[qualified] = type(short, (PickledObject,), {"pickled_as": qualified, "__module__": __name__})
    return _standins[qualified]


class WeightFileGlobals(dict):
    """What the published layout's pickle may name, each mapped to something inert: the torch
    classes above, the ``pytorch_zoo`` classes in whichever ``pytorch_zoo`` module the file
    says they live, and the no-op that rebuilt modules' ``_backend`` under torch < 1.5."""

    def __init__(self) -> None:
        super().__init__({name: _standin(name) for name in TORCH_CLASSES})
        self["torch.nn.backends.thnn._get_thnn_function_backend"] = lambda: None

    def __missing__(self, qualified: str) -> type[PickledObject]:
        module, _, name = qualified.rpartition(".")
        if (module == "pytorch_zoo" or module.startswith("pytorch_zoo.")) and name in ZOO_CLASSES:
            return _standin(qualified)
        raise KeyError(qualified)


def module_tensors(module: PickledObject) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an unpickled module tree, keyed like ``state_dict``.

    Reads the recorded ``_parameters``/``_buffers``/``_modules`` of each stand-in; anything
    else in a module's state (or a malformed one) is ignored.
    """
    out: dict[str, torch.Tensor] = {}

    def entries(state: Mapping, key: str) -> list:
        part = state.get(key)
        return list(part.items()) if isinstance(part, Mapping) else []

    def walk(mod: PickledObject, prefix: str) -> None:
        state = mod.state if isinstance(mod.state, Mapping) else {}
        for key, t in entries(state, "_parameters"):
            if isinstance(t, torch.Tensor):
                out[prefix + str(key)] = t.detach()
        skip = state.get("_non_persistent_buffers_set", set())
        for key, t in entries(state, "_buffers"):
            if isinstance(t, torch.Tensor) and key not in skip:
                out[prefix + str(key)] = t
        for key, child in entries(state, "_modules"):
            if isinstance(child, PickledObject):
                walk(child, f"{prefix}{key}.")

    walk(module, "")
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{key: tensor}`` dict on the CPU.

    Accepts a plain state dict or a whole pickled model in the published format, in torch's
    zip or legacy format, both read by :func:`cellloc.torchfile.load` with the stand-ins of
    :class:`WeightFileGlobals`. A leading ``module.`` (from ``DataParallel``) is stripped.
    Unreadable files and refused globals raise a one-line :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weight file not found")
    try:
        obj = torchfile.load(path, WeightFileGlobals())
    except RefusedGlobal as exc:
        raise InputError(f"{path}: refused to load: its pickle names {exc.name}, which the HPA weight format never uses") from None
    except torchfile.TorchFileError as exc:
        raise InputError(f"{path}: cannot read as a PyTorch weight file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None

    if isinstance(obj, PickledObject):
        tensors = module_tensors(obj)
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        tensors = {str(k): v for k, v in obj.items()}
    else:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a model or a state dict")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def match_state_dict(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Check ``tensors`` against a model's ``state_dict()`` and return what to load.

    Absent BatchNorm ``num_batches_tracked`` counters (files pickled by torch < 0.4.1) are
    filled with 0; they do not affect inference. Floating tensors take the model's dtype. Any
    other missing, unexpected or wrongly shaped key raises a one-line :class:`InputError`.
    """

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    missing = [k for k in expected if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [f"{k} {list(tensors[k].shape)} vs {list(expected[k].shape)}" for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), file vs model: {listed(shapes)}")
    if problems:
        raise InputError(f"{source}: does not match the HPA DPN-U-Net layout: " + "; ".join(problems))
    out = {}
    for k, ref in expected.items():
        t = tensors.get(k)
        if t is None:
            t = torch.zeros(ref.shape, dtype=ref.dtype)
        elif t.is_floating_point() and t.dtype != ref.dtype:
            t = t.to(ref.dtype)
        out[k] = t
    return out


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a weight file into ``model`` (which may live on the ``meta`` device: tensors are assigned,
    not copied, so a 557 MB file is not held twice). Returns the model."""
    tensors = match_state_dict(load_state_dict_file(path), model.state_dict(), str(path))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


# --------------------------------------------------------------------------- command line


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    """Download the published weight files into the weights folder (skipping those present)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("names", nargs="*", default=list(WEIGHT_FILES), help=f"files to fetch (default: all of {', '.join(WEIGHT_FILES)})")
    parser.add_argument("--dir", default=None, help=f"target folder (default: ${ENV_VAR} or {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    for name in args.names:
        print(ensure_weights(name, args.dir, download=True))


if __name__ == "__main__":
    main()
