"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

From a dense (or partly sparse) model, sparsity rises along the cubic schedule
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` at steps ``t = t0, t0 + dt, ...,
t0 + n * dt``; each update magnitude-prunes the model to ``s_t`` (``uniform``: every tensor at
``s_t``; ``global``: one threshold over all targets), and already-pruned weights, being zero, stay
pruned. Defaults follow the paper's recipe: start at ``s_i = 0``, stop pruning well before the end
(the runner's config defaults to 75% of the stage) and keep training with the final masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from ..sparsity import MaskSet
from ..sparsity.budgets import uniform_counts
from . import oneshot
from .base import StageContext, StageLayout, distribution_cell, single_segment
from .checks import check_group, check_per_tensor
from .events import MaskEvent, one_shot_prune
from .schema import StrictModel
from ..errors import UserError


class GMPStage(StrictModel):
    """Gradual magnitude pruning (Zhu & Gupta): sparsity rises along a cubic from ``initial_sparsity``
    at ``start_epoch`` to ``sparsity`` at ``end_epoch`` (default: 75% of the stage), then training
    goes on with the masks fixed."""

    kind: Literal["gmp"]
    sparsity: float = Field(ge=0, lt=1)
    epochs: int = Field(ge=1)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    start_epoch: int = Field(0, ge=0, description="epoch of the stage at which pruning starts")
    end_epoch: int | None = Field(None, ge=0, description="epoch of the stage at which the final sparsity is reached")
    frequency: int | None = Field(None, ge=1, description="steps between prunings (default: one epoch)")
    distribution: Literal["uniform", "global"] = "uniform"
    optimizer: dict[str, Any] = Field(default_factory=dict)
    lr_schedule: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> GMPStage:
        end = self.final_epoch
        if not self.start_epoch <= end <= self.epochs:
            raise ValueError(f"needs start_epoch={self.start_epoch} <= end_epoch={end} <= epochs={self.epochs}")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} exceeds sparsity={self.sparsity}")
        return self

    @property
    def final_epoch(self) -> int:
        return self.end_epoch if self.end_epoch is not None else int(0.75 * self.epochs)


KINDS = ("gmp",)
SCHEMA = GMPStage
TRAINS = True
PARTITIONED = False
WORKER_KINDS: tuple[str, ...] = ()


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


def layout(stage: GMPStage, ctx: StageContext) -> StageLayout:
    return single_segment(stage.epochs)


def training_epochs(stage: GMPStage) -> int:
    return stage.epochs


def events(stage: GMPStage, ctx: StageContext) -> list[MaskEvent]:
    spe = ctx.steps_per_epoch
    return gmp_events(ctx.start_step + stage.start_epoch * spe, ctx.start_step + stage.final_epoch * spe,
                      stage.frequency or spe, stage.initial_sparsity, stage.sparsity, stage.distribution, ctx.index)


def apply(event: MaskEvent, masks: MaskSet, ctx: StageContext | None = None) -> None:
    """Each GMP event is a one-shot magnitude prune of every target to the schedule's sparsity."""
    oneshot.apply(event, masks, ctx)


def pruned_after(event: MaskEvent, pruned: list[int], shapes: Sequence[Sequence[int]],
                 ctx: StageContext) -> list[int] | None:
    return oneshot.pruned_after(event, pruned, shapes, ctx)


def evaluates_after(event: MaskEvent) -> bool:
    return False  # frequent small steps: the epoch ends evaluate


def label(stage: Mapping[str, Any]) -> str:
    return "GMP"


distribution_label = distribution_cell


def preflight(stage: GMPStage, key: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
              ctx: StageContext) -> None:
    """The final sparsity may not empty a layer (global: all targets together)."""
    if stage.distribution == "global":
        check_group(key, "gmp global", stage.sparsity, names, shapes)
    else:
        check_per_tensor(key, "gmp uniform", stage.sparsity, names, shapes,
                         uniform_counts([math.prod(s) for s in shapes], stage.sparsity))
