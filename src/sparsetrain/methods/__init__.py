"""Methods as schedules of mask events computed from the global step.

A method never keeps hidden counters: ``events_at(step)`` is a pure function of the step, so
``sparsetrain plan`` can print every event before training and resume is "restore the step".
"""

from .events import MaskEvent, one_shot_prune, Schedule, apply_event

__all__ = ["MaskEvent", "Schedule", "apply_event", "one_shot_prune"]
