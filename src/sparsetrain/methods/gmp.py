"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

From a dense (or partly sparse) model, sparsity rises along the cubic schedule
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` at steps ``t = t0, t0 + dt, ...,
t0 + n * dt``; each update magnitude-prunes the model to ``s_t`` (``uniform``: every tensor at
``s_t``; ``global``: one threshold over all targets), and already-pruned weights, being zero, stay
pruned. Defaults follow the paper's recipe: start at ``s_i = 0``, stop pruning well before the end
(the runner's config defaults to 75% of the stage) and keep training with the final masks.
"""

from __future__ import annotations

from .events import MaskEvent, one_shot_prune
from ..errors import UserError


def gmp_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """The cubic schedule's sparsity at ``step`` (clamped to [start_step, end_step])."""
    if end_step <= start_step:
        return final
    progress = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def gmp_events(start_step: int, end_step: int, frequency: int, initial: float, final: float, distribution: str,
               stage: int) -> list[MaskEvent]:
    """Prune events every ``frequency`` steps from ``start_step``; the last one at ``end_step`` reaches ``final``."""
    if frequency < 1:
        raise UserError(f"gmp frequency={frequency} must be >= 1 step")
    method = "gp" if distribution == "global" else "uniform"
    steps = list(range(start_step, end_step, frequency)) + [end_step]
    return [
        one_shot_prune(step, method, round(gmp_sparsity(step, start_step, end_step, initial, final), 6), stage=stage)
        for step in steps
    ]
