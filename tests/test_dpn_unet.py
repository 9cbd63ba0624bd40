"""The DPN-92 U-Net matches the published weight files' layout and runs on small inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cellloc.segmentation.dpn_unet import DPNUnet, DualPathBlock, UnetDecoderBlock, UpsampleConv

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "hpa_unet"
PUBLISHED = ("nuclei_v1", "cell_3ch_v1", "cell_v2")


def read_layout(path: Path) -> list[tuple[str, list[int], str]]:
    """(key, shape, dtype) rows of a ``*_state_dict.tsv`` fact file, in file order."""
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"]
    rows = []
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        dims = shape.strip("[]")
        rows.append((key, [int(d) for d in dims.split(",")] if dims else [], dtype))
    return rows


def layout_of(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


@pytest.fixture(scope="module")
def net() -> DPNUnet:
    torch.manual_seed(0)
    return DPNUnet().eval()


def test_state_dict_matches_committed_layout(net):
    expected = read_layout(DATA / "dpn_unet_state_dict.tsv")
    assert len(expected) == 595
    assert layout_of(net) == expected


@pytest.mark.parametrize("role", PUBLISHED)
def test_committed_layout_equals_shared_reference(role):
    path = SHARED / f"{role}_state_dict.tsv"
    if not path.exists():
        pytest.skip(f"{path} absent: ../shared is not beside this checkout (the committed copy is checked above)")
    assert read_layout(path) == read_layout(DATA / "dpn_unet_state_dict.tsv")


def test_parameter_count_and_bn_eps(net):
    assert sum(p.numel() for p in net.parameters()) == 139_108_867
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 96 and all(m.eps == 1e-3 for m in bns)
    ups = [m for m in net.modules() if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == 5 and all(m.mode == "nearest" and m.scale_factor == 2 for m in ups)


def test_forward_keeps_size(net):
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_forward_non_square_batch(net):
    x = torch.randn(2, 3, 32, 96)
    with torch.no_grad():
        out = net(x)
        single = net(x[1:])
    assert out.shape == (2, 3, 32, 96)
    torch.testing.assert_close(out[1:], single, rtol=1e-4, atol=1e-5)


def test_forward_rejects_size_not_multiple_of_32(net):
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 48, 64))


def test_dual_path_block_splits_residual_and_dense():
    torch.manual_seed(0)
    block = DualPathBlock(in_ch=64, bottleneck=32, width=64, inc=16, kind="down").eval()
    with torch.no_grad():
        resid, dense = block(torch.randn(2, 64, 8, 8))
    # Projection gives width + 2*inc channels; the block adds inc more dense channels.
    assert resid.shape == (2, 64, 4, 4) and dense.shape == (2, 48, 4, 4)


def test_folded_upsampling_gives_the_same_outputs(net):
    folded = DPNUnet().eval()
    folded.load_state_dict(net.state_dict())
    folded.fold_upsampling()
    assert not any(isinstance(m, torch.nn.Upsample) for m in folded.modules())
    assert sum(isinstance(m, UpsampleConv) for m in folded.modules()) == 5
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want, got = net(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("side", [1, 5])
def test_decoder_block_fold_matches_at_every_border(side):
    # tiny inputs: every output pixel is next to the zero padding, the case a wrong tap order breaks
    torch.manual_seed(1)
    block = UnetDecoderBlock(8, 4).eval()
    x = torch.randn(3, 8, side, side + 2)
    with torch.no_grad():
        want = block(x).clone()
        block.fold()
        block.fold()  # folding twice is a no-op
        got = block(x)
    assert got.shape == want.shape == (3, 4, 2 * side, 2 * side + 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_only_a_3x3_padding_1_conv_folds():
    with pytest.raises(ValueError, match="3x3 conv with padding 1"):
        UpsampleConv(torch.nn.Conv2d(4, 4, 3, padding=0))
