"""ResNet, DenseNet and SE-ResNeXt written here, with the state_dict layouts of the published ImageNet files.

The RxRx1 pipelines this project learns from trained ResNet-18/50, DenseNet-121 and SE-ResNeXt-50/101.
Their ImageNet weights are plain state dicts: torchvision's ``resnet18-f37072fd.pth``,
``resnet50-0676ba61.pth`` and ``densenet121-a639ec97.pth``, and Cadene's ``pretrainedmodels``
``se_resnext50_32x4d-a260b3a4.pth`` / ``se_resnext101_32x4d-3b2fe3d8.pth``. Neither torchvision nor
timm is a dependency: PyPI's torchvision wheels fail to import beside the pinned CPU torch
(``operator torchvision::nms does not exist``), timm imports torchvision, and an unpinned install
of either pulls a CUDA torch. So the three architectures are defined here, module for module,
such that ``state_dict()`` of the 3-channel, 1000-class network has exactly the keys and shapes
of the published file; ``cellloc.models`` registers them and loads those files.

Differences from the originals, none of which changes a key or a shape:

* every network ends in adaptive average pooling, so any input size of at least 32 px works
  (Cadene's SENet hard-codes a 7x7 average pool, i.e. 224 px input only);
* the first convolution takes ``in_chans`` inputs (``cellloc.models.adapt_stem_channels`` widens
  the published RGB filters to it);
* DenseNet-121 keeps the published files' old key names ``norm.1``/``conv.1``/``norm.2``/``conv.2``
  inside each dense layer (torchvision renames them with a regular expression on load; here the
  layer holds two-entry ``ModuleDict`` s, so the file loads as it is).

Inputs are ``(N, in_chans, H, W)`` float tensors, outputs ``(N, num_classes)`` logits. Random
initialisation (``pretrained="none"``): He-normal convolutions (fan-out, ReLU), BatchNorm
weight 1 / bias 0, linear biases 0, as torchvision initialises its ResNets.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def _conv_bn_shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    """The projection shortcut of both layouts: keys ``downsample.0.weight`` (1x1 conv) and ``downsample.1.*`` (BN)."""
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))


# --------------------------------------------------------------------------- residual blocks


class SqueezeExcite(nn.Module):
    """Channel gates from globally pooled features (keys ``fc1``, ``fc2``: 1x1 convolutions with bias)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); stride on the first."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        out = planes * self.expansion
        self.downsample = _conv_bn_shortcut(inplanes, out, stride) if stride != 1 or inplanes != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped, strided) -> 1x1 with 4x expansion; optional squeeze-excitation before the sum.

    ``groups=1, base_width=64`` is torchvision's ResNet-50 block (stride on the 3x3, "v1.5");
    ``groups=32, base_width=4, se_reduction=16`` is Cadene's ``SEResNeXtBottleneck`` (also stride
    on the 3x3). Width of the inner convolutions: ``floor(planes * base_width / 64) * groups``.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64, se_reduction: int = 0
    ) -> None:
        super().__init__()
        width = (planes * base_width // 64) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se_module = SqueezeExcite(out, se_reduction) if se_reduction else None
        self.downsample = _conv_bn_shortcut(inplanes, out, stride) if stride != 1 or inplanes != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.se_module is not None:
            y = self.se_module(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


def _residual_stages(block: type[nn.Module], depths: tuple[int, ...], **block_kw: int) -> list[nn.Sequential]:
    """``layer1``..``layer4``: 64/128/256/512 planes, stride 2 from the second stage on."""
    stages, inplanes = [], 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths)):
        blocks = []
        for j in range(n):
            blocks.append(block(inplanes, planes, stride=2 if i > 0 and j == 0 else 1, **block_kw))
            inplanes = planes * block.expansion
        stages.append(nn.Sequential(*blocks))
    return stages


