"""Small built-in datasets (no downloads): see :mod:`sparsetrain.data.digits`,
:mod:`sparsetrain.data.mnist1d` and, to load them by name, :mod:`sparsetrain.data.registry`."""

from sparsetrain.data.base import ClassificationSplit, stratified_split_indices
from sparsetrain.data.digits import load_digits_split
from sparsetrain.data.mnist1d import load_mnist1d_split
from sparsetrain.data.registry import (
    DATASETS,
    dataset_options,
    load_dataset,
    register_dataset,
)

__all__ = [
    "ClassificationSplit",
    "load_digits_split",
    "stratified_split_indices",
    "load_mnist1d_split",
    "DATASETS",
    "dataset_options",
    "load_dataset",
    "register_dataset",
]
