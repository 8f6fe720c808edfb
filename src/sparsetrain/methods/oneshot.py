"""One-shot pruning (``kind: prune``): GP, GPMT, uniform, ERK, profile or random, once, through
the engine's budgets (``sparsity.prune``).

``pattern`` (``"N:M"`` or ``"RxC"`` blocks, see ``sparsity.patterns``) is accepted by ``gp`` and
``uniform`` (and ``erk`` with blocks); with ``"N:M"`` ``sparsity`` may be omitted (it is ``1 - N/M``)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from torch import nn

from ..sparsity import MaskSet, budgets, prune
from ..sparsity.budgets import count_for
from ..sparsity.errors import SparsityError
from ..sparsity.patterns import check_pattern_method, check_pattern_sparsity, parse_pattern, pattern_counts
from ..sparsity.prune import DEFAULT_MIN_THRESHOLD, budget_masks
from ..sparsity.targets import Selector
from .base import StageContext, StageLayout
from .checks import check_group, check_min_threshold, check_per_tensor, last_keeping
from .events import MaskEvent, one_shot_prune
from .schema import StrictModel, with_pattern_sparsity
from ..errors import UserError


class PruneStage(StrictModel):
    kind: Literal["prune"]
    method: Literal["gp", "gpmt", "uniform", "erk", "profile", "random"] = "gp"
    sparsity: Annotated[float, Field(ge=0, lt=1)] | dict[str, Annotated[float, Field(ge=0, lt=1)]]
    min_threshold: float | None = Field(None, ge=0, le=100, description="GPMT floor, percent of target weights")
    seed: int | None = Field(None, ge=0, description="random pruning: seed of the positions (default: run seed)")
    pattern: str | None = Field(None, description="structured pruning: 'N:M' (e.g. '2:4') or 'RxC' blocks (e.g. '1x8')")

    _pattern_sparsity = model_validator(mode="before")(classmethod(with_pattern_sparsity))

    @model_validator(mode="after")
    def _consistent(self) -> PruneStage:
        if self.pattern is not None:
            pattern = parse_pattern(self.pattern)
            check_pattern_method(pattern, self.method)
            check_pattern_sparsity(pattern, self.sparsity)  # type: ignore[arg-type]
        if self.method == "profile" and not isinstance(self.sparsity, dict):
            raise ValueError("method 'profile' needs sparsity as {regex: sparsity}")
        if self.method != "profile" and isinstance(self.sparsity, dict):
            raise ValueError(f"method {self.method!r} needs one sparsity in [0, 1), not a mapping")
        if self.min_threshold is not None and self.method != "gpmt":
            raise ValueError("min_threshold only applies to method 'gpmt'")
        if self.seed is not None and self.method != "random":
            raise ValueError("seed only applies to method 'random'")
        return self


KINDS = ("prune",)
SCHEMA = PruneStage
TRAINS = False
PARTITIONED = False
WORKER_KINDS: tuple[str, ...] = ()
METHOD_LABELS = {"gp": "GP", "gpmt": "GPMT", "uniform": "Uniform magnitude", "erk": "ERK magnitude",
                 "profile": "Profile"}
DISTRIBUTION_LABELS = {"gp": "Global", "gpmt": "Global", "uniform": "Uniform", "erk": "ERK", "profile": "Profile"}


def layout(stage: PruneStage, ctx: StageContext) -> StageLayout:
    return StageLayout(0)


def training_epochs(stage: PruneStage) -> int:
    return 0  # prunes once, trains nothing


def events(stage: PruneStage, ctx: StageContext) -> list[MaskEvent]:
    event = one_shot_prune(ctx.start_step, stage.method, stage.sparsity, stage.min_threshold, ctx.index, stage.pattern)
    if stage.method == "random":
        event = replace(event, seed=ctx.seed if stage.seed is None else stage.seed)
    return [event]


def apply(event: MaskEvent, masks: MaskSet, ctx: StageContext | None = None) -> None:
    """Prune every target of ``masks`` to the event's budget (weights zeroed); the masks before do not
    matter beyond the zeros they left (already-pruned weights count like any other magnitude)."""
    if event.kind != "prune":
        raise UserError(f"event kind {event.kind!r} is not a one-shot prune")
    new, counts = budget_masks(masks.targets, event.sparsity, event.method, event.min_threshold, event.seed,
                               event.pattern)
    for i, mask in enumerate(new):
        masks.set_(i, mask)
    masks.target_counts = counts
    masks.apply_()


def pruned_after(event: MaskEvent, pruned: list[int], shapes: Sequence[Sequence[int]],
                 ctx: StageContext) -> list[int] | None:
    """GP/GPMT/ERK fix the total exactly (booked on the first tensor: only totals are reported);
    uniform and random round per tensor; a profile's total depends on names (None: shown by the run).
    Patterned prunes are exact from the shapes (``patterns.pattern_counts``)."""
    numels = [math.prod(shape) for shape in shapes]
    if event.pattern is not None:
        assert not isinstance(event.sparsity, Mapping)
        return pattern_counts(parse_pattern(event.pattern), shapes, event.sparsity, event.method)
    if event.method in ("gp", "gpmt", "erk"):
        return [count_for(sum(numels), event.sparsity)] + [0] * (len(numels) - 1)
    if event.method in ("uniform", "random"):
        return [count_for(n, event.sparsity) for n in numels]
    return None


def evaluates_after(event: MaskEvent) -> bool:
    return True


def prepare_outputs(event: MaskEvent, masks: MaskSet) -> Any:
    """Before a GPMT prune: the plain GP counts the reference code's stage-1 log holds (None otherwise)."""
    if event.method != "gpmt":
        return None
    from ..sparsity import global_counts

    return global_counts([t.param.detach() for t in masks.targets], event.sparsity, [t.name for t in masks.targets])


