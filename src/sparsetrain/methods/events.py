"""Mask events and the schedules that emit them.

A ``MaskEvent`` happens before the optimizer step numbered ``step`` (0-based global step count),
so an event at step 0 acts on the initial model. Events change masks only through the sparsity
engine; they know nothing of data, files or training loops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..sparsity import MaskSet, prune
from ..sparsity.targets import Selector


@dataclass(frozen=True)
class MaskEvent:
    """One change of masks. ``sparsity`` is the target fraction after it (or a {regex: s} profile)."""

    step: int
    kind: str
    method: str
    sparsity: float | Mapping[str, float]
    min_threshold: float | None = None
    resets_optimizer: bool = False
    label: str = field(default="", compare=False)


class Schedule:
    """A fixed, sorted list of events; ``events_at(step)`` returns those due at that step."""

    def __init__(self, events: Iterable[MaskEvent] = ()) -> None:
        self._events = sorted(events, key=lambda e: e.step)

    def events(self) -> list[MaskEvent]:
        return list(self._events)

    def events_at(self, step: int) -> list[MaskEvent]:
        return [e for e in self._events if e.step == step]


def one_shot_prune(
    step: int, method: str, sparsity: float | Mapping[str, float], min_threshold: float | None = None
) -> MaskEvent:
    """GP, GPMT, uniform, ERK or profile pruning applied once at ``step``."""
    detail = f"{method} {sparsity}" if not isinstance(sparsity, Mapping) else f"{method} profile"
    if min_threshold is not None:
        detail += f" (MT {min_threshold}%)"
    return MaskEvent(step, "prune", method, sparsity, min_threshold, label=detail)


def apply_event(
    event: MaskEvent,
    model: nn.Module,
    include: Selector | Sequence[Selector] | None = None,
    exclude: Selector | Sequence[Selector] | None = None,
) -> MaskSet:
    """Carry out ``event`` on ``model`` in place and return the masks now in force."""
    if event.kind != "prune":
        raise ValueError(f"event kind {event.kind!r} is not one of: prune")
    return prune(model, event.sparsity, method=event.method, min_threshold=event.min_threshold,
                 include=include, exclude=exclude)