class ResNet(nn.Module):
    """torchvision's layout: ``conv1``, ``bn1``, max-pool (padding 1), ``layer1``..``layer4``, ``fc``."""

    def __init__(self, block: type[nn.Module], depths: tuple[int, ...], in_chans: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = _residual_stages(block, depths)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SEResNeXt(nn.Module):
    """Cadene's ``SENet`` layout for the SE-ResNeXt models.

    ``layer0`` = (``conv1`` 7x7/2, ``bn1``, ReLU, max-pool 3/2 with ``ceil_mode`` and no padding, as
    the Caffe originals), ``layer1``..``layer4`` of grouped bottlenecks with squeeze-excitation
    (reduction 16), ``last_linear``; no dropout (Cadene's ``dropout_p=None`` for these models).
    """

    def __init__(
        self, depths: tuple[int, ...], in_chans: int = 3, num_classes: int = 1000, groups: int = 32, base_width: int = 4
    ) -> None:
        super().__init__()
        self.layer0 = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False),
                bn1=nn.BatchNorm2d(64),
                relu1=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            )
        )
        stages = _residual_stages(Bottleneck, depths, groups=groups, base_width=base_width, se_reduction=16)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.last_linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        return self.last_linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (``bn_size * growth`` maps) -> BN-ReLU-3x3 conv (``growth`` maps) on the concatenated inputs.

    Submodules live in ``ModuleDict`` s named ``norm`` and ``conv`` with entries ``"1"`` and ``"2"``,
    which gives the published keys ``norm.1.weight``, ``conv.2.weight``, ...
    """

    def __init__(self, in_features: int, growth: int, bn_size: int) -> None:
        super().__init__()
        mid = bn_size * growth
        self.norm = nn.ModuleDict({"1": nn.BatchNorm2d(in_features), "2": nn.BatchNorm2d(mid)})
        self.conv = nn.ModuleDict(
            {"1": nn.Conv2d(in_features, mid, 1, bias=False), "2": nn.Conv2d(mid, growth, 3, padding=1, bias=False)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv["1"](F.relu(self.norm["1"](x)))
        return self.conv["2"](F.relu(self.norm["2"](y)))


class DenseBlock(nn.ModuleDict):
    """``denselayer1``..``denselayerN``; each sees every earlier output (channels concatenated)."""

    def __init__(self, n_layers: int, in_features: int, growth: int, bn_size: int) -> None:
        super().__init__(
            {f"denselayer{i + 1}": DenseLayer(in_features + i * growth, growth, bn_size) for i in range(n_layers)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """torchvision's layout: ``features`` (``conv0``, ``norm0``, blocks and transitions, ``norm5``), ``classifier``."""

    def __init__(
        self,
        depths: tuple[int, ...] = (6, 12, 24, 16),
        growth: int = 32,
        init_features: int = 64,
        bn_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(in_chans, init_features, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(3, stride=2, padding=1),
        )
        n = init_features
        for i, depth in enumerate(depths):
            layers[f"denseblock{i + 1}"] = DenseBlock(depth, n, growth, bn_size)
            n += depth * growth
            if i < len(depths) - 1:  # transition: BN-ReLU-1x1 conv halving the maps, 2x2 average pool
                layers[f"transition{i + 1}"] = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(n),
                        relu=nn.ReLU(inplace=True),
                        conv=nn.Conv2d(n, n // 2, 1, bias=False),
                        pool=nn.AvgPool2d(2, stride=2),
                    )
                )
                n //= 2
        layers["norm5"] = nn.BatchNorm2d(n)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(n, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- the published configurations


def resnet18(in_chans: int = 3, num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_chans, num_classes)


def resnet50(in_chans: int = 3, num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_chans, num_classes)


def densenet121(in_chans: int = 3, num_classes: int = 1000) -> DenseNet:
    return DenseNet((6, 12, 24, 16), growth=32, init_features=64, in_chans=in_chans, num_classes=num_classes)


def se_resnext50_32x4d(in_chans: int = 3, num_classes: int = 1000) -> SEResNeXt:
    return SEResNeXt((3, 4, 6, 3), in_chans, num_classes)


def se_resnext101_32x4d(in_chans: int = 3, num_classes: int = 1000) -> SEResNeXt:
    return SEResNeXt((3, 4, 23, 3), in_chans, num_classes)
