"""Your own classification arrays from one ``.npz`` file on disk.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test``: inputs shaped ``(N, C, L)`` or
``(N, C, H, W)`` (any float or integer dtype, used as given: normalize them beforehand) and
integer labels in ``[0, num_classes)``, shaped ``(N,)``. ``num_classes`` is ``max(label) + 1``
unless given.

Everything is checked when the file is read, before any training, and each problem is a one-line
``UserError`` that names the array and, for a bad value, its first index (in C order):

* every input and label is finite (no NaN, no inf);
* labels are integers (float labels must have integral values, e.g. ``2.0``), non-negative and
  below ``num_classes``;
* both splits hold at least one example, inputs and labels agree in count, and the two splits'
  examples have the same shape;
* arrays are numeric (no object arrays: the file is read with ``allow_pickle=False``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import UserError
from .base import ClassificationSplit

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load_npz_split(path: str, num_classes: int | None = None) -> ClassificationSplit:
    file = Path(path)
    if file.is_dir():
        raise UserError(f"dataset 'npz': path={path!r} is a directory; give the .npz file (np.savez)")
    if not file.is_file():
        raise UserError(f"dataset 'npz': path={path!r} does not exist")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UserError(f"dataset 'npz': num_classes={num_classes!r} must be an integer >= 1")
    arrays = _read(file, path)
    x_train, y_train, x_test, y_test = (arrays[k] for k in REQUIRED)
    if x_train.ndim not in (3, 4) or x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"dataset 'npz': x_train {tuple(x_train.shape)} and x_test {tuple(x_test.shape)} must be "
                        "(N, C, L) or (N, C, H, W) with equal per-example shapes")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise UserError(f"dataset 'npz': {path!r} has different numbers of inputs and labels")
    for split, inputs in (("train", x_train), ("test", x_test)):
        if len(inputs) == 0:
            raise UserError(f"dataset 'npz': the {split} split is empty (x_{split} has 0 examples); each split "
                            "needs at least one example")
    for name in REQUIRED:
        _check_finite(name, arrays[name])
    for name in ("y_train", "y_test"):
        _check_labels(name, arrays[name])
    highest = int(max(y_train.max(), y_test.max())) + 1
    classes = highest if num_classes is None else num_classes
    for name in ("y_train", "y_test"):
        labels = arrays[name]
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            i = int(bad[0])
            found = f"found {_show(labels[i])} at {name}[{i}]" if labels[i] < 0 else \
                f"found up to {highest - 1} ({name}[{i}]={_show(labels[i])})"
            raise UserError(f"dataset 'npz': labels must be in [0, {classes}), {found}")
    x_train_t, x_test_t = (torch.from_numpy(np.ascontiguousarray(x)).float() for x in (x_train, x_test))
    y_train_t, y_test_t = (torch.from_numpy(np.ascontiguousarray(y)).long() for y in (y_train, y_test))
    return ClassificationSplit(TensorDataset(x_train_t, y_train_t), TensorDataset(x_test_t, y_test_t), classes,
                               tuple(x_train_t.shape[1:]), 0.0, 1.0)


def _read(file: Path, path: str) -> dict[str, np.ndarray]:
    """The four arrays of the file, each read in full (a corrupt or pickled member fails here)."""
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"dataset 'npz': {path!r} is not a readable .npz file ({reason})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"dataset 'npz': {path!r} holds a single array (.npy), not a .npz archive of "
                        f"{', '.join(REQUIRED)} (np.savez)")
    with loaded as archive:
        missing = [k for k in REQUIRED if k not in archive.files]
        if missing:
            raise UserError(f"dataset 'npz': {path!r} lacks array {missing[0]!r} (needs {', '.join(REQUIRED)})")
        arrays = {}
        for key in REQUIRED:
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # corrupt, or an object array
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise UserError(f"dataset 'npz': array {key!r} of {path!r} cannot be read ({reason}); store "
                                "numeric arrays with np.savez") from None
    for key, array in arrays.items():
        numeric = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        if not numeric or np.issubdtype(array.dtype, np.complexfloating):
            raise UserError(f"dataset 'npz': array {key!r} has dtype {array.dtype}; valid: real numbers "
                            "(float, int or bool)")
    return arrays


def _first_index(bad: np.ndarray) -> tuple[int, ...] | int:
    """The first True position of ``bad`` in C order: an int for 1-D arrays, else a tuple."""
    flat = int(np.flatnonzero(bad)[0])
    index = tuple(int(i) for i in np.unravel_index(flat, bad.shape))
    return index[0] if len(index) == 1 else index


def _show(value: object) -> str:
    number = value.item() if isinstance(value, np.generic) else value
    return repr(number)


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        index = _first_index(bad)
        value = array[index]
        what = "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        count = int(bad.sum())
        raise UserError(f"dataset 'npz': {name} holds {what} at index {index} ({count} non-finite value"
                        f"{'s' if count > 1 else ''} in all); valid: finite numbers only")


def _check_labels(name: str, labels: np.ndarray) -> None:
    if labels.ndim != 1:
        raise UserError(f"dataset 'npz': {name} has shape {tuple(labels.shape)}; labels must be 1-D (N,), one "
                        "integer class per example")
    if np.issubdtype(labels.dtype, np.floating):
        bad = labels != np.floor(labels)
        if bad.any():
            i = _first_index(bad)
            raise UserError(f"dataset 'npz': {name} holds the non-integer label {_show(labels[i])} at index {i} "
                            f"(dtype {labels.dtype}); labels must be integers in [0, num_classes)")
