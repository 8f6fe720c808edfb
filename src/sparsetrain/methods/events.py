"""Mask events and the schedules that emit them.

A ``MaskEvent`` happens before the optimizer step numbered ``step`` (0-based global step count),
so an event at step 0 acts on the initial model. Events change masks only through the sparsity
engine; they know nothing of data, files or training loops.

Kinds:
- ``prune``: one-shot pruning of every target to a budget (``method``: gp, gpmt, uniform, erk, profile).
- ``gap_init``: the start of a GaP stage: every partition but ``grow`` gets masks at ``sparsity``
  (seeded random masks, or magnitude pruning when ``init == "magnitude"``); ``grow`` stays dense.
- ``gap_step``: prune the partitions in ``prune`` back to ``sparsity`` by magnitude, grow ``grow``.
- ``gap_final``: prune the last grown partition; from here on every mask is fixed.
- ``pgap_round`` / ``pgap_merge``: P-GaP bookkeeping; the runner trains the workers and merges
  their partitions, then the merge prunes every partition back to ``sparsity``.
- ``dst_init``: seeded random masks at ``sparsity`` with the ``distribution``'s per-tensor budgets
  (the start of SET and RigL).
- ``set_update`` / ``rigl_update``: in every tensor drop ``drop_fraction`` of the active weights
  with the smallest magnitudes and regrow as many at random (SET) or where the gradient is
  largest (RigL); regrown weights start at zero. RigL's update needs this step's gradients, so it
  happens after the backward pass (``after_backward``).

Events due at the same step run in schedule order, those before the forward pass first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MaskEvent:
    """One change of masks. ``sparsity`` is the target fraction (or a {regex: s} profile for ``prune``)."""

    step: int
    kind: str
    sparsity: float | Mapping[str, float]
    method: str = "gp"
    min_threshold: float | None = None
    grow: int | None = None
    prune: tuple[int, ...] = ()
    distribution: str = "uniform"
    init: str = "random"
    seed: int = 0
    resets_optimizer: bool = False
    stage: int = 0
    drop_fraction: float = 0.0
    after_backward: bool = False
    pattern: str | None = None
    label: str = field(default="", compare=False)


class Schedule:
    """A fixed, sorted list of events; ``events_at(step)`` returns those due at that step."""

    def __init__(self, events: Iterable[MaskEvent] = ()) -> None:
        self._events = sorted(events, key=lambda e: (e.step, e.after_backward))

    def events(self) -> list[MaskEvent]:
        return list(self._events)

    def events_at(self, step: int, stage: int | None = None) -> list[MaskEvent]:
        return [e for e in self._events if e.step == step and (stage is None or e.stage == stage)]


def one_shot_prune(
    step: int, method: str, sparsity: float | Mapping[str, float], min_threshold: float | None = None, stage: int = 0,
    pattern: str | None = None,
) -> MaskEvent:
    """GP, GPMT, uniform, ERK or profile pruning applied once at ``step`` (``pattern``: N:M or RxC blocks)."""
    detail = f"{method} {sparsity}" if not isinstance(sparsity, Mapping) else f"{method} profile"
    if min_threshold is not None:
        detail += f" (MT {min_threshold}%)"
    if pattern is not None:
        detail += f" pattern {pattern}"
    return MaskEvent(step, "prune", sparsity, method, min_threshold, stage=stage, pattern=pattern, label=detail)
