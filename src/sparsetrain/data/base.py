"""Dataset pieces shared by the readers of :mod:`sparsetrain.data`: the classification split they
return, a seeded stratified split, and the checks of the options every reader takes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from torch.utils.data import TensorDataset

from ..errors import UserError, UserOSError, os_error_message


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
    check_test_fraction(test_fraction)
    check_seed(seed)
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


def check_test_fraction(test_fraction: float) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, Real):
        raise UserError(f"test_fraction={test_fraction!r} is not a number in (0, 1)")
    if not 0.0 < test_fraction < 1.0:  # also rejects NaN
        raise UserError(f"test_fraction={test_fraction!r} is outside (0, 1)")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed={seed!r} is not an integer in [0, 2**32)")
    if not 0 <= seed < 2**32:
        raise UserError(f"seed={seed!r} is outside [0, 2**32)")


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) >= ``minimum``, else a one-line ``UserError``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise UserError(f"{name} {value!r} is not valid; expected an integer >= {minimum}")
    return int(value)


def embedded_cache_dir(option: str | None) -> Path:
    """Where an embedded dataset is written: the task option if set, else ``$SPARSETRAIN_CACHE``, else
    ``~/.cache/sparsetrain``."""
    return Path(option or os.environ.get("SPARSETRAIN_CACHE") or Path.home() / ".cache" / "sparsetrain")


def write_unsynced(path: Path, content: bytes) -> None:
    """Write ``path`` atomically (temporary file + rename, parent folders created) but without fsync: for the
    many files of a generated dataset whose manifest or index, written last with fsync, marks it complete
    (hundreds of per-file fsyncs would dominate the time). An OSError becomes a one-line ``UserOSError``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserOSError(os_error_message(exc, "write")) from None
