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

from sparsetrain.options import check_options, keyword_options
from sparsetrain.data.cifar10 import load_cifar10_split
from sparsetrain.data.digits import ClassificationSplit, load_digits_split
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
    """Call the loader registered as ``name`` with ``options`` (checked by name first)."""
    loader = _lookup(name)
    check_options("dataset", name, loader, options)
    return loader(**options)


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
