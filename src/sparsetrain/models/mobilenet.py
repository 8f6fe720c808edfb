"""MobileNet-V1 (Howard et al., 2017) in the STR / GPMT reference layout.

The module tree, parameter names, shapes and ``modules()`` order are those of the GPMT
reference's ``model_list.MobileNetV1`` (the STR-style ImageNet MobileNet-V1), so its
state dict loads strictly at ``width_mult=1.0`` and ``num_classes=1000``:

* ``model``: an ``nn.Sequential`` of 15 entries

  - ``model.0``: stem ``Sequential(Conv2d(in_channels, 32, 3, stride 2, padding 1),
    BatchNorm2d, ReLU)`` -> keys ``model.0.0.weight``, ``model.0.1.*``;
  - ``model.1`` .. ``model.13``: depthwise-separable blocks ``Sequential(3x3 depthwise
    Conv2d (groups = in channels, the block's stride, padding 1), BatchNorm2d, ReLU,
    1x1 pointwise Conv2d, BatchNorm2d, ReLU)`` -> keys ``model.i.0.weight`` (depthwise),
    ``model.i.1.*``, ``model.i.3.weight`` (pointwise), ``model.i.4.*``; output channels
    64, 128, 128, 256, 256, 512 (x6), 1024, 1024 with strides 1, 2, 1, 2, 1, 2, 1 (x5), 2, 1;
  - ``model.14``: the average pool (no state);

* ``fc``: ``nn.Linear(1024, num_classes, bias=False)`` -- a real Linear layer in the
  reference too (not a 1x1 conv), **without bias** -> key ``fc.weight`` only.

Every conv is bias-free. At ``width_mult=1.0`` and 1000 classes there are 28 prunable
layers (1 stem + 13 depthwise + 13 pointwise convs + ``fc``) holding 4,209,088 weights
(stem 864, depthwise 44,640, pointwise 3,139,584, fc 1,024,000), the GPMT note's count;
the BatchNorm parameters add 21,888 more (4,230,976 parameters in all).

Differences from the reference, none of which changes the state dict:

* the pool (``model.14``) is ``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(7)``; for
  224x224 inputs (a 7x7 final map) both are the global average, and smaller inputs work too;
* ``num_classes``, ``in_channels`` and ``width_mult`` are options (the reference fixes
  1000, 3 and 1.0). ``width_mult`` scales every width ``c`` to ``max(8, int(c * width_mult))``
  (TF-slim's ``min_depth=8`` convention); at 1.0 widths are exact.

Initialisation: PyTorch's module defaults, as in the reference (it has no custom init).
``forward`` returns logits, as the reference's does.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import nn
from ..errors import UserError

__all__ = ["MobileNetV1", "mobilenet_v1", "MOBILENET_V1_BLOCKS"]

MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
"""``(output channels, stride)`` of the 13 depthwise-separable blocks at width 1.0."""

_STEM_CHANNELS = 32


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """ImageNet MobileNet-V1 (STR/GPMT layout); maps ``(B, in_channels, H, W)`` to logits."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name}={value!r} is not a positive integer")
        if isinstance(width_mult, bool) or not isinstance(width_mult, Real) or not 0 < width_mult <= 64:
            raise UserError(f"width_mult={width_mult!r} is not a number in (0, 64]")
        self.width_mult = float(width_mult)
        self.in_channels = in_channels

        def width(c: int) -> int:
            return c if self.width_mult == 1.0 else max(8, int(c * self.width_mult))

        layers: list[nn.Module] = [_conv_bn(in_channels, width(_STEM_CHANNELS), 2)]
        channels = width(_STEM_CHANNELS)
        for out, stride in MOBILENET_V1_BLOCKS:
            layers.append(_conv_dw(channels, width(out), stride))
            channels = width(out)
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3) -> MobileNetV1:
    """:class:`MobileNetV1`; defaults give the reference's ImageNet model."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, in_channels=in_channels)
