"""Wide ResNet (Zagoruyko & Komodakis, 2016) in the GPMT reference layout.

This follows the WRN of the GPMT reference code (``model_list.WideResNet(depth,
widen_factor, num_classes, dropRate)``, itself the common PyTorch port of the
original Lua code), with the same module tree, parameter names, shapes,
initialisation and ``modules()`` order, so a reference state dict loads strictly:

* ``conv1``: 3x3 stem conv, ``in_channels`` -> 16, stride 1, padding 1, no bias;
* ``block1``, ``block2``, ``block3``: each a :class:`NetworkBlock` whose ``layer`` is an
  ``nn.Sequential`` of ``(depth - 4) // 6`` pre-activation :class:`WideBasicBlock`
  with output widths ``16k``, ``32k``, ``64k`` (``k = widen_factor``); the first block
  of a group has stride 1, 2, 2 respectively;
* each block: ``bn1`` -> ReLU -> ``conv1`` (3x3, the block's stride) -> ``bn2`` -> ReLU ->
  dropout(``drop_rate``, functional, training only) -> ``conv2`` (3x3, stride 1), plus
  the shortcut: identity when in and out widths are equal, otherwise ``convShortcut``
  (1x1, the block's stride, no bias). When widths differ, the shortcut conv reads the
  *activated* input ``relu(bn1(x))``, as in the reference. All convs are bias-free;
* head: ``bn1`` -> ReLU -> global average pool -> ``fc`` (Linear with bias).

Keys, e.g. for WRN-28-8: ``conv1.weight``; ``block1.layer.0.bn1.*``,
``block1.layer.0.conv1.weight``, ``block1.layer.0.bn2.*``, ``block1.layer.0.conv2.weight``,
``block1.layer.0.convShortcut.weight`` (first block of each group only) ... up to
``block3.layer.3.conv2.weight``; ``bn1.*``; ``fc.weight``, ``fc.bias``.
Prunable-layer (Conv2d/Linear) ``modules()`` order inside a block: ``conv1``, ``conv2``,
``convShortcut``.

WRN-28-8 at 10 classes: 29 Conv2d/Linear layers holding 23,340,464 weights (the
GPMT note's count); the three smallest are the stem ``conv1`` (432), the first
shortcut ``block1.layer.0.convShortcut`` (2,048) and ``fc`` (5,120).

Two deliberate differences from the reference, neither touching the state dict:

* ``forward`` returns plain **logits**; the reference returns ``log_softmax``. Cross-entropy
  on logits equals NLL on log-softmax outputs (and log_softmax is idempotent), so training
  and accuracy are unaffected; apply ``log_softmax`` yourself if log-probabilities are wanted.
* The reference pools with ``avg_pool2d(out, 8)``, which for 32x32 inputs (an 8x8 final map)
  is the global average; here the pool is global for any input size (same result at 32x32).

Initialisation as the reference: convs ``normal(0, sqrt(2 / (k*k*out_channels)))``,
BatchNorm weight 1 / bias 0, ``fc`` PyTorch's default weight init with a zero bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import UserError

__all__ = ["NetworkBlock", "WideBasicBlock", "WideResNet", "wide_resnet"]


class WideBasicBlock(nn.Module):
    """Pre-activation 3x3/3x3 block with dropout between the convs (reference ``BasicBlock_WRN``)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        # Registration order fixes modules() order: conv1, conv2, convShortcut.
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Conv2d | None = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(activated) + out


class NetworkBlock(nn.Module):
    """A group of ``num_blocks`` :class:`WideBasicBlock`; only the first changes width/stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR-sized images; ``forward`` returns logits."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 8,
        num_classes: int = 10,
        drop_rate: float = 0.3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for name, value, low in (("depth", depth, 10), ("widen_factor", widen_factor, 1),
                                 ("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name}={value!r} is not an integer >= {low}")
        if (depth - 4) % 6 != 0:
            raise UserError(f"depth={depth!r} is not 6n + 4 (e.g. 16, 22, 28, 40)")
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise UserError(f"drop_rate={drop_rate!r} is not a number in [0, 1)")
        self.depth = depth
        self.widen_factor = widen_factor
        self.drop_rate = float(drop_rate)
        self.in_channels = in_channels
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, self.drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, self.drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, self.drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def wide_resnet(
    depth: int = 28, widen_factor: int = 8, num_classes: int = 10, drop_rate: float = 0.3, in_channels: int = 3
) -> WideResNet:
    """WRN-``depth``-``widen_factor``; defaults give the GPMT reference's WRN-28-8 (dropout 0.3)."""
    return WideResNet(depth, widen_factor, num_classes, drop_rate, in_channels)
