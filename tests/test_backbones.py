"""backbones.py + the registry: ResNet-18/50, DenseNet-121 and SE-ResNeXt-50/101 with the published layouts.

No test downloads: the "published" files are state dicts of the RGB, 1000-class architecture that
the tests write themselves (in the legacy serialisation for the 2017-2018 files, without BatchNorm's
``num_batches_tracked``, as torch < 0.4.1 saved them), served from a file:// URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from cellloc import backbones
from cellloc.errors import InputError
from cellloc.models import MODELS, WeightSpec, adapt_stem_channels, create_model, fetch_weights, load_pretrained

# name -> facts of the published file: its URL, the parameter count of the 1000-class RGB network
# (torchvision's num_params metadata; timm's model index for Cadene's files, given to 0.01 M), a few
# of its keys, and whether the file predates num_batches_tracked / the zip serialisation.
PUBLISHED = {
    "resnet18": (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        11_689_512,
        ["conv1.weight", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight", "fc.weight"],
        False,
    ),
    "resnet50": (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        25_557_032,
        ["conv1.weight", "layer1.0.conv3.weight", "layer1.0.downsample.1.running_var", "layer4.2.bn3.bias"],
        False,
    ),
    "densenet121": (
        "https://download.pytorch.org/models/densenet121-a639ec97.pth",
        7_978_856,
        [
            "features.conv0.weight",
            "features.denseblock1.denselayer1.norm.1.weight",
            "features.denseblock4.denselayer16.conv.2.weight",
            "features.transition3.conv.weight",
            "features.norm5.running_mean",
            "classifier.bias",
        ],
        True,
    ),
    "se-resnext50-32x4d": (
        "http://data.lip6.fr/cadene/pretrainedmodels/se_resnext50_32x4d-a260b3a4.pth",
        27_560_000,
        ["layer0.conv1.weight", "layer0.bn1.running_mean", "layer1.0.se_module.fc1.bias", "layer3.5.conv2.weight",
         "last_linear.weight"],
        True,
    ),
    "se-resnext101-32x4d": (
        "http://data.lip6.fr/cadene/pretrainedmodels/se_resnext101_32x4d-3b2fe3d8.pth",
        48_960_000,
        ["layer0.conv1.weight", "layer3.22.se_module.fc2.weight", "layer4.0.downsample.0.weight", "last_linear.bias"],
        True,
    ),
}
NAMES = list(PUBLISHED)
SIZE = 32  # the smallest input every one of them takes (1x1 maps after layer4 / norm5)


def _rgb_network(name: str) -> nn.Module:
    """The 3-channel, 1000-class network with non-trivial BatchNorm buffers, so a dropped buffer shows."""
    torch.manual_seed(0)
    net = MODELS[name].builder(3, 1000, None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def write_published(name: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stand-in for the published file of ``name``: same file name, same layout, our own numbers."""
    url, _, _, old = PUBLISHED[name]
    sd = _rgb_network(name).state_dict()
    if old:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = folder / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path, _use_new_zipfile_serialization=not old)
    return path, sd


@pytest.mark.parametrize("name", NAMES)
def test_registry_points_at_the_published_file(name):
    url, n_params, keys, _ = PUBLISHED[name]
    entry = MODELS[name]
    assert entry.weights.url == url
    assert entry.weights.sha256 == url.rsplit("-", 1)[1].removesuffix(".pth")  # the hash in the name, checked
    assert entry.default_image_size == 224
    net = entry.builder(3, 1000, None)
    sd = net.state_dict()
    assert entry.stem_key in sd and sd[entry.stem_key].shape[1] == 3
    assert all(k in sd for k in entry.head_keys) and sd[entry.head_keys[0]].shape[0] == 1000
    assert all(k in sd for k in keys), [k for k in keys if k not in sd]
    got = sum(p.numel() for p in net.parameters())
    assert got == n_params if n_params % 10_000 else round(got, -4) == n_params


