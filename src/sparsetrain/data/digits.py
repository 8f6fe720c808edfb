"""scikit-learn's 8x8 handwritten digits as a seeded, stratified train/test split.

Source: ``sklearn.datasets.load_digits`` (1,797 grayscale images, 10 classes, pixel
intensities are integers 0..16). The data ships inside scikit-learn; nothing is
downloaded.

Invariants of :func:`load_digits_split`:

* inputs are float32 tensors shaped ``(N, 1, 8, 8)``: pixels divided by 16 (so in
  [0, 1]), then standardised with one scalar mean and std computed on the TRAIN
  split only (the test split reuses those numbers, so nothing leaks from test);
* labels are int64 tensors shaped ``(N,)`` with values in ``0..9``;
* ``len(train) + len(test) == 1797`` and the two index sets are disjoint;
* the split is stratified per class, and every class has at least one sample in
  each split;
* the same ``seed`` gives an identical split on every call and every machine
  (numpy ``RandomState`` permutation, independent of global RNG state).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch.utils.data import TensorDataset
from ..errors import UserError

DIGITS_NUM_SAMPLES = 1797
DIGITS_NUM_CLASSES = 10
DIGITS_INPUT_SHAPE = (1, 8, 8)
DIGITS_MAX_PIXEL_VALUE = 16.0


@dataclass(frozen=True)
class ClassificationSplit:
    """A train/test pair of ``TensorDataset``s of ``(inputs float32, labels int64)``.

    ``train_mean`` and ``train_std`` are the scalar statistics (in the [0, 1]
    pixel scale) that were subtracted from / divided into both splits.
    """

    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    train_mean: float
    train_std: float


def stratified_split_indices(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(train_indices, test_indices)`` of a per-class seeded split.

    Each class ``c`` with ``n_c >= 2`` samples puts ``round(test_fraction * n_c)``
    of them in test, clamped to ``[1, n_c - 1]`` so the class appears in both
    splits. Deterministic for a given ``(labels, test_fraction, seed)``.
    """
    _check_test_fraction(test_fraction)
    _check_seed(seed)
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for class_label in np.unique(labels):
        class_indices = np.flatnonzero(labels == class_label)
        class_size = class_indices.size
        if class_size < 2:
            raise UserError(
                f"class {class_label} has {class_size} sample; need >= 2 to appear in both splits"
            )
        num_test = min(max(int(round(test_fraction * class_size)), 1), class_size - 1)
        shuffled = class_indices[rng.permutation(class_size)]
        test_parts.append(shuffled[:num_test])
        train_parts.append(shuffled[num_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> ClassificationSplit:
    """Load the digits, split them (stratified, seeded) and standardise with train stats."""
    _check_test_fraction(test_fraction)
    _check_seed(seed)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels_unit_scale = np.asarray(bunch.data, dtype=np.float64) / DIGITS_MAX_PIXEL_VALUE
    labels = np.asarray(bunch.target, dtype=np.int64)

    train_indices, test_indices = stratified_split_indices(labels, test_fraction, seed)
    train_pixels = pixels_unit_scale[train_indices]
    train_mean = float(train_pixels.mean())
    train_std = float(train_pixels.std())

    def to_dataset(indices: np.ndarray) -> TensorDataset:
        standardised = (pixels_unit_scale[indices] - train_mean) / train_std
        inputs = torch.from_numpy(standardised.astype(np.float32)).reshape(
            -1, *DIGITS_INPUT_SHAPE
        )
        return TensorDataset(inputs, torch.from_numpy(labels[indices].copy()))

    return ClassificationSplit(
        train=to_dataset(train_indices),
        test=to_dataset(test_indices),
        num_classes=DIGITS_NUM_CLASSES,
        input_shape=DIGITS_INPUT_SHAPE,
        train_mean=train_mean,
        train_std=train_std,
    )


def _check_test_fraction(test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
        raise UserError(f"test_fraction={test_fraction!r} is not a number in (0, 1)")
    if not 0.0 < test_fraction < 1.0:  # also rejects NaN
        raise UserError(f"test_fraction={test_fraction!r} is outside (0, 1)")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed={seed!r} is not an integer in [0, 2**32)")
    if not 0 <= seed < 2**32:
        raise UserError(f"seed={seed!r} is outside [0, 2**32)")
