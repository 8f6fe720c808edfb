"""Datasets by name, so configs can say ``dataset: mnist1d`` plus keyword options.

A loader is any callable returning a :class:`ClassificationSplit` whose options are
keyword arguments (a later reader for files on disk would take e.g. ``root``).
:func:`load_dataset` checks option names against the loader's signature before
calling it, so a typo in a config fails with a one-line message listing the valid
options instead of a ``TypeError`` from deep inside the loader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.utils.data import TensorDataset

from sparsetrain.options import check_options, keyword_options
from sparsetrain.data.cifar10 import load_cifar10_split
from sparsetrain.data.base import ClassificationSplit
from sparsetrain.data.digits import load_digits_split
from sparsetrain.data.imagenet import load_imagenet_split
from sparsetrain.data.mnist1d import load_mnist1d_split
from sparsetrain.data.npz import load_npz_split
from ..errors import UserError

DatasetLoader = Callable[..., ClassificationSplit]
_Loader = TypeVar("_Loader", bound=DatasetLoader)

DATASETS: dict[str, DatasetLoader] = {
    "cifar10": load_cifar10_split,
    "digits": load_digits_split,
    "imagenet": load_imagenet_split,
    "mnist1d": load_mnist1d_split,
    "npz": load_npz_split,
}


def register_dataset(
    name: str, loader: _Loader | None = None, *, replace: bool = False
) -> Any:
    """Add ``loader`` to :data:`DATASETS` under ``name``; returns ``loader``.

    Without ``loader`` it returns a decorator::

        @register_dataset("cifar10")
        def load_cifar10_split(root: str, seed: int = 0) -> ClassificationSplit: ...

    An existing name raises ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name {name!r} is not a non-empty string")
    if name in DATASETS and not replace:
        raise UserError(f"dataset {name!r} is already registered (pass replace=True to override)")

    def add(fn: _Loader) -> _Loader:
        if not callable(fn):
            raise UserError(f"dataset {name!r} loader {fn!r} is not callable")
        DATASETS[name] = fn
        return fn

    return add if loader is None else add(loader)


def dataset_options(name: str) -> tuple[str, ...]:
    """The keyword options that dataset ``name`` accepts, in signature order."""
    return keyword_options(_lookup(name))[0]


def load_dataset(name: str, **options: Any) -> ClassificationSplit:
    """Call the loader registered as ``name`` with ``options`` (checked by name first), then check its result.

    Every split must hold at least one example and ``num_classes`` must be an integer >= 1; for
    in-memory splits (``TensorDataset`` of inputs and labels, as the built-in small datasets and
    ``npz`` give) the labels must be integers in ``[0, num_classes)`` and float inputs finite. A
    problem is a one-line ``UserError`` naming the dataset, the split and the first bad index.
    """
    loader = _lookup(name)
    check_options("dataset", name, loader, options)
    split = loader(**options)
    check_split(name, split)
    return split


def check_split(name: str, split: ClassificationSplit) -> None:
    """Raise ``UserError`` if ``split`` (the result of dataset ``name``'s loader) cannot be trained on."""
    classes = split.num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise UserError(f"dataset {name!r}: num_classes={classes!r} must be an integer >= 1")
    for role, data in (("train", split.train), ("test", split.test)):
        if len(data) == 0:
            raise UserError(f"dataset {name!r}: the {role} split is empty (0 examples); each split needs at "
                            "least one example")
        if isinstance(data, TensorDataset) and len(data.tensors) == 2:
            inputs, labels = data.tensors
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise UserError(f"dataset {name!r}: {role} labels have dtype {labels.dtype}; labels must be "
                                f"integers in [0, {classes})")
            bad = (labels < 0) | (labels >= classes)
            if bool(bad.any()):
                i = int(bad.nonzero()[0][0])
                raise UserError(f"dataset {name!r}: labels must be in [0, {classes}), found {int(labels[i])} at "
                                f"{role} example {i}")
            if inputs.is_floating_point():
                finite = torch.isfinite(inputs.reshape(len(inputs), -1)).all(dim=1)
                if not bool(finite.all()):
                    i = int((~finite).nonzero()[0][0])
                    raise UserError(f"dataset {name!r}: {role} example {i} holds NaN or inf; inputs must be finite")


def _lookup(name: str) -> DatasetLoader:
    if not isinstance(name, str) or name not in DATASETS:
        raise UserError(f"dataset {name!r} is not one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


# Sizes of the datasets read from disk, so that ``sparsetrain plan`` can lay out a paper-scale run
# on a machine that does not hold the data: (train examples, test examples, classes).
DATASET_FACTS: dict[str, tuple[int, int, int]] = {
    "imagenet": (1_281_167, 50_000, 1000),
    "cifar10": (50_000, 10_000, 10),
}


def dataset_facts(name: str, **options: Any) -> tuple[int, int, tuple[int, ...], int] | None:
    """``(train size, test size, input shape, classes)`` of a dataset known without reading it, else None."""
    if name not in DATASET_FACTS:
        return None
    train, test, classes = DATASET_FACTS[name]
    side = int(options.get("image_size", 224)) if name == "imagenet" else 32
    return train, test, (3, side, side), classes