@pytest.mark.parametrize("name", NAMES)
def test_n_channel_stems_forward(name):
    for in_chans in (4, 6):
        net = create_model(name, in_chans=in_chans, num_classes=7, pretrained="none")
        assert net.state_dict()[MODELS[name].stem_key].shape[1] == in_chans
        net.train()
        loss = net(torch.randn(2, in_chans, SIZE, SIZE)).logsumexp(1).mean()
        loss.backward()  # trains: every parameter gets a gradient
        assert all(p.grad is not None for p in net.parameters())
        net.eval()
        with torch.no_grad():
            out = net(torch.randn(3, in_chans, SIZE + 8, SIZE + 24))  # any size >= 32, not only square
        assert out.shape == (3, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_published_file_loads_with_the_stem_adapted(monkeypatch, tmp_path, name):
    path, published = write_published(name, tmp_path / "published")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = WeightSpec(path.as_uri(), digest[:8])  # same file name as the real one; our bytes, our digest
    monkeypatch.setitem(MODELS, name, dataclasses.replace(MODELS[name], weights=spec))
    cache = tmp_path / "cache"
    entry = MODELS[name]

    for in_chans in (4, 6):
        net = create_model(name, in_chans=in_chans, num_classes=5, pretrained="imagenet", cache_dir=cache)
        sd = net.state_dict()
        stem = published[entry.stem_key]
        torch.testing.assert_close(sd[entry.stem_key], adapt_stem_channels(stem, in_chans))
        # RGB filters kept and the extra channels their mean, all rescaled by 3/in_chans
        torch.testing.assert_close(sd[entry.stem_key][:, :3] * in_chans / 3, stem)
        torch.testing.assert_close(sd[entry.stem_key][:, 3:] * in_chans / 3, stem.mean(1, keepdim=True).expand(-1, in_chans - 3, -1, -1))
        for key, value in published.items():
            if key not in (entry.stem_key, *entry.head_keys):
                torch.testing.assert_close(sd[key], value, msg=key)
        assert sd[entry.head_keys[0]].shape[0] == 5  # a new head
    assert (cache / path.name).read_bytes() == path.read_bytes()  # fetched once into the cache

    # With 3 channels and the published head put back, the network computes what the file's network does.
    net = create_model(name, in_chans=3, num_classes=1000, pretrained="imagenet", cache_dir=cache)
    net.load_state_dict({k: published[k] for k in entry.head_keys}, strict=False)
    ref = _rgb_network(name)
    ref.load_state_dict(published, strict=False)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_offline_fetch_is_one_line_naming_the_file(tmp_path, name):
    published = MODELS[name].weights
    offline = dataclasses.replace(published, url="http://127.0.0.1:9/" + published.filename)  # port 9: refused
    with pytest.raises(InputError) as exc:
        fetch_weights(offline, tmp_path, timeout=5)
    msg = str(exc.value)
    assert "\n" not in msg
    assert published.filename in msg and str(tmp_path) in msg and "--pretrained none" in msg


def test_a_file_of_another_layout_is_refused(tmp_path):
    path, _ = write_published("resnet18", tmp_path)
    net = create_model("resnet50", 4, 19)
    with pytest.raises(InputError, match="does not fit resnet50"):
        load_pretrained(net, "resnet50", 4, path=path)
    # torchvision's renamed DenseNet keys (norm1, conv1, ...) are not the published file's
    sd = _rgb_network("densenet121").state_dict()
    renamed = {k.replace("norm.1", "norm1").replace("conv.2", "conv2"): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(InputError, match="does not fit densenet121"):
        load_pretrained(create_model("densenet121", 4, 19), "densenet121", 4, path=tmp_path / "renamed.pth")


def test_dense_layer_sees_every_earlier_output():
    block = backbones.DenseBlock(3, in_features=8, growth=4, bn_size=2)
    x = torch.randn(1, 8, 6, 6)
    y = block.eval()(x)
    assert y.shape == (1, 8 + 3 * 4, 6, 6)
    torch.testing.assert_close(y[:, :8], x)  # the input passes through unchanged
    assert block["denselayer3"].conv["1"].in_channels == 8 + 2 * 4


def test_squeeze_excite_scales_channels_within_zero_and_one():
    se = backbones.SqueezeExcite(32, reduction=16)
    x = torch.rand(2, 32, 5, 5) + 0.1
    ratio = se(x) / x
    assert ((ratio > 0) & (ratio < 1)).all()
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))  # one gate per channel
