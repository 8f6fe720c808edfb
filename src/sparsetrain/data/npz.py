"""Your own classification arrays from one ``.npz`` file on disk.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test``: inputs shaped ``(N, C, L)`` or
``(N, C, H, W)`` (any float or integer dtype, used as given: normalize them beforehand) and
integer labels in ``[0, num_classes)``. ``num_classes`` is ``max(label) + 1`` unless given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .digits import ClassificationSplit
from ..errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load_npz_split(path: str, num_classes: int | None = None) -> ClassificationSplit:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"dataset 'npz': path={path!r} does not exist")
    try:
        arrays = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"dataset 'npz': {path!r} is not a readable .npz file ({exc})") from None
    missing = [k for k in REQUIRED if k not in arrays.files]
    if missing:
        raise UserError(f"dataset 'npz': {path!r} lacks array {missing[0]!r} (needs {', '.join(REQUIRED)})")
    x_train, x_test = (torch.as_tensor(arrays[k]).float() for k in ("x_train", "x_test"))
    y_train, y_test = (torch.as_tensor(arrays[k]).long() for k in ("y_train", "y_test"))
    if x_train.dim() not in (3, 4) or x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"dataset 'npz': x_train {tuple(x_train.shape)} and x_test {tuple(x_test.shape)} must be "
                         "(N, C, L) or (N, C, H, W) with equal per-example shapes")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise UserError(f"dataset 'npz': {path!r} has different numbers of inputs and labels")
    highest = int(max(y_train.max(), y_test.max())) + 1
    classes = highest if num_classes is None else num_classes
    if int(min(y_train.min(), y_test.min())) < 0 or highest > classes:
        raise UserError(f"dataset 'npz': labels must be in [0, {classes}), found up to {highest - 1}")
    return ClassificationSplit(TensorDataset(x_train, y_train), TensorDataset(x_test, y_test), classes,
                               tuple(x_train.shape[1:]), 0.0, 1.0)
