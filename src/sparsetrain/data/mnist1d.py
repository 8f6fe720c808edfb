"""MNIST-1D (Greydanus 2020) generated in memory as a seeded train/test split.

Source: the ``mnist1d`` package's generator, ``mnist1d.data.make_dataset``, which
builds every sample from 10 fixed 1-D digit templates (pad, dilate, scale,
translate, correlated + iid noise, shear, resample to 40 points). Only
``make_dataset`` is used: ``mnist1d.data.get_dataset`` would read / write
``./mnist1d_data.pkl`` and may download, so it is never called. Nothing touches the
network or the file system.

Invariants of :func:`load_mnist1d_split`:

* the defaults (``num_samples=5000, test_fraction=0.2, seed=42``) give the package's
  default data set: 4,000 train / 1,000 test samples, the same samples in the same
  order as ``make_dataset(get_dataset_args())``;
* ``num_samples`` is a multiple of 10 (the generator makes ``num_samples // 10``
  samples per class); the package shuffles all samples, then the first
  ``num_samples - num_test`` form train and the rest test, with
  ``num_test = round(test_fraction * num_samples)`` clamped to
  ``[1, num_samples - 1]``. The split is NOT stratified (as in the package), so
  per-class counts vary a little;
* inputs are float32 tensors shaped ``(N, 1, 40)``, standardised with one scalar
  mean and std computed on the TRAIN split only (the test split reuses them);
  ``train_mean`` / ``train_std`` are in the scale of the generator's output (which
  the package itself already centres on the whole data set, so they are near 0 / 1);
* labels are int64 tensors shaped ``(N,)`` with values in ``0..9``;
* the same arguments give identical tensors on every call; different seeds give
  different data. Python's and numpy's global RNG states are restored after
  generation (the generator reseeds them), so loading does not disturb callers;
* generation (about 1.5 s for 5,000 samples) is cached in-process per generator
  arguments; the cache holds read-only numpy arrays and every call returns fresh
  tensors, so mutating a returned tensor never changes a later load.
"""

from __future__ import annotations

import functools
import math
import random
from numbers import Real

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import ClassificationSplit, check_seed as _check_seed, check_test_fraction as _check_test_fraction
from ..errors import UserError

MNIST1D_NUM_CLASSES = 10
MNIST1D_SEQUENCE_LENGTH = 40
MNIST1D_INPUT_SHAPE = (1, MNIST1D_SEQUENCE_LENGTH)
MNIST1D_MIN_SAMPLES = 2 * MNIST1D_NUM_CLASSES
_GENERATION_CACHE_SIZE = 8


def load_mnist1d_split(
    num_samples: int = 5000,
    test_fraction: float = 0.2,
    seed: int = 42,
    *,
    corr_noise_scale: float = 0.25,
    iid_noise_scale: float = 0.02,
    shear_scale: float = 0.75,
    shuffle_seq: bool = False,
) -> ClassificationSplit:
    """Generate MNIST-1D, split it train/test and standardise with train statistics.

    ``corr_noise_scale``, ``iid_noise_scale``, ``shear_scale`` and ``shuffle_seq``
    are passed to the generator (defaults are the package's); larger noise / shear
    makes the task harder, ``shuffle_seq=True`` permutes the 40 positions (one fixed,
    seeded permutation for all samples).
    """
    _check_num_samples(num_samples)
    _check_test_fraction(test_fraction)
    _check_seed(seed)
    _check_nonnegative("corr_noise_scale", corr_noise_scale)
    _check_nonnegative("iid_noise_scale", iid_noise_scale)
    _check_nonnegative("shear_scale", shear_scale)
    if not isinstance(shuffle_seq, (bool, np.bool_)):
        raise UserError(f"shuffle_seq={shuffle_seq!r} is not a bool (True or False)")

    signals, labels = _generate(
        int(num_samples),
        int(seed),
        float(corr_noise_scale),
        float(iid_noise_scale),
        float(shear_scale),
        bool(shuffle_seq),
    )
    num_test = min(max(int(round(test_fraction * num_samples)), 1), num_samples - 1)
    num_train = num_samples - num_test

    train_mean = float(signals[:num_train].mean())
    train_std = float(signals[:num_train].std())

    def to_dataset(rows: slice) -> TensorDataset:
        standardised = ((signals[rows] - train_mean) / train_std).astype(np.float32)
        inputs = torch.from_numpy(standardised).reshape(-1, *MNIST1D_INPUT_SHAPE)
        return TensorDataset(inputs, torch.from_numpy(labels[rows].copy()))

    return ClassificationSplit(
        train=to_dataset(slice(0, num_train)),
        test=to_dataset(slice(num_train, num_samples)),
        num_classes=MNIST1D_NUM_CLASSES,
        input_shape=MNIST1D_INPUT_SHAPE,
        train_mean=train_mean,
        train_std=train_std,
    )


@functools.lru_cache(maxsize=_GENERATION_CACHE_SIZE)
def _generate(
    num_samples: int,
    seed: int,
    corr_noise_scale: float,
    iid_noise_scale: float,
    shear_scale: float,
    shuffle_seq: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """All ``num_samples`` signals (float64, ``(N, 40)``) and labels (int64), read-only.

    Generated with ``train_split=1.0`` so the split is done by the caller; the
    generator's own shuffle and global centring are unchanged, so the first
    ``int(0.8 * N)`` rows are exactly the package's default train split.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (scipy, matplotlib)

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = 1.0
    args.seed = seed
    args.corr_noise_scale = corr_noise_scale
    args.iid_noise_scale = iid_noise_scale
    args.shear_scale = shear_scale
    args.shuffle_seq = shuffle_seq
    args.final_seq_length = MNIST1D_SEQUENCE_LENGTH
    args.url = None  # make_dataset never downloads; make sure nothing could

    python_rng_state = random.getstate()
    numpy_rng_state = np.random.get_state()
    try:
        dataset = make_dataset(args)
    finally:
        random.setstate(python_rng_state)
        np.random.set_state(numpy_rng_state)

    signals = np.array(dataset["x"], dtype=np.float64)
    labels = np.array(dataset["y"], dtype=np.int64)
    if signals.shape != (num_samples, MNIST1D_SEQUENCE_LENGTH) or labels.shape != (num_samples,):
        raise RuntimeError(
            f"mnist1d generator returned x{signals.shape}, y{labels.shape};"
            f" expected ({num_samples}, {MNIST1D_SEQUENCE_LENGTH}) and ({num_samples},)"
        )
    signals.setflags(write=False)
    labels.setflags(write=False)
    return signals, labels


def _check_num_samples(num_samples: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise UserError(
            f"num_samples={num_samples!r} is not an integer multiple of 10 >= {MNIST1D_MIN_SAMPLES}"
        )
    if num_samples < MNIST1D_MIN_SAMPLES or num_samples % MNIST1D_NUM_CLASSES != 0:
        raise UserError(
            f"num_samples={num_samples!r} is not a multiple of 10 in [{MNIST1D_MIN_SAMPLES}, inf)"
            " (the generator makes num_samples // 10 samples per class)"
        )


def _check_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise UserError(f"{name}={value!r} is not a finite number in [0, inf)")
    if value < 0:
        raise UserError(f"{name}={value!r} is outside [0, inf)")
