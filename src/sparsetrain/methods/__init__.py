"""Methods as schedules of mask events computed from the global step, found through ``REGISTRY``.

A method never keeps hidden counters: ``events_at(step)`` is a pure function of the step, so
``sparsetrain plan`` can print every event before training and resume is "restore the step".

``REGISTRY`` maps each stage ``kind`` to the module that owns it: its stage schema, its events,
how an event changes the masks, the sparsity after each event and its report label (the
interface is described in :mod:`sparsetrain.methods.base`). Config validation, the runner's
timeline and dispatch, ``plan`` and the report look methods up here, so adding a method is one
new module plus one line below. ``MethodScheduler`` drives any registered method in your own
training loop.
"""

from __future__ import annotations

from types import ModuleType

from . import dst, gap, gmp, oneshot, training
from .base import StageContext, StageLayout
from .dst import DSTStage, apply_dst_event, drop_and_grow_, dst_events
from .events import MaskEvent, Schedule, one_shot_prune
from .gap import GaPLayout, GaPStage, apply_gap_event, gap_events, gap_layout, sgap_grow_sequence
from .gmp import GMPStage, gmp_events, gmp_sparsity
from .oneshot import PruneStage, apply_prune_event
from .schema import PartitionConfig, StrictModel
from .training import TrainStage
from ..errors import UserError

REGISTRY: dict[str, ModuleType] = {
    "dense": training,
    "finetune": training,
    "prune": oneshot,
    "sgap": gap,
    "pgap": gap,
    "gmp": gmp,
    "set": dst,
    "rigl": dst,
}
"""Stage kind -> method module, in the order configs list the kinds."""


def method_for(kind: str) -> ModuleType:
    """The module of stage kind ``kind``; a one-line error naming the registered kinds otherwise."""
    try:
        return REGISTRY[kind]
    except KeyError:
        raise UserError(f"stage kind {kind!r} is not registered; valid: {', '.join(REGISTRY)}") from None


def stage_schemas() -> tuple[type, ...]:
    """The registered stage models, each once, in registry order (``config.Stage`` is their union)."""
    return tuple(dict.fromkeys(module.SCHEMA for module in REGISTRY.values()))


def trains_with_workers(kind: str) -> bool:
    """Whether stages of ``kind`` train parallel workers (P-GaP), which the runner schedules itself."""
    return kind in method_for(kind).WORKER_KINDS


from .scheduler import MethodScheduler  # noqa: E402  (it looks methods up in REGISTRY)

__all__ = [
    "DSTStage",
    "GMPStage",
    "GaPLayout",
    "GaPStage",
    "MaskEvent",
    "MethodScheduler",
    "PartitionConfig",
    "PruneStage",
    "REGISTRY",
    "Schedule",
    "StageContext",
    "StageLayout",
    "StrictModel",
    "TrainStage",
    "apply_dst_event",
    "apply_gap_event",
    "apply_prune_event",
    "drop_and_grow_",
    "dst_events",
    "gap_events",
    "gap_layout",
    "gmp_events",
    "gmp_sparsity",
    "method_for",
    "one_shot_prune",
    "sgap_grow_sequence",
    "stage_schemas",
    "trains_with_workers",
]
