"""Plain training stages: ``dense`` (masks, if any, are whatever came before) and ``finetune``
(train with the masks fixed). No mask events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from ..sparsity import MaskSet
from .base import StageContext, StageLayout, single_segment
from .events import MaskEvent
from .schema import StrictModel
from ..errors import UserError


class TrainStage(StrictModel):
    kind: Literal["dense", "finetune"]
    epochs: int = Field(ge=1)
    optimizer: dict[str, Any] = Field(default_factory=dict, description="overrides of the top-level optimizer")
    lr_schedule: dict[str, Any] = Field(default_factory=dict, description="overrides of the top-level lr_schedule")


KINDS = ("dense", "finetune")
SCHEMA = TrainStage
TRAINS = True
PARTITIONED = False
WORKER_KINDS: tuple[str, ...] = ()


def layout(stage: TrainStage, ctx: StageContext) -> StageLayout:
    return single_segment(stage.epochs)


def training_epochs(stage: TrainStage) -> int:
    return stage.epochs


def events(stage: TrainStage, ctx: StageContext) -> list[MaskEvent]:
    return []


def apply(event: MaskEvent, masks: MaskSet, ctx: StageContext) -> None:
    raise UserError(f"a {event.kind!r} event does not belong to a dense/finetune stage")


def pruned_after(event: MaskEvent, pruned: list[int], shapes: Sequence[Sequence[int]],
                 ctx: StageContext) -> list[int] | None:
    return pruned


def evaluates_after(event: MaskEvent) -> bool:
    return True


def label(stage: Mapping[str, Any]) -> str:
    return "Dense"


def distribution_label(stage: Mapping[str, Any]) -> str:
    return "Dense"


def preflight(stage: TrainStage, key: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
              ctx: StageContext) -> None:
    """Nothing to check: no masks change."""
