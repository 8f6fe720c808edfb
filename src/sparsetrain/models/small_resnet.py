"""A small ResNet-style CNN with torchvision's module names, for 1-D signals or 2-D images.

Layout (torchvision naming, so pruning code written for ResNet-50 finds the same keys):

* ``conv1`` (3-wide kernel, stride 1, ``width`` channels) -> ``bn1`` -> ReLU;
* stages ``layer1 .. layerN`` (``N = len(blocks_per_stage)``); stage ``i`` (1-based)
  has ``width * 2**(i-1)`` channels, stride 1 for ``layer1`` and 2 for later stages;
  each stage is an ``nn.Sequential`` of :class:`BasicBlock` (``conv1``, ``bn1``,
  ``conv2``, ``bn2`` and, when the block changes channels or stride,
  ``downsample = Sequential(1-wide conv with the block's stride, BN)``);
* global average pooling -> flatten -> ``fc`` (Linear with bias).

Invariants: every conv has ``bias=False`` and Kaiming-normal weights
(``fan_out``, ReLU gain); BN starts at weight 1, bias 0. Input is
``(batch, in_channels, length)`` for ``dim=1`` and ``(batch, in_channels, H, W)``
for ``dim=2``; output is ``(batch, num_classes)`` logits. There is no max-pool, so
an 8x8 image reaches the head at 2x2 with three stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from ..errors import UserError

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d}
_BATCHNORM_BY_DIM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_AVGPOOL_BY_DIM = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class BasicBlock(nn.Module):
    """Two 3-wide convs with a residual connection (torchvision ``BasicBlock`` layout)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dim: int = 2):
        super().__init__()
        _check_dim(dim)
        conv, batchnorm = _CONV_BY_DIM[dim], _BATCHNORM_BY_DIM[dim]
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = batchnorm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = batchnorm(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False),
                batchnorm(out_channels),
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """Stem + ``len(blocks_per_stage)`` stages of :class:`BasicBlock` + pooled linear head."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        blocks_per_stage: Sequence[int] = (1, 1, 1),
        dim: int = 2,
    ):
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("width", width)
        _check_dim(dim)
        blocks_per_stage = _check_blocks_per_stage(blocks_per_stage)

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width
        self.blocks_per_stage = blocks_per_stage
        self.dim = dim
        self.num_stages = len(blocks_per_stage)

        conv, batchnorm = _CONV_BY_DIM[dim], _BATCHNORM_BY_DIM[dim]
        self.conv1 = conv(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = batchnorm(width)
        self.relu = nn.ReLU(inplace=True)

        stage_in_channels = width
        for stage_index, num_blocks in enumerate(blocks_per_stage):
            stage_channels = width * 2**stage_index
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(
                    BasicBlock(
                        stage_in_channels if block_index == 0 else stage_channels,
                        stage_channels,
                        stride=first_stride if block_index == 0 else 1,
                        dim=dim,
                    )
                )
            self.add_module(f"layer{stage_index + 1}", nn.Sequential(*blocks))
            stage_in_channels = stage_channels

        self.avgpool = _AVGPOOL_BY_DIM[dim](1)
        self.fc = nn.Linear(stage_in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[nn.Sequential]:
        """The residual stages ``layer1 .. layerN`` in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected_rank = self.dim + 2
        if x.dim() != expected_rank:
            raise UserError(
                f"input has shape {tuple(x.shape)}; dim={self.dim} expects {expected_rank} axes"
                f" (batch, {self.in_channels} channels, {'length' if self.dim == 1 else 'H, W'})"
            )
        out = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            out = stage(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


def small_resnet(
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 16,
    blocks_per_stage: Sequence[int] = (1, 1, 1),
    dim: int = 2,
) -> SmallResNet:
    """Build a :class:`SmallResNet`; ``dim=1`` for signals (e.g. MNIST-1D), 2 for images."""
    return SmallResNet(
        in_channels=in_channels,
        num_classes=num_classes,
        width=width,
        blocks_per_stage=blocks_per_stage,
        dim=dim,
    )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} must be an integer >= 1")


def _check_dim(dim: int) -> None:
    if isinstance(dim, bool) or dim not in (1, 2):
        raise UserError(f"dim={dim!r} must be 1 (Conv1d) or 2 (Conv2d)")


def _check_blocks_per_stage(blocks_per_stage: Sequence[int]) -> tuple[int, ...]:
    message = f"blocks_per_stage={blocks_per_stage!r} must be a non-empty sequence of integers >= 1"
    if isinstance(blocks_per_stage, (str, bytes)) or not isinstance(blocks_per_stage, Sequence):
        raise UserError(message)
    as_tuple = tuple(blocks_per_stage)
    if not as_tuple or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in as_tuple
    ):
        raise UserError(message)
    return as_tuple
