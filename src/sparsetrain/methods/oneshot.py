"""One-shot pruning events (GP, GPMT, uniform, ERK, profile) through ``sparsity.prune``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..sparsity import MaskSet, prune
from ..sparsity.targets import Selector
from .events import MaskEvent
from ..errors import UserError


def apply_prune_event(
    event: MaskEvent,
    model: nn.Module,
    include: Selector | Sequence[Selector] | None = None,
    exclude: Selector | Sequence[Selector] | None = None,
) -> MaskSet:
    """Prune ``model`` in place as ``event`` says and return the masks now in force."""
    if event.kind != "prune":
        raise UserError(f"event kind {event.kind!r} is not a one-shot prune")
    return prune(model, event.sparsity, method=event.method, min_threshold=event.min_threshold,
                 include=include, exclude=exclude, seed=event.seed)
