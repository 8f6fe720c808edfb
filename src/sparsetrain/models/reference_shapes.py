"""Weight shapes of torchvision's ResNet-50, computed without torchvision.

:func:`resnet50_weight_shapes` lists ``(fully qualified parameter name, shape)`` for
every Conv2d and Linear ``weight`` of ``torchvision.models.resnet50()`` (Bottleneck
blocks ``[3, 4, 6, 3]``, expansion 4, base width 64, 1000 classes) in
``model.modules()`` order: ``conv1.weight``; then per bottleneck
``layerS.B.conv1/conv2/conv3.weight`` followed, in the first block of each stage, by
``layerS.B.downsample.0.weight``; ``fc.weight`` last. Conv shapes are
``(out_channels, in_channels, kH, kW)``, the Linear shape is ``(out, in)``.

Invariants: 54 entries, 25,502,912 weights in total (BN parameters and the ``fc``
bias are not weights of prunable layers and are excluded). The shapes are derived
from the architecture's arithmetic, not copied from a table, so they stay
consistent with the block structure by construction.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

RESNET50_BLOCKS_PER_STAGE = (3, 4, 6, 3)
BOTTLENECK_EXPANSION = 4
RESNET50_BASE_WIDTH = 64
RESNET50_NUM_CLASSES = 1000
RESNET50_IN_CHANNELS = 3


def _bottleneck_resnet_weight_shapes(
    blocks_per_stage: tuple[int, ...],
    base_width: int,
    expansion: int,
    in_channels: int,
    num_classes: int,
) -> list[tuple[str, tuple[int, ...]]]:
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("conv1.weight", (base_width, in_channels, 7, 7))  # stem: 7x7 stride 2, then max-pool
    ]
    block_in_channels = base_width
    for stage_index, num_blocks in enumerate(blocks_per_stage):
        # Bottleneck inner width; torchvision's groups=1, width_per_group=64 leave it at planes.
        planes = base_width * 2**stage_index
        block_out_channels = planes * expansion
        stage_stride = 1 if stage_index == 0 else 2
        for block_index in range(num_blocks):
            prefix = f"layer{stage_index + 1}.{block_index}"
            shapes.append((f"{prefix}.conv1.weight", (planes, block_in_channels, 1, 1)))
            shapes.append((f"{prefix}.conv2.weight", (planes, planes, 3, 3)))
            shapes.append((f"{prefix}.conv3.weight", (block_out_channels, planes, 1, 1)))
            stride = stage_stride if block_index == 0 else 1
            if stride != 1 or block_in_channels != block_out_channels:
                shapes.append(
                    (f"{prefix}.downsample.0.weight", (block_out_channels, block_in_channels, 1, 1))
                )
            block_in_channels = block_out_channels
    shapes.append(("fc.weight", (num_classes, block_in_channels)))
    return shapes


def resnet50_weight_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of ResNet-50's 53 conv weights and its fc weight, in module order."""
    return _bottleneck_resnet_weight_shapes(
        RESNET50_BLOCKS_PER_STAGE,
        base_width=RESNET50_BASE_WIDTH,
        expansion=BOTTLENECK_EXPANSION,
        in_channels=RESNET50_IN_CHANNELS,
        num_classes=RESNET50_NUM_CLASSES,
    )


def resnet50_random_weights(
    seed: int = 0, dtype: torch.dtype = torch.float32
) -> list[tuple[str, torch.Tensor]]:
    """Kaiming-normal-like random tensors for every ResNet-50 weight (std = sqrt(2 / fan_in)).

    ``fan_in`` is the product of all dimensions but the first. Values are drawn in
    float32 from a CPU ``torch.Generator`` seeded with ``seed`` (global RNG state is
    neither read nor changed), then cast to ``dtype``; so the same seed gives the
    same values, up to rounding, for every floating ``dtype``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r} must be an integer >= 0")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"dtype={dtype!r} must be a floating-point torch.dtype")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights: list[tuple[str, torch.Tensor]] = []
    for name, shape in resnet50_weight_shapes():
        fan_in = math.prod(shape[1:])
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        values.mul_(math.sqrt(2.0 / fan_in))
        weights.append((name, values.to(dtype)))
    return weights
