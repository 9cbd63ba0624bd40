"""Backbones by name, N-channel stems, and ImageNet weights fetched by URL + checksum.

``create_model("efficientnet-b2", in_chans=4, num_classes=19, pretrained="imagenet")`` is the
one way a config turns a model name into an ``nn.Module``; a registry, not if/else chains, maps
names to builders. ImageNet weights are RGB, our fields have 4 channels: the pretrained stem is
widened by :func:`adapt_stem_channels` instead of being thrown away (efficientnet-pytorch's own
``from_pretrained(in_channels=4)`` replaces the stem with random weights).

Registered: efficientnet-b0..b7 (efficientnet-pytorch), resnet18, resnet50 and densenet121
(torchvision's files), se-resnext50-32x4d and se-resnext101-32x4d (Cadene's ``pretrainedmodels``
files); the last five are written in :mod:`cellloc.backbones` with the published key layouts.

Weights are never downloaded as a side effect of import or construction with
``pretrained="none"``. With ``"imagenet"`` the file is looked up in a cache folder, downloaded
there when missing, and its SHA-256 checked before :func:`cellloc.torchfile.load` reads it. Offline,
the failure is one line that says where to put the file and that ``--pretrained none`` works.
"""

from __future__ import annotations

import itertools
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import backbones, torchfile
from .errors import InputError
from .fieldio import atomic_path, sha256_file

PRETRAINED_CHOICES: tuple[str, ...] = ("none", "imagenet")
CACHE_ENV = "CELLLOC_IMAGENET_DIR"


