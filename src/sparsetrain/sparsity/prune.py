"""One-shot pruning: ``prune(model, sparsity, method=...)`` zeroes weights in place, returns masks.

Methods (see ``budgets`` for the exact definitions):

- ``"gp"``: global magnitude pruning, one threshold over all targets.
- ``"gpmt"``: GP with a minimum threshold; ``min_threshold`` is a percentage of all target
  weights (default 0.05, the reference code's default). Each layer is then pruned by its own
  magnitude ranking to its budget, as in the reference's final stage.
- ``"uniform"``: every target at the same sparsity, each by its own magnitude ranking.
- ``"erk"``: RigL's Erdős–Rényi-Kernel distribution, each layer by magnitude.
- ``"profile"``: ``sparsity`` is a mapping ``{name regex: sparsity}``.
- ``"random"``: every target at ``sparsity``, positions drawn with ``seed`` (the sanity floor).

Exactly the budgeted number of weights is pruned; ties are broken by position.

``pattern`` (``"N:M"`` or ``"RxC"`` blocks, see ``patterns``) makes the pruning structured; it
works with ``gp`` and ``uniform`` (and ``erk`` for blocks). With ``"N:M"`` ``sparsity`` may be
omitted (it is ``1 - N/M``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from torch import nn

from . import budgets
from .errors import SparsityError, check_sparsity
from .masks import MaskSet
from .patterns import check_pattern_method, check_pattern_sparsity, parse_pattern, pattern_masks
from .random_masks import random_masks
from .selection import per_tensor_smallest_magnitude_masks, smallest_magnitude_masks
from .targets import Selector, Target, parameter_count, select_targets

METHODS = ("gp", "gpmt", "uniform", "erk", "profile", "random")
DEFAULT_MIN_THRESHOLD = 0.05
"""Percent of all target weights, the GPMT reference code's default."""


def prune(
    model: nn.Module,
    sparsity: float | Mapping[str, float] | None = None,
    method: str = "gp",
    min_threshold: float | None = None,
    include: Selector | Iterable[Selector] | None = None,
    exclude: Selector | Iterable[Selector] | None = None,
    seed: int = 0,
    pattern: str | None = None,
) -> MaskSet:
    """Prune ``model`` in place to ``sparsity`` (fraction of target weights in [0, 1)).

    Weights already at zero count like any other magnitude, so a sparse model can be pruned further.
    ``pattern``: ``"N:M"`` or ``"RxC"`` structured pruning (module ``patterns``); ``sparsity`` may be
    omitted for N:M and must otherwise equal ``1 - N/M``; with blocks it is the fraction of blocks.
    """
    if method not in METHODS:
        raise SparsityError(f"method={method!r} is not one of {', '.join(METHODS)}")
    if pattern is not None:
        parsed = parse_pattern(pattern)
        check_pattern_method(parsed, method)
        sparsity = check_pattern_sparsity(parsed, sparsity)  # type: ignore[arg-type]
    elif sparsity is None:
        raise SparsityError("sparsity=None: give a sparsity in [0, 1) (it may be omitted only with an N:M pattern)")
    if min_threshold is not None and method != "gpmt":
        raise SparsityError(f"min_threshold={min_threshold!r} only applies to method='gpmt', not {method!r}")
    if method == "profile":
        if not isinstance(sparsity, Mapping):
            raise SparsityError(f"method='profile' needs sparsity as {{regex: sparsity}}, got {sparsity!r}")
    else:
        sparsity = check_sparsity(sparsity)
    targets = select_targets(model, include, exclude)
    masks, counts = budget_masks(targets, sparsity, method, min_threshold, seed, pattern)
    mask_set = MaskSet(targets, masks, model_numel=parameter_count(model), target_counts=counts)
    mask_set.apply_()
    return mask_set


def budget_masks(
    targets: Sequence[Target],
    sparsity: float | Mapping[str, float],
    method: str = "gp",
    min_threshold: float | None = None,
    seed: int = 0,
    pattern: str | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """The keep-masks and pruned counts per target of ``prune``'s ``method``, weights untouched."""
    names = [t.name for t in targets]
    tensors = [t.param.detach() for t in targets]
    numels = [t.numel for t in targets]
    if pattern is not None:
        if min_threshold is not None:
            raise SparsityError(f"min_threshold={min_threshold!r} cannot be combined with pattern={pattern!r}")
        return pattern_masks(tensors, pattern, sparsity, method, names)  # type: ignore[arg-type]

    if method == "gp":
        masks = smallest_magnitude_masks(tensors, budgets.count_for(sum(numels), sparsity), names)
        counts = [n - int(m.sum()) for n, m in zip(numels, masks)]
    else:
        if method == "gpmt":
            mt = DEFAULT_MIN_THRESHOLD if min_threshold is None else min_threshold
            gp = budgets.global_counts(tensors, sparsity, names)
            counts = budgets.min_threshold_counts(numels, gp, sparsity, mt)
        elif method in ("uniform", "random"):
            counts = budgets.uniform_counts(numels, sparsity)
        elif method == "erk":
            counts = budgets.erk_counts([t.shape for t in targets], sparsity)
        else:
            counts = budgets.profile_counts(names, numels, sparsity)
        if method == "random":
            masks = random_masks(tensors, counts, seed)
        else:
            masks = per_tensor_smallest_magnitude_masks(tensors, counts, names)
    return list(masks), list(counts)
