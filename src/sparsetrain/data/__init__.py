"""Small built-in datasets (no downloads): see :mod:`sparsetrain.data.digits`."""

from sparsetrain.data.digits import (
    ClassificationSplit,
    load_digits_split,
    stratified_split_indices,
)

__all__ = ["ClassificationSplit", "load_digits_split", "stratified_split_indices"]
