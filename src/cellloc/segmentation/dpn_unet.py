"""The HPA Cell Segmentator network: a DPN-92 encoder under a U-Net decoder.

Written from the published description of the architecture (no code carried over), with
attribute names chosen so that ``state_dict()`` has exactly the keys and shapes of the
published weight files (``dpn_unet_nuclei_v1.pth``, ``dpn_unet_cell_3ch_v1.pth``,
``dpn_unet_cell_v2.pth``): 595 entries, 139,108,867 parameters. Loading those files is
``weights.py``'s job; this module only defines the layers and the forward pass.

Input: float32 (N, 3, H, W) with H and W multiples of 32, normalised per channel.
Output: float32 (N, 3, H, W) logits for [background, border between objects, object body];
the caller applies the softmax.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3  # every BatchNorm in the encoder was trained with this eps, not torch's 1e-5
GROUPS = 32  # grouped 3x3 convolutions in every dual-path block
DPN92_STEM = 64
# Per encoder stage 1..4: (blocks, width of the residual path, bottleneck width, dense growth).
DPN92_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (3, 256, 96, 16),
    (4, 512, 192, 32),
    (20, 1024, 384, 24),
    (3, 2048, 768, 128),
)
DECODER_FILTERS: tuple[int, ...] = (64, 336, 704, 1552, 2688)  # channels of each encoder stage's output

Pair = tuple[torch.Tensor, torch.Tensor]


def _cat(x: torch.Tensor | Pair) -> torch.Tensor:
    """A dual-path block passes (residual, dense); everything downstream sees them concatenated."""
    return torch.cat(x, dim=1) if isinstance(x, tuple) else x


class BnActConv2d(nn.Module):
    """Pre-activation unit (BN -> ReLU -> conv without bias) used throughout DPN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.bn(x)))


