"""Budgets: how many weights each target tensor loses for a requested sparsity.

Every function returns integer pruned counts, one per target, in target order. A sparsity ``s``
of ``n`` weights means ``round(s * n)`` pruned weights (Python's ``round``, as in
``torch.nn.utils.prune``).

- ``uniform_counts``: every tensor at ``s``.
- ``global_counts`` (GP): one magnitude threshold over all targets; the total is exactly ``round(s * N)``.
- ``min_threshold_counts`` (GPMT): GP counts redistributed under a per-layer floor of ``m`` kept
  weights, with ``m = floor(N * MT / 100)``. Layers with fewer than ``m`` weights stay dense, every
  other layer keeps at least ``m``, the remaining layers' GP counts are scaled by one common factor
  so the total is exactly ``round(s * N)``. The reference code reaches this fixed point by an
  unbounded loop; here it is solved exactly (water-filling over rational numbers), and an
  unreachable target raises an error that states the highest reachable sparsity.
- ``erk_counts``: RigL's Erdős–Rényi-Kernel densities (proportional to sum(shape) / prod(shape));
  layers whose density would exceed 1 stay dense; the total is exactly ``round(s * N)``.
- ``profile_counts``: per-layer sparsities given as ``{regex: sparsity}``; the first pattern that
  matches a target's name (``re.search``) sets its sparsity.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

import torch

from .errors import SparsityError, check_sparsity
from .selection import find_threshold, pruned_counts_from_threshold


def count_for(numel: int, sparsity: float) -> int:
    """Pruned elements of a tensor of ``numel`` elements at ``sparsity`` (round half to even)."""
    return round(sparsity * numel)


def uniform_counts(numels: Sequence[int], sparsity: float) -> list[int]:
    sparsity = check_sparsity(sparsity)
    return [count_for(n, sparsity) for n in numels]


def global_counts(tensors: Sequence[torch.Tensor], sparsity: float, names: Sequence[str] | None = None) -> list[int]:
    """GP: per-tensor counts of one global magnitude threshold pruning ``round(s * N)`` weights."""
    sparsity = check_sparsity(sparsity)
    k = count_for(sum(t.numel() for t in tensors), sparsity)
    return pruned_counts_from_threshold(tensors, find_threshold(tensors, k, names))


def min_threshold_floor(total: int, min_threshold: float) -> int:
    """``m = floor(N * MT / 100)``: the per-layer floor for MT given in percent of all target weights.

    MT is read through its decimal text (``0.05`` is exactly 5/10000), so the floor is exact.
    """
    if isinstance(min_threshold, bool) or not isinstance(min_threshold, (int, float)):
        raise SparsityError(f"min_threshold={min_threshold!r} must be a number in [0, 100] (percent)")
    if not 0.0 <= float(min_threshold) <= 100.0:
        raise SparsityError(f"min_threshold={min_threshold!r} is outside [0, 100] (percent of all target weights)")
    return math.floor(total * Fraction(repr(float(min_threshold))) / 100)


def _water_fill(shares: Sequence[int], caps: Sequence[int], total: int) -> list[int]:
    """Integers ``x`` with ``sum(x) == total``, ``0 <= x[i] <= caps[i]``, ``x`` proportional to ``shares``.

    Real solution: ``x[i] = min(caps[i], c * shares[i])`` with the one ``c`` that makes the sum
    ``total``; it is rounded by largest remainder (ties to the lower index), which never breaks a
    cap. Callers guarantee ``total <= sum(caps[i] for shares[i] > 0)``.
    """
    free = sorted((i for i, s in enumerate(shares) if s > 0), key=lambda i: Fraction(caps[i], shares[i]))
    clamped_sum, free_share = 0, sum(shares[i] for i in free)
    scale = Fraction(0)
    for position, i in enumerate(free):
        scale = Fraction(total - clamped_sum, free_share)
        if scale * shares[i] <= caps[i]:
            break
        clamped_sum += caps[i]
        free_share -= shares[i]
        if free_share == 0:
            scale = Fraction(caps[i], shares[i])
    exact = [min(Fraction(caps[i]), scale * shares[i]) if shares[i] > 0 else Fraction(0) for i in range(len(shares))]
    counts = [math.floor(v) for v in exact]
    remainder = total - sum(counts)
    by_fraction = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_fraction[:remainder]:
        counts[i] += 1
    return counts


def max_min_threshold_sparsity(numels: Sequence[int], gp_counts: Sequence[int], min_threshold: float) -> float:
    """Highest sparsity GPMT can reach: every layer the GP ranking touches pruned down to the floor."""
    total = sum(numels)
    floor = min_threshold_floor(total, min_threshold)
    prunable = sum(n - floor for n, g in zip(numels, gp_counts) if n > floor and g > 0)
    return prunable / total


def min_threshold_counts(
    numels: Sequence[int], gp_counts: Sequence[int], sparsity: float, min_threshold: float
) -> list[int]:
    """GPMT counts from the GP counts of the same weights (see the module docstring)."""
    sparsity = check_sparsity(sparsity)
    if len(numels) != len(gp_counts):
        raise SparsityError(f"got {len(gp_counts)} GP counts for {len(numels)} layers")
    total = sum(numels)
    floor = min_threshold_floor(total, min_threshold)
    target = count_for(total, sparsity)
    caps = [n - floor if n > floor else 0 for n in numels]
    reachable = sum(c for c, g in zip(caps, gp_counts) if g > 0)
    if target > reachable:
        best = reachable / total
        raise SparsityError(
            f"sparsity={sparsity!r} is unreachable with min_threshold={min_threshold}% "
            f"(every layer keeps at least {floor} weights): the highest reachable sparsity is {best:.4%}"
        )
    return _water_fill(gp_counts, caps, target)


def erk_counts(shapes: Sequence[Sequence[int]], sparsity: float) -> list[int]:
    """RigL's ERK: kept weights proportional to ``sum(shape)``; dense where density would exceed 1."""
    sparsity = check_sparsity(sparsity)
    numels = [math.prod(s) for s in shapes]
    total = sum(numels)
    kept_total = total - count_for(total, sparsity)
    # density_i = eps * sum(shape_i) / numel_i, so kept_i = eps * sum(shape_i), capped at numel_i.
    kept = _water_fill([sum(s) for s in shapes], numels, kept_total)
    return [n - k for n, k in zip(numels, kept)]


