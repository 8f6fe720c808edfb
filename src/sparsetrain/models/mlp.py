"""A plain multi-layer perceptron: flatten, then Linear + ReLU layers, then a Linear head.

For tabular or small signal data (``npz`` datasets), and for tests that need a model without
BatchNorm (data-parallel runs on CPU, where SyncBatchNorm is unavailable, then match a
single-process run up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn
from ..errors import UserError


class MLP(nn.Sequential):
    """``Flatten -> [Linear(h_i) -> ReLU]* -> Linear(num_classes)``; layers are named ``0``, ``1``, ..."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128)) -> None:
        for name, value in (("in_features", in_features), ("num_classes", num_classes), *(("hidden", h) for h in hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name}={value!r} must be an integer >= 1")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def build_mlp(*, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 128)) -> MLP:
    """:class:`MLP` over samples of ``input_shape`` (flattened)."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise UserError(f"hidden={hidden!r} must be a list of layer widths, e.g. [256, 128]")
    return MLP(math.prod(input_shape), num_classes, tuple(hidden))
