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

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import ClassificationSplit, check_seed, check_test_fraction, stratified_split_indices

__all__ = ["ClassificationSplit", "load_digits_split", "stratified_split_indices"]

DIGITS_NUM_SAMPLES = 1797
DIGITS_NUM_CLASSES = 10
DIGITS_INPUT_SHAPE = (1, 8, 8)
DIGITS_MAX_PIXEL_VALUE = 16.0


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> ClassificationSplit:
    """Load the digits, split them (stratified, seeded) and standardise with train stats."""
    check_test_fraction(test_fraction)
    check_seed(seed)
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