def profile_counts(names: Sequence[str], numels: Sequence[int], profile: Mapping[str, float]) -> list[int]:
    """Counts from ``{regex: sparsity}``; every target must match a pattern and every pattern a target."""
    if not isinstance(profile, Mapping) or not profile:
        raise SparsityError(f"profile={profile!r} must be a non-empty mapping of name regex to sparsity")
    rules = []
    for pattern, value in profile.items():
        try:
            rules.append((pattern, re.compile(pattern), check_sparsity(value, f"profile[{pattern!r}]")))
        except re.error as exc:
            raise SparsityError(f"profile pattern {pattern!r} is not a valid regex: {exc}") from None
    used = set()
    counts = []
    for name, numel in zip(names, numels):
        rule = next((r for r in rules if r[1].search(name)), None)
        if rule is None:
            raise SparsityError(f"no profile pattern matches target {name!r}; add a catch-all such as '.*'")
        used.add(rule[0])
        counts.append(count_for(numel, rule[2]))
    unused = [p for p, _, _ in rules if p not in used]
    if unused:
        raise SparsityError(f"profile pattern {unused[0]!r} matches no target (an earlier pattern may shadow it)")
    return counts


def per_tensor_counts(shapes: Sequence[Sequence[int]], sparsity: float, distribution: str) -> list[int]:
    """Per-tensor pruned counts of a ``uniform`` or ``erk`` distribution (any other: uniform)."""
    if distribution == "erk":
        return erk_counts(shapes, sparsity)
    return uniform_counts([math.prod(s) for s in shapes], sparsity)
