"""Dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

Both start from a seeded random sparse model (``dst_init``; ERK or uniform per-tensor budgets,
the total exact) and, every ``update_every`` steps until ``stop_fraction`` of the stage, replace a
fraction of each tensor's active weights: the ``round(f * active)`` active weights with the
smallest magnitudes are dropped and as many inactive positions are grown, so every tensor keeps
its budget. SET grows at random positions and keeps ``f`` constant (its paper: ``f = 0.3``);
RigL grows where the current mini-batch's gradient magnitude is largest and decays ``f`` as
``alpha / 2 * (1 + cos(pi * t / T_end))`` with ``alpha = 0.3``, ``T_end`` = 75% of training, an
update every 100 steps (its paper's defaults). Grown weights start at zero, and their optimizer
state is zero. Dense gradients are only needed at RigL's update steps: its update runs after the
backward pass of that step, before the optimizer step. A just-dropped position may be regrown
(it restarts at zero). Every choice is exact and deterministic: magnitudes and gradient scores are
ranked with the engine's selection (ties by position), SET's random scores come from a seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from ..sparsity import MaskSet, per_tensor_counts, random_masks, smallest_magnitude_masks
from .base import StageContext, StageLayout, distribution_cell, kind_cell, single_segment
from .checks import check_per_tensor
from .events import MaskEvent
from .schema import StrictModel
from ..errors import UserError


class DSTStage(StrictModel):
    """Dynamic sparse training from a random sparse init: SET (random regrowth, constant drop
    fraction) or RigL (gradient regrowth, cosine-decayed drop fraction); paper defaults."""

    kind: Literal["set", "rigl"]
    sparsity: float = Field(ge=0, lt=1)
    epochs: int = Field(ge=1)
    distribution: Literal["uniform", "erk"] = "erk"
    update_every: int = Field(100, ge=1, description="steps between drop-and-grow updates")
    drop_fraction: float = Field(0.3, gt=0, le=1, description="alpha: fraction of active weights replaced")
    stop_fraction: float = Field(0.75, gt=0, le=1, description="updates stop after this fraction of the stage")
    decay: Literal["cosine", "constant"] | None = Field(None, description="default: cosine for RigL, constant for SET")
    mask_seed: int | None = Field(None, ge=0)
    optimizer: dict[str, Any] = Field(default_factory=dict)
    lr_schedule: dict[str, Any] = Field(default_factory=dict)

    @property
    def drop_decay(self) -> str:
        return self.decay or ("cosine" if self.kind == "rigl" else "constant")


KINDS = ("set", "rigl")
SCHEMA = DSTStage
TRAINS = True
PARTITIONED = False
WORKER_KINDS: tuple[str, ...] = ()
LABELS = {"set": "SET", "rigl": "RIGL"}
"""The report's Method cell (kept as the report has always printed them)."""

_EXCLUDED = 1.0e30
"""Score given to positions that must never be chosen (finite, so the selection accepts it)."""


def drop_fraction_at(step_in_stage: int, stop_step: int, alpha: float, decay: str) -> float:
    if decay == "constant":
        return alpha
    return alpha / 2.0 * (1.0 + math.cos(math.pi * min(step_in_stage, stop_step) / stop_step))


def dst_events(method: str, start_step: int, total_steps: int, sparsity: float, *, distribution: str,
               update_every: int, drop_fraction: float, stop_fraction: float, decay: str, seed: int,
               stage: int) -> list[MaskEvent]:
    """``dst_init`` at ``start_step``, then an update every ``update_every`` steps before ``stop_fraction``."""
    stop = max(1, int(stop_fraction * total_steps))
    events = [MaskEvent(start_step, "dst_init", sparsity, distribution=distribution, seed=seed, stage=stage,
                        label=f"{method} init ({distribution} random masks)")]
    for offset in range(update_every, stop, update_every):
        fraction = drop_fraction_at(offset, stop, drop_fraction, decay)
        events.append(MaskEvent(start_step + offset, f"{method}_update", sparsity, distribution=distribution,
                                seed=seed + offset, stage=stage, drop_fraction=fraction,
                                after_backward=method == "rigl",
                                label=f"{method} update: drop and regrow {fraction:.3f} of active weights"))
    return events