@dataclass(frozen=True)
class WeightSpec:
    """Where a weight file lives and how to recognise it.

    ``sha256`` is the full hex digest or a prefix of it (at least 8 hex digits): the published
    efficientnet-pytorch, torchvision and Cadene ``pretrainedmodels`` files carry the first 8
    digits of their SHA-256 in their names (torch.hub's convention, checked by torch.hub on
    download), which is all that is known about them without downloading.
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
    """Registered names in registration order, so families stay together (efficientnet-b0..b7, resnet18, ...)."""
    return list(MODELS)


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


def _hash_named_spec(url: str) -> WeightSpec | None:
    """The :class:`WeightSpec` of a file named ``<name>-<hex>.pth`` (torch.hub's convention: the hex is
    the start of the file's SHA-256, which torch.hub checks); ``None`` if the name carries no digest."""
    digest = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    return WeightSpec(url, digest.group(1)) if digest else None


def _register_efficientnets() -> None:
    from efficientnet_pytorch.utils import efficientnet_params, url_map

    for name, url in url_map.items():
        size = efficientnet_params(name)[2]
        register_model(name, _hash_named_spec(url), "_conv_stem.weight", ("_fc.weight", "_fc.bias"), size)(
            _efficientnet_builder(name)
        )


_register_efficientnets()


# --------------------------------------------------------------------------- torchvision and Cadene layouts

TORCHVISION_URL = "https://download.pytorch.org/models/"
CADENE_URL = "http://data.lip6.fr/cadene/pretrainedmodels/"  # as published by pretrainedmodels; the digest guards it

# name -> (architecture from cellloc.backbones, published file, stem key, head keys). All five were
# trained at 224 px on RGB scaled to [0, 1] and normalised by the ImageNet mean/std.
_PUBLISHED_LAYOUTS: dict[str, tuple[Callable[..., nn.Module], str, str, tuple[str, str]]] = {
    "resnet18": (backbones.resnet18, TORCHVISION_URL + "resnet18-f37072fd.pth", "conv1.weight", ("fc.weight", "fc.bias")),
    "resnet50": (backbones.resnet50, TORCHVISION_URL + "resnet50-0676ba61.pth", "conv1.weight", ("fc.weight", "fc.bias")),
    "densenet121": (
        backbones.densenet121,
        TORCHVISION_URL + "densenet121-a639ec97.pth",
        "features.conv0.weight",
        ("classifier.weight", "classifier.bias"),
    ),
    "se-resnext50-32x4d": (
        backbones.se_resnext50_32x4d,
        CADENE_URL + "se_resnext50_32x4d-a260b3a4.pth",
        "layer0.conv1.weight",
        ("last_linear.weight", "last_linear.bias"),
    ),
    "se-resnext101-32x4d": (
        backbones.se_resnext101_32x4d,
        CADENE_URL + "se_resnext101_32x4d-3b2fe3d8.pth",
        "layer0.conv1.weight",
        ("last_linear.weight", "last_linear.bias"),
    ),
}


def _backbone_builder(arch: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(in_chans: int, num_classes: int, image_size: int | None) -> nn.Module:
        # adaptive pooling: the architecture does not depend on the input size
        return arch(in_chans=in_chans, num_classes=num_classes)

    return build


def _register_published_layouts() -> None:
    for name, (arch, url, stem_key, head_keys) in _PUBLISHED_LAYOUTS.items():
        register_model(name, _hash_named_spec(url), stem_key, head_keys, 224)(_backbone_builder(arch))


_register_published_layouts()


# --------------------------------------------------------------------------- stand-ins for trained weights


def calibrate(net: nn.Module, batches: Iterable[torch.Tensor], head: nn.Module | None = None, logit_std: float = 3.0) -> nn.Module:
    """A random-weight ``net`` made to behave like a trained one where precision and speed are measured.

    Random init leaves batch-norm running statistics at (0, 1), so activations drift off scale
    layer by layer and the outputs come out near-constant: two runtimes then agree whatever they
    do. Here every batch norm's statistics become the plain average over ``batches``
    (:func:`recalibrate_batchnorm`), and ``head`` (the last layer, with weight and bias) is scaled so the outputs
    spread with std ``logit_std`` on the first batch, as a trained net's logits do. Returns
    ``net`` in eval mode without gradients.
    """
    batches = list(batches)
    recalibrate_batchnorm(net, batches)
    net.eval()
    with torch.no_grad():
        if head is not None:
            scale = logit_std / net(batches[0]).std()
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.mul_(scale)
    return net.requires_grad_(False)


# --------------------------------------------------------------------------- features and head apart

HEAD_ATTRS = ("_fc", "fc", "last_linear", "classifier")  # efficientnet-pytorch, ResNet, SE-ResNeXt, DenseNet


def _head(net: nn.Module) -> nn.Linear:
    for name in HEAD_ATTRS:
        layer = getattr(net, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise ValueError(f"{type(net).__name__}: no linear classification head named one of {', '.join(HEAD_ATTRS)}")


def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, F) pooled features of a built backbone: what its classification head sees.

    ``classify(net, embed(net, x))`` is ``net(x)``; a model with a second head (e.g. an image
    head pooled over a field's cells, :mod:`cellloc.two_head`) shares the features. EfficientNets
    stop before their dropout and head; the other backbones run whole and the head's input is kept
    (the head itself costs one small matrix product).
    """
    if hasattr(net, "extract_features"):
        return net._avg_pooling(net.extract_features(x)).flatten(1)
    seen: list[torch.Tensor] = []
    hook = _head(net).register_forward_pre_hook(lambda _layer, args: seen.append(args[0]))
    try:
        net(x)
    finally:
        hook.remove()
    return seen[0]


def classify(net: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(N, num_classes) logits of the backbone's own head (dropout where it has one, then the linear layer)."""
    dropout = getattr(net, "_dropout", None)
    return _head(net)(dropout(features) if dropout is not None else features)


def num_features(net: nn.Module) -> int:
    """Width of :func:`embed`'s features."""
    return int(_head(net).in_features)


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


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor], seed: int = 0) -> int:
    """Recompute every BatchNorm layer's running mean and variance from ``batches`` with the current weights.

    Why ("precise BN"): the running statistics are moving averages over the training steps, taken
    while the weights changed under them. After a short run (a few dozen steps: the CPU-sized
    runs here) they describe long-gone weights, and in eval mode the mismatch compounds layer by
    layer until an EfficientNet answers every input nearly alike (the demo's cell model: output
    spread 0.003 across validation cells; an HPA image model: 1e-5, every field the same answer).
    A forward pass in train mode over some training samples, averaging each layer's batch
    statistics with equal weights, gives the statistics of the weights as they are. ``batches``
    are (B, C, H, W) inputs already on the network's device, B >= 2. Train mode keeps what the
    network does in training (EfficientNet's random drop-connect), drawn from ``seed`` in a forked
    generator, so the result is reproducible and the caller's random state is untouched. Returns
    the number of samples seen (0: nothing changed).
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    batches = iter(batches)
    first = next(batches, None)
    if not layers or first is None:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = net.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    net.train()
    seen = 0
    devices = [first.device] if first.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for x in itertools.chain([first], batches):
            net(x)
            seen += len(x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    net.train(was_training)
    return seen


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
