"""The published HPA Cell Segmentator weight files: where they live, how they arrive, how they load.

The three files (about 557 MB each) are whole pickled ``pytorch_zoo.unet.DPNUnet`` modules,
not state dicts, so a plain ``torch.load`` needs the ``pytorch_zoo`` package and, on
torch >= 2.6, ``weights_only=False`` (which runs arbitrary pickle code). Here they are read
without ``pytorch_zoo`` through a restricted unpickler: every global the pickle names must be on
an allowlist (inert stand-ins for the ``pytorch_zoo`` classes, a few ``torch.nn`` layer classes,
tensor-rebuild functions, ``OrderedDict``, ``set``); anything else is refused before it runs.
Only the tensors are kept and they are checked key by key against our ``DPNUnet``.

Files are looked for in one folder: ``SegmentConfig.weights_dir``, else ``$CELLLOC_WEIGHTS``,
else ``~/.cache/cellloc/hpa``. Nothing downloads as a side effect of building a segmenter:
``python -m cellloc.segmentation.weights`` fetches the files (or put them there by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import types
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
    in place are not re-hashed on every load (about 1 s each): the restricted unpickler keeps
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


class RefusedGlobal(pickle.UnpicklingError):
    """A weight file's pickle names a global that is not on the allowlist."""


class PickledModule(nn.Module):
    """Inert stand-in for a class of the pickled model: it holds the unpickled submodules and
    tensors so they can be read out, and nothing else (no forward, no code from the file)."""

    pickled_as = "?"

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"stand-in for {self.pickled_as}: only its tensors are used")


ZOO_CLASSES = ("DPNUnet", "UnetDecoderBlock", "ConvBottleneck", "DualPathBlock", "BnActConv2d", "CatBnAct")
_standins: dict[str, type[PickledModule]] = {}


def _standin(qualified: str) -> type[PickledModule]:
    if qualified not in _standins:
        short = qualified.rsplit(".", 1)[-1]
        _standins[qualified] = type(short, (PickledModule,), {"pickled_as": qualified, "__module__": __name__})
    return _standins[qualified]


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch", "device"): torch.device,
    ("torch", "FloatStorage"): torch.FloatStorage,
    ("torch", "LongStorage"): torch.LongStorage,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    # Modules pickled by torch < 1.5 carry a `_backend` attribute rebuilt by this no-op.
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): lambda: None,
    ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
    ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    ("torch.nn.modules.activation", "ReLU"): nn.ReLU,
    ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
    ("torch.nn.modules.upsampling", "Upsample"): nn.Upsample,
    ("torch.nn.modules.container", "Sequential"): nn.Sequential,
    ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
    ("torch.nn.parallel.data_parallel", "DataParallel"): _standin("torch.nn.parallel.data_parallel.DataParallel"),
}


def allowed_global(module: str, name: str) -> object:
    """What the restricted unpickler hands back for ``module.name``; raises :class:`RefusedGlobal`."""
    module = {"__builtin__": "builtins"}.get(module, module)  # protocol-2 pickles use Python 2 names
    if (module == "pytorch_zoo" or module.startswith("pytorch_zoo.")) and name in ZOO_CLASSES:
        return _standin(f"{module}.{name}")
    try:
        return _ALLOWED[(module, name)]
    except KeyError:
        raise RefusedGlobal(f"{module}.{name}") from None


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        return allowed_global(module, name)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load's ``pickle_module`` needs: an ``Unpickler`` class and a ``load`` function.
restricted_pickle = types.ModuleType("cellloc_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of an unpickled module tree, keyed like ``state_dict``.

    Walks ``_parameters``/``_buffers``/``_modules`` directly rather than calling
    ``state_dict()``, so no hook stored in the file is ever called.
    """
    out: dict[str, torch.Tensor] = {}

    def walk(mod: nn.Module, prefix: str) -> None:
        state = vars(mod)
        for key, t in state.get("_parameters", {}).items():
            if t is not None:
                out[prefix + key] = t.detach()
        skip = state.get("_non_persistent_buffers_set", set())
        for key, t in state.get("_buffers", {}).items():
            if t is not None and key not in skip:
                out[prefix + key] = t
        for key, child in state.get("_modules", {}).items():
            if child is not None:
                walk(child, f"{prefix}{key}.")

    walk(module, "")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{key: tensor}`` dict on the CPU.

    Accepts a plain state dict (read with ``weights_only=True``) or a whole pickled model in the
    published format (read with the restricted unpickler). A leading ``module.`` (from
    ``DataParallel``) is stripped. Unreadable files and refused globals raise :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weight file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a whole pickled module: not loadable by the safe path
        try:
            with warnings.catch_warnings():
                # Legacy files compare the saved source of each class with the stand-in's: noise.
                warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
                warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
                obj = torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
        except RefusedGlobal as exc:
            raise InputError(f"{path}: refused to load: its pickle names {exc}, which the HPA weight format never uses") from None
        except Exception as exc:
            raise InputError(f"{path}: cannot read as a PyTorch weight file ({_first_line(exc)})") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a PyTorch weight file ({_first_line(exc)})") from None

    if isinstance(obj, nn.Module):
        tensors = module_tensors(obj)
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        tensors = dict(obj)
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