def _choose_largest(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """Bool tensor marking the ``count`` candidates with the largest scores (ties: later positions)."""
    if count == 0:
        return torch.zeros_like(candidates)
    ranked = torch.where(candidates, scores, torch.full_like(scores, _EXCLUDED))
    not_chosen = int(candidates.sum()) - count
    keep = smallest_magnitude_masks([ranked], not_chosen)[0]  # False on the not_chosen smallest candidates
    return keep & candidates


def drop_and_grow_(masks: MaskSet, drop_fraction: float, grow: str, seed: int) -> int:
    """One SET/RigL update in place; returns how many weights moved. ``grow``: ``random`` or ``gradient``."""
    moved = 0
    generator = torch.Generator().manual_seed(seed)
    for i, (target, mask) in enumerate(zip(masks.targets, masks.masks)):
        active = int(mask.sum())
        count = round(drop_fraction * active)
        if count == 0:
            continue
        weight = target.param.detach()
        magnitude = weight.abs().float()
        ranked = torch.where(mask, magnitude, torch.full_like(magnitude, _EXCLUDED))
        kept = mask & smallest_magnitude_masks([ranked], count)[0]  # the count smallest active ones dropped
        if grow == "gradient":
            if target.param.grad is None:
                raise UserError(f"RigL needs the gradient of {target.name!r} at its update step")
            scores = target.param.grad.detach().abs().float()
        else:
            scores = torch.rand(weight.shape, generator=generator).to(weight.device)
        grown = _choose_largest(scores, ~kept, count)
        new_mask = kept | grown
        weight.masked_fill_(grown, 0.0)  # regrown weights start at zero, even a just-dropped one
        masks.set_(i, new_mask)
        moved += count
    masks.apply_()
    return moved


def apply_dst_event(event: MaskEvent, masks: MaskSet) -> None:
    """Carry out a ``dst_init``, ``set_update`` or ``rigl_update`` event on ``masks`` (weights zeroed)."""
    if event.kind == "dst_init":
        counts = per_tensor_counts([t.shape for t in masks.targets], event.sparsity, event.distribution)
        for i, mask in enumerate(random_masks([t.param for t in masks.targets], counts, event.seed)):
            masks.set_(i, mask)
        masks.apply_()
    elif event.kind in ("set_update", "rigl_update"):
        drop_and_grow_(masks, event.drop_fraction, "gradient" if event.kind == "rigl_update" else "random", event.seed)
    else:
        raise UserError(f"event kind {event.kind!r} is not a SET/RigL event")


# ---- the method module's interface (see methods/base.py) -------------------------------------


def layout(stage: DSTStage, ctx: StageContext) -> StageLayout:
    return single_segment(stage.epochs)


def training_epochs(stage: DSTStage) -> int:
    return stage.epochs


def events(stage: DSTStage, ctx: StageContext) -> list[MaskEvent]:
    return dst_events(stage.kind, ctx.start_step, stage.epochs * ctx.steps_per_epoch, stage.sparsity,
                      distribution=stage.distribution, update_every=stage.update_every,
                      drop_fraction=stage.drop_fraction, stop_fraction=stage.stop_fraction, decay=stage.drop_decay,
                      seed=ctx.seed if stage.mask_seed is None else stage.mask_seed, stage=ctx.index)


def apply(event: MaskEvent, masks: MaskSet, ctx: StageContext | None = None) -> None:
    apply_dst_event(event, masks)


def pruned_after(event: MaskEvent, pruned: list[int], shapes: Sequence[Sequence[int]],
                 ctx: StageContext) -> list[int] | None:
    if event.kind == "dst_init":
        return per_tensor_counts(shapes, event.sparsity, event.distribution)
    return pruned  # drop and grow keep every tensor's count


def evaluates_after(event: MaskEvent) -> bool:
    return event.kind == "dst_init"  # not after the frequent updates


def label(stage: Mapping[str, Any]) -> str:
    return kind_cell(stage, LABELS)


distribution_label = distribution_cell


def preflight(stage: DSTStage, key: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
              ctx: StageContext) -> None:
    """The per-tensor budgets may not empty a layer."""
    check_per_tensor(key, f"{stage.kind} {stage.distribution}", stage.sparsity, names, shapes,
                     per_tensor_counts(shapes, stage.sparsity, stage.distribution))
