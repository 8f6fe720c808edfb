"""Pre-flight budget checks the method modules share (``preflight`` in each module): what can be
refused from the targets' names and shapes alone, before any weight is read. One-line
``SparsityError``s naming the config key, the bad value and the valid range."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..sparsity import budgets
from ..sparsity.errors import SparsityError


def check_min_threshold(key: str, sparsity: float, min_threshold: float, numels: Sequence[int]) -> None:
    """GPMT's feasibility from layer sizes: the engine's check with every layer touched by GP."""
    touched = [1] * len(numels)
    try:
        budgets.min_threshold_counts(numels, touched, sparsity, min_threshold)
    except SparsityError:
        floor = budgets.min_threshold_floor(sum(numels), min_threshold)
        best = budgets.max_min_threshold_sparsity(numels, touched, min_threshold)
        raise SparsityError(
            f"{key}={sparsity!r} (prune gpmt) is unreachable with min_threshold={min_threshold}%: every layer keeps "
            f"at least {floor:,} weights, so the highest reachable sparsity of these {len(numels)} targets "
            f"({sum(numels):,} weights) is {best:.4%}; valid: sparsity <= {math.floor(best * 1e4) / 1e4:.4f}, or a "
            "lower min_threshold") from None


def last_keeping(numel: int) -> float:
    """Sparsities below this keep at least one of ``numel`` weights under ``round(s * numel)``."""
    return (numel - 0.5) / numel


def check_per_tensor(key: str, what: str, sparsity: float, names: Sequence[str],
                      shapes: Sequence[tuple[int, ...]], counts: Sequence[int]) -> None:
    """Raise if a per-tensor budget prunes every weight of a target."""
    for name, shape, count in zip(names, shapes, counts):
        numel = math.prod(shape)
        if numel and count >= numel:
            limit = f" (uniform: below {last_keeping(numel):.6g} for this layer)" if "erk" not in what else ""
            raise SparsityError(
                f"{key}={sparsity!r} ({what}) prunes all {numel} weights of target {name!r} {shape}, which would "
                f"leave that layer no weight; valid: a sparsity that keeps a weight in every target{limit}, or "
                "exclude the layer with targets.exclude")


def check_group(key: str, what: str, sparsity: float, names: Sequence[str],
                 shapes: Sequence[tuple[int, ...]]) -> None:
    """Raise if one budget over a group of targets prunes all of their weights."""
    total = sum(math.prod(s) for s in shapes)
    if total and budgets.count_for(total, sparsity) >= total:
        raise SparsityError(
            f"{key}={sparsity!r} ({what}) prunes all {total} weights of {len(names)} target(s) from {names[0]!r}, "
            f"which would leave no weight; valid: below {last_keeping(total):.6g}")