class CatBnAct(nn.Module):
    """Closes the encoder: BN + ReLU over the concatenated (residual, dense) pair."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor | Pair) -> torch.Tensor:
        return self.act(self.bn(_cat(x)))


class DualPathBlock(nn.Module):
    """One DPN block: a ResNet-style summed path of ``width`` channels plus a DenseNet-style
    path that grows by ``inc`` channels per block.

    ``kind`` is ``"proj"`` (first block of stage 1: project the input, stride 1), ``"down"``
    (first block of stages 2-4: project and halve the resolution) or ``"normal"``.
    """

    def __init__(self, in_ch: int, bottleneck: int, width: int, inc: int, kind: str = "normal"):
        super().__init__()
        if kind not in ("proj", "down", "normal"):
            raise ValueError(f"unknown dual-path block kind {kind!r}")
        self.width = width
        stride = 2 if kind == "down" else 1
        # The projection's name encodes its stride; the weight files key on it.
        self.proj_name = {"proj": "c1x1_w_s1", "down": "c1x1_w_s2"}.get(kind)
        if self.proj_name is not None:
            self.add_module(self.proj_name, BnActConv2d(in_ch, width + 2 * inc, 1, stride=stride))
        self.c1x1_a = BnActConv2d(in_ch, bottleneck, 1)
        self.c3x3_b = BnActConv2d(bottleneck, bottleneck, 3, stride=stride, padding=1, groups=GROUPS)
        self.c1x1_c = BnActConv2d(bottleneck, width + inc, 1)

    def forward(self, x: torch.Tensor | Pair) -> Pair:
        x_in = _cat(x)
        if self.proj_name is not None:
            proj = getattr(self, self.proj_name)(x_in)
            resid, dense = proj[:, : self.width], proj[:, self.width :]
        else:
            resid, dense = x  # type: ignore[misc]  (a normal block always follows another block)
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return resid + out[:, : self.width], torch.cat([dense, out[:, self.width :]], dim=1)


def dpn92_stages(in_channels: int = 3) -> nn.ModuleList:
    """The five DPN-92 encoder stages, at strides 2, 4, 8, 16 and 32."""
    stem = nn.Sequential(
        nn.Conv2d(in_channels, DPN92_STEM, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(DPN92_STEM, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )
    stages = [stem]
    in_ch = DPN92_STEM
    for i, (blocks, width, bottleneck, inc) in enumerate(DPN92_STAGES):
        layers: list[nn.Module] = [nn.MaxPool2d(3, stride=2, padding=1)] if i == 0 else []
        for b in range(blocks):
            kind = "normal" if b else ("proj" if i == 0 else "down")
            layers.append(DualPathBlock(in_ch, bottleneck, width, inc, kind))
            in_ch = (width + 3 * inc) if b == 0 else in_ch + inc
        if i == len(DPN92_STAGES) - 1:
            layers.append(CatBnAct(in_ch))
        stages.append(nn.Sequential(*layers))
    return nn.ModuleList(stages)


# Which of a 3x3 kernel's taps (along one axis) an output phase reads from its 2 input pixels:
# an even output row 2i sees upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i (taps 0 | 1+2);
# an odd row 2i+1 sees i, i, i+1 (taps 0+1 | 2).
PHASE_TAPS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (((0,), (1, 2)), ((0, 1), (2,)))


def _summed(x: torch.Tensor, taps: tuple[int, ...], dim: int) -> torch.Tensor:
    parts = [x.select(dim, t) for t in taps]
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


class UpsampleConv(nn.Module):
    """``conv(nearest_upsample_x2(x))`` for a 3x3, padding-1 ``conv``, computed from ``x`` itself.

    Each of the four output phases (even/odd row, even/odd column) reads a 2x2 neighbourhood
    of the input, with taps summed from the 3x3 kernel (:data:`PHASE_TAPS`): one 2x2 conv with
    4x the output channels (input padded by 1; phase (a, b) starts at offset (a, b)), then the
    phases interleaved. 16 multiply-adds per input pixel and channel pair instead of 36, and the
    upsampled tensor (4x the input) is never made. The same sums in another order: outputs
    equal to ~1e-6 relative. (A stride-2 transposed conv is the same arithmetic, but PyTorch's
    CPU kernel for it ran 2.5x slower than the unfolded pair on the deepest decoder stage.)
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError(f"expected a 3x3 conv with padding 1, got {conv}")
        w = conv.weight.detach()
        c = self.out_channels = conv.out_channels
        phase = nn.Conv2d(conv.in_channels, 4 * c, 2, padding=1, bias=conv.bias is not None, device="meta")
        self.conv = phase.to_empty(device=w.device).to(w.dtype)  # no random init of what is overwritten next
        with torch.no_grad():  # filled tap by tap: no copy of the whole kernel is ever made
            for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # phase order: even/odd row, even/odd column
                for i, rows in enumerate(PHASE_TAPS[a]):
                    across = _summed(w, rows, 2)  # (out, in, 3): the rows summed
                    for j, cols in enumerate(PHASE_TAPS[b]):
                        self.conv.weight[k * c : (k + 1) * c, :, i, j] = _summed(across, cols, 2)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().repeat(4))
        self.requires_grad_(conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        c = self.out_channels
        y = self.conv(x)  # (N, 4C, h+1, w+1)
        phases = [y[:, k * c : (k + 1) * c, a : a + h, b : b + w] for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
        out = torch.stack(phases, 2).reshape(-1, c, 2, 2, h, w)  # (N, C, a, b, h, w)
        return out.permute(0, 1, 4, 2, 5, 3).reshape(-1, c, 2 * h, 2 * w)


class UnetDecoderBlock(nn.Module):
    """x2 nearest-neighbour upsampling, then conv 3x3 + ReLU (see :meth:`fold` for inference)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=2),  # nearest: what the weights were trained with
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def fold(self) -> None:
        """Replace upsample + conv by the equivalent :class:`UpsampleConv` (2.25x fewer multiply-adds).
        The weight keys change (``layer.0`` becomes it), so fold after loading weights."""
        if isinstance(self.layer[0], nn.Upsample):
            self.layer = nn.Sequential(UpsampleConv(self.layer[1]), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class ConvBottleneck(nn.Module):
    """Fuses decoder features with the encoder skip of the same resolution (concat, conv, ReLU)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self.seq(torch.cat([dec, enc], dim=1))


class DPNUnet(nn.Module):
    """DPN-92 U-Net as published by the HPA Cell Segmentator (three roles share this layout).

    ``in_channels`` must be 3 to load the published files; ``num_classes`` is 3
    ([background, border, body]). H and W of the input must be multiples of 32.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 3):
        super().__init__()
        f = DECODER_FILTERS
        # Registration order follows the published files (decoder first), so diffs line up.
        self.bottlenecks = nn.ModuleList(ConvBottleneck(2 * c, c) for c in reversed(f[:-1]))
        self.decoder_stages = nn.ModuleList(UnetDecoderBlock(f[i + 1], f[i]) for i in range(len(f) - 1))
        self.last_upsample = UnetDecoderBlock(f[0], f[0])
        self.final = nn.Sequential(nn.Conv2d(f[0], num_classes, 3, padding=1))
        self.encoder_stages = dpn92_stages(in_channels)

    def fold_upsampling(self) -> DPNUnet:
        """For inference: every decoder upsampling (x2 nearest + conv 3x3) becomes one
        :class:`UpsampleConv`, the same outputs computed from the un-enlarged input.

        The decoder's five upsampling convs are 47% of the network's multiply-adds (the decoder
        is 88% of them at these widths); folded, they cost 16/36 of that plus a 1-pixel border,
        so the whole forward needs 23% fewer (72.4 against 55.5 GMACs for a 256^2 input;
        ``bench/bench_hpa.py --layers``, where PyTorch ran 1.24x and OpenVINO 1.19x faster for
        it on one thread). Outputs agree with the unfolded network to float32
        rounding (the tap sums are added in another order). Call after loading weights: the
        folded module's state_dict no longer matches the published files. Returns ``self``.
        """
        for block in (*self.decoder_stages, self.last_upsample):
            block.fold()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"DPNUnet needs H and W that are multiples of 32, got {tuple(x.shape[-2:])}")
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            x = _cat(x)
            skips.append(x)
        # Deepest first: decoder_stages[3] lifts stride 32 -> 16 and fuses with stage 3, ...
        x = skips[-1]
        for i, bottleneck in enumerate(self.bottlenecks):
            level = len(self.decoder_stages) - 1 - i
            x = bottleneck(self.decoder_stages[level](x), skips[level])
        return self.final(self.last_upsample(x))


def shortcut_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of known behaviour, for tests and benchmarks where the published files are absent.

    A random-init DPNUnet, rewired: the stem copies input planes 2 and 0 into its first two
    channels, the last decoder stage is zeroed so that only the stem's skip reaches the head,
    and the head scores "body" where those planes are bright. As a nuclei network (planes =
    nuclei x3) it finds bright nuclei; as a cell network (MT, ER, nuclei) it finds cells bright
    in MT or nuclei. The deep path keeps its random weights, so a forward pass costs what the
    published networks cost. It is not a trained segmentation model.
    """
    torch.manual_seed(seed)
    sd = DPNUnet().state_dict()
    rewired = (
        "encoder_stages.0.0.weight",
        "decoder_stages.0.layer.1.weight",
        "decoder_stages.0.layer.1.bias",
        "bottlenecks.3.seq.0.weight",
        "bottlenecks.3.seq.0.bias",
        "last_upsample.layer.1.weight",
        "last_upsample.layer.1.bias",
        "final.0.weight",
        "final.0.bias",
    )
    with torch.no_grad():
        for key in rewired:
            sd[key].zero_()
        sd["encoder_stages.0.0.weight"][0, 2, 3, 3] = 1  # stem channel 0 <- plane 2 (centre tap)
        sd["encoder_stages.0.0.weight"][1, 0, 3, 3] = 1  # stem channel 1 <- plane 0
        skip = DECODER_FILTERS[0]  # the stem skip follows the 64 decoder channels in the concat
        for c in (0, 1):
            sd["bottlenecks.3.seq.0.weight"][c, skip + c, 1, 1] = 1
            sd["last_upsample.layer.1.weight"][c, c, 1, 1] = 1
            sd["final.0.weight"][2, c, 1, 1] = 3  # body logit
        sd["final.0.bias"][:] = torch.tensor([4.0, -5.0, 0.0])  # background, border, body
    return sd