def write_outputs(event: MaskEvent, prepared: Any, masks: MaskSet, run_dir: Any, before: float | None,
                  after: float) -> None:
    """After a GPMT prune and its evaluation: the reference code's files under ``<run>/gpmt_reference``."""
    from ..interop.gpmt_files import write_gpmt_reference_files

    write_gpmt_reference_files(Path(run_dir) / "gpmt_reference", masks, prepared, before, after)


def label(stage: Mapping[str, Any]) -> str:
    method = str(stage.get("method", "gp"))
    return METHOD_LABELS.get(method, method.upper())


def distribution_label(stage: Mapping[str, Any]) -> str:
    method = str(stage.get("method", "gp"))
    text = DISTRIBUTION_LABELS.get(method, method.upper())
    if method == "gpmt":
        mt = stage.get("min_threshold")
        text += f" + MT {mt:g}%" if isinstance(mt, (int, float)) else " + MT"
    return text


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
                 include=include, exclude=exclude, seed=event.seed, pattern=event.pattern)


def preflight(stage: PruneStage, key: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
              ctx: StageContext) -> None:
    """GPMT reachable from the layer sizes; profile patterns match; no budget known to empty a layer."""
    numels = [math.prod(s) for s in shapes]
    what = f"prune {stage.method}"
    if stage.pattern is not None:  # N:M never empties a layer; block budgets might
        assert not isinstance(stage.sparsity, Mapping)
        if stage.method == "gp":
            check_group(key, what, stage.sparsity, names, shapes)
        else:
            counts = pattern_counts(parse_pattern(stage.pattern), shapes, stage.sparsity, stage.method)
            check_per_tensor(key, what, stage.sparsity, names, shapes, counts)
    elif stage.method == "gpmt":
        mt = DEFAULT_MIN_THRESHOLD if stage.min_threshold is None else stage.min_threshold
        check_min_threshold(key, stage.sparsity, mt, numels)
        if budgets.min_threshold_floor(sum(numels), mt) == 0:  # no floor: as for gp, only the total is known
            check_group(key, what, stage.sparsity, names, shapes)
    elif stage.method == "gp":
        check_group(key, what, stage.sparsity, names, shapes)
    elif stage.method == "profile":
        assert isinstance(stage.sparsity, Mapping)
        try:
            counts = budgets.profile_counts(names, numels, stage.sparsity)
        except SparsityError as exc:
            raise SparsityError(f"{key}: {exc}") from None
        for name, shape, numel, count in zip(names, shapes, numels, counts):
            if numel and count >= numel:
                rule = next(p for p in stage.sparsity if re.search(p, name))
                raise SparsityError(
                    f"{key}[{rule!r}]={stage.sparsity[rule]!r} (prune profile) prunes all {numel} weights of target "
                    f"{name!r} {shape}, which would leave that layer no weight; valid: below "
                    f"{last_keeping(numel):.6g} for this layer")
    else:
        counts = (budgets.erk_counts(shapes, stage.sparsity) if stage.method == "erk"
                  else budgets.uniform_counts(numels, stage.sparsity))
        check_per_tensor(key, what, stage.sparsity, names, shapes, counts)
