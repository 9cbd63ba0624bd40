"""Backbones by name, N-channel stems, and ImageNet weights fetched by URL + checksum.

``create_model("efficientnet-b2", in_chans=4, num_classes=19, pretrained="imagenet")`` is the
one way a config turns a model name into an ``nn.Module``; a registry, not if/else chains, maps
names to builders. ImageNet weights are RGB, our fields have 4 channels: the pretrained stem is
widened by :func:`adapt_stem_channels` instead of being thrown away (efficientnet-pytorch's own
``from_pretrained(in_channels=4)`` replaces the stem with random weights).

Weights are never downloaded as a side effect of import or construction with
``pretrained="none"``. With ``"imagenet"`` the file is looked up in a cache folder, downloaded
there when missing, and its SHA-256 checked before :func:`cellloc.torchfile.load` reads it. Offline,
the failure is one line that says where to put the file and that ``--pretrained none`` works.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import torchfile
from .errors import InputError
from .fieldio import atomic_path, sha256_file

PRETRAINED_CHOICES: tuple[str, ...] = ("none", "imagenet")
CACHE_ENV = "CELLLOC_IMAGENET_DIR"


@dataclass(frozen=True)
class WeightSpec:
    """Where a weight file lives and how to recognise it.

    ``sha256`` is the full hex digest or a prefix of it (at least 8 hex digits): the published
    efficientnet-pytorch files carry the first 8 digits of their SHA-256 in their names
    (torch.hub's convention), which is all that is known about them without downloading.
    """

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelEntry:
    """A registered backbone: how to build it, its ImageNet weights, and which keys to adapt/drop."""

    builder: Callable[..., nn.Module]
    weights: WeightSpec | None
    stem_key: str
    head_keys: tuple[str, ...]
    default_image_size: int


MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    weights: WeightSpec | None,
    stem_key: str,
    head_keys: tuple[str, ...],
    default_image_size: int,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``builder(in_chans, num_classes, image_size)`` constructible by ``name``."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelEntry(builder, weights, stem_key, head_keys, default_image_size)
        return builder

    return deco


def model_names() -> list[str]:
    return sorted(MODELS)


# --------------------------------------------------------------------------- efficientnet-pytorch


def _efficientnet_builder(name: str) -> Callable[..., nn.Module]:
    def build(in_chans: int, num_classes: int, image_size: int | None) -> nn.Module:
        from efficientnet_pytorch import EfficientNet

        # batch_norm_momentum=0.9 is torch momentum 0.1. The package's TF-style default (0.99,
        # i.e. torch 0.01) leaves eval-mode running statistics near their initial values for
        # hundreds of steps, so short runs validate a network that is not the one trained.
        kw = {"num_classes": num_classes, "batch_norm_momentum": 0.9}
        if image_size:
            kw["image_size"] = image_size  # static "same" padding computed for this input size
        return EfficientNet.from_name(name, in_channels=in_chans, **kw)

    return build


def _register_efficientnets() -> None:
    from efficientnet_pytorch.utils import efficientnet_params, url_map

    for name, url in url_map.items():
        digest = re.search(r"-([0-9a-f]{8,})\.pth$", url)
        spec = WeightSpec(url, digest.group(1)) if digest else None
        size = efficientnet_params(name)[2]
        register_model(name, spec, "_conv_stem.weight", ("_fc.weight", "_fc.bias"), size)(
            _efficientnet_builder(name)
        )


_register_efficientnets()


# --------------------------------------------------------------------------- features and head apart


def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, F) pooled features of a built backbone: what its classification head sees.

    ``classify(net, embed(net, x))`` is ``net(x)``; a model with a second head (e.g. an image
    head pooled over a field's cells, :mod:`cellloc.two_head`) shares the features.
    """
    return net._avg_pooling(net.extract_features(x)).flatten(1)


def classify(net: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(N, num_classes) logits of the backbone's own head (dropout, then the linear layer) on :func:`embed`'s features."""
    return net._fc(net._dropout(features))


def num_features(net: nn.Module) -> int:
    """Width of :func:`embed`'s features."""
    return int(net._fc.in_features)


# --------------------------------------------------------------------------- stem adaptation


def adapt_stem_channels(weight: torch.Tensor, in_chans: int, rescale: bool = True) -> torch.Tensor:
    """Widen (or narrow) pretrained RGB stem filters ``(out, 3, kh, kw)`` to ``in_chans`` inputs.

    More than 3 channels: the RGB filters are copied and each extra channel gets the mean of the
    three RGB filters. With ``rescale`` every filter is then multiplied by ``3 / in_chans`` so a
    field equally bright in all channels gives the same stem response as an equally bright RGB
    image did (the per-output sum over input channels is unchanged), which keeps the pretrained
    activation statistics. Fewer than 3 channels: each channel gets ``sum(RGB) / in_chans``, the
    same invariant. ``rescale=False`` keeps the copied RGB filters bit-identical instead.
    Returns a new tensor of dtype ``weight.dtype``.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected RGB stem weights of shape (out, 3, kh, kw), got {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    w = weight.detach().float()
    if in_chans == 3:
        out = w.clone()
    elif in_chans < 3:
        out = w.sum(dim=1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans
        if not rescale:
            out = out * in_chans / 3.0  # mean of RGB, not their sum spread over the channels
    else:
        extra = w.mean(dim=1, keepdim=True).repeat(1, in_chans - 3, 1, 1)
        out = torch.cat([w, extra], dim=1)
        if rescale:
            out = out * (3.0 / in_chans)
    return out.to(weight.dtype)


# --------------------------------------------------------------------------- weight files


def weights_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder for ImageNet weight files: ``cache_dir``, else ``$CELLLOC_IMAGENET_DIR``, else ``~/.cache/cellloc/imagenet``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cellloc" / "imagenet"


def _check_digest(path: Path, spec: WeightSpec) -> None:
    digest = sha256_file(path)
    if not digest.startswith(spec.sha256.lower()):
        raise InputError(
            f"{path}: checksum mismatch (sha256 {digest[:16]}..., expected {spec.sha256}...); "
            "delete the file to download it again"
        )


def fetch_weights(spec: WeightSpec, cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Path of the verified weight file in the cache, downloading it there if missing.

    The download goes to a temporary file that only replaces the target after its checksum
    matches, so an interrupted or corrupt download never poisons the cache.
    """
    folder = weights_cache_dir(cache_dir)
    path = folder / spec.filename
    if path.exists():
        _check_digest(path, spec)
        return path
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(spec.url, timeout=timeout) as resp, open(tmp, "wb") as fh:
                while block := resp.read(1 << 20):
                    fh.write(block)
            _check_digest(tmp, spec)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(
            f"cannot download {spec.url} ({reason}); put {spec.filename} in {folder} "
            f"(or set ${CACHE_ENV}), or use --pretrained none"
        ) from None
    except InputError as exc:
        raise InputError(f"downloaded {spec.url}: {exc}") from None
    return path


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict file read by :func:`cellloc.torchfile.load` (tensors and plain values
    only, bounded memory); one-line error otherwise."""
    try:
        sd = torchfile.load(path)
    except (torchfile.TorchFileError, OSError) as exc:
        raise InputError(f"{path}: not a loadable state_dict ({getattr(exc, 'strerror', None) or exc})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: expected a dict of tensors (a state_dict)")
    return sd


def load_pretrained(
    model: nn.Module, name: str, in_chans: int, cache_dir: str | Path | None = None, path: str | Path | None = None
) -> nn.Module:
    """Load ImageNet weights into ``model`` (built by ``create_model(name, ...)``), in place.

    The stem is adapted to ``in_chans`` and the 1000-class head is dropped; every other key
    must match exactly, so a wrong file fails loudly instead of training from half-random weights.
    ``path`` bypasses the registry URL (a local file; no checksum known).
    """
    entry = _entry(name)
    if path is None:
        if entry.weights is None:
            raise InputError(f"model {name!r} has no registered ImageNet weights; use --pretrained none")
        path = fetch_weights(entry.weights, cache_dir)
    sd = dict(load_state_dict_file(path))
    for key in entry.head_keys:
        sd.pop(key, None)
    if entry.stem_key in sd:
        sd[entry.stem_key] = adapt_stem_channels(sd[entry.stem_key], in_chans)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise InputError(f"{path}: does not fit {name}: {first}") from None
    missing = [k for k in missing if k not in entry.head_keys]
    if missing or unexpected:
        raise InputError(
            f"{path}: does not fit {name}: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {list(unexpected)[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    return model


# --------------------------------------------------------------------------- factory


def _entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known: {', '.join(model_names())}") from None


def create_model(
    name: str,
    in_chans: int,
    num_classes: int,
    pretrained: str | bool = "none",
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """Build a registered backbone with an ``in_chans`` stem and a ``num_classes`` logit head.

    ``pretrained``: ``"none"``/``False`` (random init, works offline) or ``"imagenet"``/``True``
    (registry URL, checksum, cache folder; see :func:`fetch_weights`). ``image_size`` fixes the
    "same" padding of efficientnet-pytorch's convolutions for that input size; ``None`` uses the
    model's native resolution.
    """
    entry = _entry(name)
    if pretrained is True:
        pretrained = "imagenet"
    elif pretrained is False or pretrained is None:
        pretrained = "none"
    if pretrained not in PRETRAINED_CHOICES:
        raise InputError(f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)}, got {pretrained!r}")
    if in_chans < 1 or num_classes < 1:
        raise InputError(f"in_chans and num_classes must be >= 1, got {in_chans} and {num_classes}")
    model = entry.builder(in_chans, num_classes, image_size or entry.default_image_size)
    if pretrained == "imagenet":
        load_pretrained(model, name, in_chans, cache_dir)
    return model
