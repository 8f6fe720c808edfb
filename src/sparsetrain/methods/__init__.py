"""Methods as schedules of mask events computed from the global step.

A method never keeps hidden counters: ``events_at(step)`` is a pure function of the step, so
``sparsetrain plan`` can print every event before training and resume is "restore the step".
"""

from .dst import apply_dst_event, drop_and_grow_, dst_events
from .events import MaskEvent, Schedule, one_shot_prune
from .gap import GaPLayout, apply_gap_event, gap_events, gap_layout, sgap_grow_sequence
from .gmp import gmp_events, gmp_sparsity
from .oneshot import apply_prune_event

__all__ = [
    "GaPLayout",
    "MaskEvent",
    "Schedule",
    "apply_dst_event",
    "apply_gap_event",
    "apply_prune_event",
    "drop_and_grow_",
    "dst_events",
    "gap_events",
    "gap_layout",
    "gmp_events",
    "gmp_sparsity",
    "one_shot_prune",
    "sgap_grow_sequence",
]
