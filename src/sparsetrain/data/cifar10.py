"""CIFAR-10 from the official "python version" batches on disk; nothing is downloaded.

``root`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (and optionally
``batches.meta``), or is the folder that contains the extracted ``cifar-10-batches-py``. Each
batch is a pickled dict with ``b"data"``: uint8 ``(N, 3072)`` (1024 red, then 1024 green, then
1024 blue values of a row-major 32x32 image) and ``b"labels"``: N integers in ``0..9``.

Invariants of :func:`load_cifar10_split`:

* train is the five data batches in order (50,000 images for the real set), test is
  ``test_batch`` (10,000); items are float32 ``(3, 32, 32)`` and 0-dim int64 labels;
* train items go through :func:`~sparsetrain.data.transforms.cifar10_train_transform` (reflect-pad
  4, random 32x32 crop, horizontal flip, normalisation), test items through
  :func:`~sparsetrain.data.transforms.cifar10_eval_transform` (normalisation only), with the GPMT
  constants ``CIFAR10_MEAN`` / ``CIFAR10_STD`` per channel; the split's ``train_mean`` /
  ``train_std`` are therefore ``0.0`` / ``1.0``;
* a missing file or a malformed batch raises a one-line ``ValueError`` naming the file.

The batches are Python pickles, as distributed. They are read by
:class:`~sparsetrain.safe_pickle.RestrictedUnpickler`, which builds only containers, bytes, numbers
and numpy arrays; a batch naming any other global is refused and nothing in it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import ClassificationSplit
from .transforms import cifar10_eval_transform, cifar10_train_transform
from ..errors import UserError
from ..safe_pickle import UnsafePickleError, restricted_load

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_SUBFOLDER = "cifar-10-batches-py"
CIFAR10_NUM_CLASSES = 10
CIFAR10_INPUT_SHAPE = (3, 32, 32)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

__all__ = ["CIFAR10_CLASSES", "Cifar10Dataset", "load_cifar10_split", "read_cifar10_batch"]


class Cifar10Dataset(Dataset):
    """``(transform(PIL RGB image), label)`` over uint8 ``images`` ``(N, 32, 32, 3)`` and ``labels`` ``(N,)``.

    Without a transform, items are ``(PIL.Image, int64 tensor)``. ``classes`` are the label names.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], Any] | None = None,
                 classes: tuple[str, ...] = CIFAR10_CLASSES):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise UserError(f"CIFAR-10 images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise UserError(f"CIFAR-10 labels {labels.shape} do not match {images.shape[0]} images")
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.targets = self.labels.tolist()
        self.transform = transform
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        image = Image.fromarray(self.images[index])
        item = self.transform(image) if self.transform is not None else image
        return item, torch.tensor(self.labels[index], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"Cifar10Dataset(samples={len(self)}, transform={self.transform!r})"


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of one pickled CIFAR-10 batch file."""
    batch = _unpickle(path)
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if data is None or labels is None:
        raise UserError(f"CIFAR-10 batch {str(path)!r} lacks b'data' or b'labels' (keys: {_keys(batch)})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"CIFAR-10 batch {str(path)!r}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"CIFAR-10 batch {str(path)!r}: labels are not integers") from None
    if label_array.shape != (data.shape[0],):
        raise UserError(f"CIFAR-10 batch {str(path)!r}: {label_array.size} labels for {data.shape[0]} images")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= CIFAR10_NUM_CLASSES):
        raise UserError(f"CIFAR-10 batch {str(path)!r}: labels must be in 0..{CIFAR10_NUM_CLASSES - 1}, found "
                         f"{int(label_array.min())}..{int(label_array.max())}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), label_array


def load_cifar10_split(root: str) -> ClassificationSplit:
    """The five train batches (augmented) and the test batch (normalised only) under ``root``."""
    folder = _batch_folder(Path(str(root)))
    try:
        train_parts = [read_cifar10_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
        test_images, test_labels = read_cifar10_batch(folder / CIFAR10_TEST_BATCH)
        classes = _class_names(folder / CIFAR10_META)
    except ValueError as exc:
        raise UserError(f"dataset 'cifar10': {exc}") from None
    train_images = np.concatenate([images for images, _ in train_parts])
    train_labels = np.concatenate([labels for _, labels in train_parts])
    return ClassificationSplit(
        train=Cifar10Dataset(train_images, train_labels, cifar10_train_transform(), classes),
        test=Cifar10Dataset(test_images, test_labels, cifar10_eval_transform(), classes),
        num_classes=CIFAR10_NUM_CLASSES,
        input_shape=CIFAR10_INPUT_SHAPE,
        train_mean=0.0,
        train_std=1.0,
    )


def _batch_folder(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(f"dataset 'cifar10': root {str(root)!r} is not a directory")
    nested = root / CIFAR10_SUBFOLDER
    if not (root / CIFAR10_TRAIN_BATCHES[0]).exists() and nested.is_dir():
        root = nested
    for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH):
        if not (root / name).is_file():
            raise UserError(f"dataset 'cifar10': missing batch file {str(root / name)!r} (needs "
                             f"{', '.join(CIFAR10_TRAIN_BATCHES)}, {CIFAR10_TEST_BATCH})")
    return root


def _class_names(meta_path: Path) -> tuple[str, ...]:
    if not meta_path.is_file():
        return CIFAR10_CLASSES
    names = _field(_unpickle(meta_path), "label_names")
    if not isinstance(names, (list, tuple)) or len(names) != CIFAR10_NUM_CLASSES:
        raise UserError(f"CIFAR-10 meta {str(meta_path)!r} lacks {CIFAR10_NUM_CLASSES} b'label_names'")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def _unpickle(path: str | os.PathLike[str]) -> dict[Any, Any]:
    try:
        with open(path, "rb") as handle:
            batch = restricted_load(handle, f"CIFAR-10 file {str(path)!r}", encoding="bytes")
    except UnsafePickleError:
        raise
    except Exception as exc:  # unpickling garbage can raise almost anything
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"CIFAR-10 file {str(path)!r} is not a readable pickle ({reason})") from None
    if not isinstance(batch, dict):
        raise UserError(f"CIFAR-10 file {str(path)!r} holds a {type(batch).__name__}, not a dict")
    return batch


def _field(batch: dict[Any, Any], name: str) -> Any:
    """``batch[b"name"]``, or ``batch["name"]`` for batches re-pickled with str keys."""
    return batch.get(name.encode(), batch.get(name))


def _keys(batch: dict[Any, Any]) -> str:
    return ", ".join(repr(k) for k in list(batch)[:8]) or "none"
