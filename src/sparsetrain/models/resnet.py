"""torchvision-compatible ResNet-18/34/50, written without torchvision.

The module tree, parameter/buffer names, shapes, initialisation and forward are
those of ``torchvision.models.resnet18/34/50`` (torchvision >= 0.13 defaults:
``groups=1``, ``width_per_group=64``, no dilation, ``BatchNorm2d``), so a
torchvision state dict loads strictly into these models and vice versa:

* stem ``conv1`` (7x7, stride 2, padding 3, no bias) -> ``bn1`` -> ``relu`` ->
  ``maxpool`` (3x3, stride 2, padding 1);
* ``layer1 .. layer4``: ``nn.Sequential`` of :class:`BasicBlock` (ResNet-18/34) or
  :class:`Bottleneck` (ResNet-50, "v1.5": the stride sits on the 3x3 ``conv2``);
  planes 64/128/256/512, stride 1 for ``layer1`` and 2 for the later stages; the
  first block of a stage gets ``downsample = Sequential(1x1 conv with the block's
  stride, BatchNorm2d)`` when stride or channel count changes (every stage for
  ResNet-50, ``layer2..4`` for ResNet-18/34), giving keys ``downsample.0.weight``
  and ``downsample.1.{weight,bias,running_mean,running_var,num_batches_tracked}``;
* ``avgpool`` = ``AdaptiveAvgPool2d((1, 1))`` -> ``torch.flatten(x, 1)`` -> ``fc``
  (Linear with bias, ``512 * expansion`` inputs).

Initialisation as torchvision: convs ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")``, BatchNorm weight 1 / bias 0, ``fc`` keeps PyTorch's
default Linear init; ``zero_init_residual=True`` zeroes the last BN weight of
every block (``bn3`` in Bottleneck, ``bn2`` in BasicBlock).

Two options go beyond torchvision and change the ``conv1.weight`` shape, so a
torchvision (ImageNet) checkpoint then no longer loads (the ``conv1.weight`` shape
check fails; all other keys and shapes are unchanged):

* ``in_channels`` (default 3): ``conv1`` takes this many input channels;
* ``small_input=True``: CIFAR-style stem, ``conv1`` is 3x3 stride 1 padding 1 and
  ``maxpool`` is ``nn.Identity()`` (which has no state, so the key set stays
  torchvision's). A 32x32 input then reaches ``layer4`` at 4x4 instead of 1x1.

Parameter counts at 1000 classes, 3 input channels, standard stem (torchvision's
published numbers): ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50
25,557,032. State-dict entries (parameters and buffers): 122, 218, 320.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from ..errors import UserError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (torchvision's ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (torchvision's ``conv1x1``)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity / ``downsample`` shortcut (torchvision ``BasicBlock``)."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (with the stride, "ResNet v1.5") -> 1x1 (x4 channels) plus shortcut."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = planes  # torchvision: int(planes * base_width / 64) * groups, = planes here
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision's ``ResNet`` (see the module docstring for layout and options)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        small_input: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise UserError(f"block={block!r} must be BasicBlock or Bottleneck")
        layers = _check_layers(layers)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        _check_bool("zero_init_residual", zero_init_residual)
        _check_bool("small_input", small_input)

        self.block = block
        self.layers = layers
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.small_input = small_input
        self.zero_init_residual = zero_init_residual

        self.inplanes = 64
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            modules.append(block(self.inplanes, planes))
        return nn.Sequential(*modules)

    def stages(self) -> list[nn.Sequential]:
        """The residual stages ``layer1 .. layer4`` in order."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)


def resnet18(
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    small_input: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-18: :class:`BasicBlock` x ``[2, 2, 2, 2]`` (11,689,512 parameters at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, zero_init_residual, small_input, in_channels)


def resnet34(
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    small_input: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-34: :class:`BasicBlock` x ``[3, 4, 6, 3]`` (21,797,672 parameters at 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, zero_init_residual, small_input, in_channels)


def resnet50(
    num_classes: int = 1000,
    zero_init_residual: bool = False,
    small_input: bool = False,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-50 v1.5: :class:`Bottleneck` x ``[3, 4, 6, 3]`` (25,557,032 parameters at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, zero_init_residual, small_input, in_channels)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} must be an integer >= 1")


def _check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise UserError(f"{name}={value!r} must be true or false")


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    message = f"layers={layers!r} must be four integers >= 1 (blocks in layer1..layer4)"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise UserError(message)
    as_tuple = tuple(layers)
    if len(as_tuple) != 4 or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in as_tuple
    ):
        raise UserError(message)
    return as_tuple
