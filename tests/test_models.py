"""models.py: the registry, stem adaptation, and ImageNet weights by URL + checksum (offline)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from cellloc.errors import InputError
from cellloc.models import (
    MODELS,
    WeightSpec,
    adapt_stem_channels,
    calibrate,
    create_model,
    fetch_weights,
    load_pretrained,
    model_names,
)

NAME = "efficientnet-b0"  # the smallest registered backbone keeps these tests fast


def _rgb_stem(out: int = 8, k: int = 3) -> torch.Tensor:
    return torch.randn(out, 3, k, k, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- adapt_stem_channels


def test_adapt_stem_keeps_rgb_filters_and_sums_over_channels():
    w = _rgb_stem()
    out = adapt_stem_channels(w, 4)
    assert out.shape == (8, 4, 3, 3)
    # RGB filters are kept up to the common 3/N factor; the new channel is their mean, rescaled
    torch.testing.assert_close(out[:, :3] * 4 / 3, w)
    torch.testing.assert_close(out[:, 3] * 4 / 3, w.mean(dim=1))
    # an equally bright field gives the same stem response as before
    torch.testing.assert_close(out.sum(dim=1), w.sum(dim=1))


def test_adapt_stem_without_rescale_copies_rgb_bit_for_bit():
    w = _rgb_stem()
    out = adapt_stem_channels(w, 6, rescale=False)
    assert torch.equal(out[:, :3], w)
    for c in range(3, 6):
        torch.testing.assert_close(out[:, c], w.mean(dim=1))


def test_adapt_stem_to_fewer_channels_preserves_the_sum():
    w = _rgb_stem()
    for n in (1, 2):
        out = adapt_stem_channels(w, n)
        assert out.shape[1] == n
        torch.testing.assert_close(out.sum(dim=1), w.sum(dim=1))
    assert torch.equal(adapt_stem_channels(w, 3), w)


def test_adapt_stem_convolution_response_on_uniform_input():
    w = _rgb_stem()
    x3 = torch.full((1, 3, 5, 5), 0.7)
    x4 = torch.full((1, 4, 5, 5), 0.7)
    y3 = torch.nn.functional.conv2d(x3, w)
    y4 = torch.nn.functional.conv2d(x4, adapt_stem_channels(w, 4))
    torch.testing.assert_close(y4, y3)


def test_adapt_stem_rejects_non_rgb_weights():
    with pytest.raises(ValueError, match="RGB stem"):
        adapt_stem_channels(torch.zeros(8, 4, 3, 3), 4)


# --------------------------------------------------------------------------- create_model


def test_registry_has_efficientnets_with_url_and_checksum():
    assert {"efficientnet-b0", "efficientnet-b2"} <= set(model_names())
    spec = MODELS["efficientnet-b2"].weights
    assert spec.url.startswith("https://") and spec.filename == "efficientnet-b2-8bb594d6.pth"
    assert spec.sha256 == "8bb594d6"


def test_create_model_shapes_offline():
    model = create_model(NAME, in_chans=4, num_classes=19, pretrained="none", image_size=32)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 19)
    assert model._conv_stem.weight.shape[1] == 4


def test_create_model_bad_values_are_one_line_errors():
    with pytest.raises(InputError, match="unknown model 'resnet9'"):
        create_model("resnet9", 4, 19)
    with pytest.raises(InputError, match="pretrained must be one of"):
        create_model(NAME, 4, 19, pretrained="imagenet21k")


# --------------------------------------------------------------------------- weight files


@pytest.fixture()
def imagenet_file(tmp_path: Path) -> tuple[Path, str]:
    """A 3-channel, 1000-class state_dict of the registered architecture, written by the test."""
    src = MODELS[NAME].builder(3, 1000, 32)
    path = tmp_path / "src" / "efficientnet-b0-test.pth"
    path.parent.mkdir()
    torch.save(src.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _use_spec(monkeypatch, spec: WeightSpec) -> None:
    monkeypatch.setitem(MODELS, NAME, dataclasses.replace(MODELS[NAME], weights=spec))


def test_pretrained_download_checksum_cache_and_stem(monkeypatch, tmp_path, imagenet_file):
    path, digest = imagenet_file
    _use_spec(monkeypatch, WeightSpec(path.as_uri(), digest[:8]))
    cache = tmp_path / "cache"
    model = create_model(NAME, in_chans=4, num_classes=19, pretrained="imagenet", image_size=32, cache_dir=cache)
    assert (cache / path.name).read_bytes() == path.read_bytes()  # downloaded into the cache
    src = torch.load(path, weights_only=True)
    sd = model.state_dict()
    torch.testing.assert_close(sd["_conv_stem.weight"], adapt_stem_channels(src["_conv_stem.weight"], 4))
    torch.testing.assert_close(sd["_blocks.0._depthwise_conv.weight"], src["_blocks.0._depthwise_conv.weight"])
    assert sd["_fc.weight"].shape == (19, src["_fc.weight"].shape[1])  # new head
    # second call: served from the cache even when the URL is gone
    path.unlink()
    create_model(NAME, 4, 19, pretrained="imagenet", image_size=32, cache_dir=cache)


def test_pretrained_checksum_mismatch_is_refused(monkeypatch, tmp_path, imagenet_file):
    path, digest = imagenet_file
    bad = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    _use_spec(monkeypatch, WeightSpec(path.as_uri(), bad))
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="checksum mismatch") as exc:
        create_model(NAME, 4, 19, pretrained="imagenet", image_size=32, cache_dir=cache)
    assert "\n" not in str(exc.value)
    assert not (cache / path.name).exists()  # a bad download never lands in the cache


def test_pretrained_offline_is_one_clear_line(monkeypatch, tmp_path):
    _use_spec(monkeypatch, WeightSpec("http://127.0.0.1:9/efficientnet-b0-12345678.pth", "12345678"))
    with pytest.raises(InputError) as exc:
        fetch_weights(MODELS[NAME].weights, tmp_path, timeout=5)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "efficientnet-b0-12345678.pth" in msg and str(tmp_path) in msg and "--pretrained none" in msg


def test_pretrained_file_of_another_architecture_is_refused(tmp_path):
    other = MODELS["efficientnet-b1"].builder(3, 1000, 32)
    path = tmp_path / "b1.pth"
    torch.save(other.state_dict(), path)
    model = create_model(NAME, 4, 19, pretrained="none", image_size=32)
    with pytest.raises(InputError, match="does not fit efficientnet-b0"):
        load_pretrained(model, NAME, 4, path=path)


def test_pickled_module_is_not_a_state_dict(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module: refused by weights_only
    model = create_model(NAME, 4, 19, pretrained="none", image_size=32)
    with pytest.raises(InputError, match="not a loadable state_dict"):
        load_pretrained(model, NAME, 4, path=path)


def test_garbage_weight_file_error_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"garbage, not a state dict")
    model = create_model(NAME, 4, 19, pretrained="none", image_size=32)
    with pytest.raises(InputError) as err:
        load_pretrained(model, NAME, 4, path=path)
    msg = str(err.value)
    assert "not a loadable state_dict" in msg and "weights_only" not in msg and "\n" not in msg


def test_recalibrated_batchnorm_holds_the_batches_plain_statistics():
    from cellloc.models import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1, momentum=0.01))
    torch.nn.init.ones_(net[0].weight)
    net.eval()
    a = torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1)  # mean 2, unbiased var 2
    b = torch.tensor([5.0, 5.0, 8.0, 2.0]).reshape(4, 1, 1, 1)  # mean 5, unbiased var 6
    assert recalibrate_batchnorm(net, [a, b]) == 6
    bn = net[1]
    # every batch counts the same (not the moving average with momentum 0.01, which would stay near 0 and 1)
    assert float(bn.running_mean) == pytest.approx((2 + 5) / 2) and float(bn.running_var) == pytest.approx((2 + 6) / 2)
    assert bn.momentum == 0.01 and not net.training  # put back as they were
    assert recalibrate_batchnorm(net, []) == 0 and float(bn.running_mean) == pytest.approx(3.5)  # nothing to see: kept

def test_calibrate_gives_random_weights_a_trained_nets_scales():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    batches = [torch.randn(4, 3, 8, 8) * 5 + 2 for _ in range(3)]
    calibrate(net, batches, head=net[4], logit_std=3.0)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in batches])
    torch.testing.assert_close(net[1].running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)  # the average over all batches
    with torch.no_grad():
        assert net(batches[0]).std().item() == pytest.approx(3.0, rel=1e-4)
