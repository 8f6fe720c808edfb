"""The sparsity engine: targets, masks, exact magnitude selection, budgets, one-shot pruning,
N:M and block patterns (``patterns``).

It imports torch (and numpy for bit packing) and nothing from sparsetrain's upper layers, so it
can be used inside any training loop.
"""

from .budgets import (
    count_for,
    erk_counts,
    global_counts,
    max_min_threshold_sparsity,
    min_threshold_counts,
    min_threshold_floor,
    per_tensor_counts,
    profile_counts,
    uniform_counts,
)
from .errors import SparsityError
from .masks import LayerSparsity, MaskSet
from .partitions import (
    PRESETS,
    SCHEMES,
    Partition,
    format_partitions,
    norm_feeders,
    ownership,
    partition_owner,
    partition_targets,
    split_block_notes,
    split_blocks,
)
from .patterns import Pattern, PatternWarning, parse_pattern, pattern_counts, pattern_masks
from .prune import METHODS, prune
from .random_masks import random_masks
from .selection import (
    Threshold,
    find_threshold,
    masks_from_threshold,
    per_tensor_smallest_magnitude_masks,
    pruned_counts_from_threshold,
    smallest_magnitude_masks,
)
from .sparsifier import Sparsifier
from .targets import DEFAULT_TARGET_TYPES, Target, select_targets

__all__ = [
    "DEFAULT_TARGET_TYPES",
    "METHODS",
    "PRESETS",
    "SCHEMES",
    "Partition",
    "Pattern",
    "PatternWarning",
    "LayerSparsity",
    "MaskSet",
    "Sparsifier",
    "SparsityError",
    "Target",
    "Threshold",
    "count_for",
    "erk_counts",
    "find_threshold",
    "format_partitions",
    "norm_feeders",
    "ownership",
    "partition_owner",
    "partition_targets",
    "parse_pattern",
    "pattern_counts",
    "pattern_masks",
    "split_block_notes",
    "split_blocks",
    "random_masks",
    "global_counts",
    "masks_from_threshold",
    "max_min_threshold_sparsity",
    "min_threshold_counts",
    "min_threshold_floor",
    "per_tensor_counts",
    "per_tensor_smallest_magnitude_masks",
    "profile_counts",
    "prune",
    "pruned_counts_from_threshold",
    "select_targets",
    "smallest_magnitude_masks",
    "uniform_counts",
]
