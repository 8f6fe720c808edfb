"""The whole run laid out before training: stages, optimizer segments and every mask event.

Built from the config, the number of optimizer steps per epoch and the partitions of GaP stages,
it is what ``sparsetrain plan`` prints and what the training loop follows, so the plan and the
events that happen cannot differ. Epochs and steps are 0-based global positions; a stage or
segment covers ``[start, start + length)``. A *segment* is a stretch trained with one optimizer
and one LR schedule (a new segment means a fresh optimizer and, with warm-up, a new warm-up).
For P-GaP the axis is one worker's progress: the kappa workers of a round share its epochs.
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..config import LRScheduleConfig, OptimizerConfig, RunConfig
from ..methods import GaPLayout, Schedule, StageContext, method_for
from ..sparsity.partitions import Partition, split_block_notes
from ..errors import UserError


@dataclass(frozen=True)
class Segment:
    start_epoch: int
    epochs: int

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs


@dataclass(frozen=True)
class StageSpan:
    index: int
    kind: str
    start_epoch: int
    epochs: int
    start_step: int
    steps: int
    optimizer: OptimizerConfig | None
    lr_schedule: LRScheduleConfig | None
    segments: tuple[Segment, ...] = ()
    gap: GaPLayout | None = None
    partitions: tuple[Partition, ...] = ()

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs

    def segment_at(self, epoch: int) -> Segment:
        return next(s for s in self.segments if s.start_epoch <= epoch < s.end_epoch)


@dataclass(frozen=True)
class Timeline:
    stages: tuple[StageSpan, ...]
    schedule: Schedule
    steps_per_epoch: int

    @property
    def total_epochs(self) -> int:
        return self.stages[-1].end_epoch

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch


def build_timeline(
    config: RunConfig, steps_per_epoch: int, partitions: Mapping[int, Sequence[Partition]] | None = None
) -> Timeline:
    """Lay out ``config``; ``partitions[i]`` are the partitions of partitioned stage ``i`` (GaP: kappa).

    Every stage's length, optimizer segments and mask events come from its method module
    (``sparsetrain.methods.REGISTRY``).
    """
    if steps_per_epoch < 1:
        raise UserError(f"steps_per_epoch={steps_per_epoch} must be >= 1 (is the training set empty?)")
    spans, events = [], []
    epoch = 0
    for index, stage in enumerate(config.stages):
        method = method_for(stage.kind)
        start_step = epoch * steps_per_epoch
        parts: tuple[Partition, ...] = ()
        if method.PARTITIONED:
            if partitions is None or index not in partitions:
                raise UserError(f"stages.{index} ({stage.kind}) needs its partitions, resolved against the model")
            parts = tuple(partitions[index])
        context = StageContext(index, start_step, steps_per_epoch, config.seed, parts)
        layout = method.layout(stage, context)
        trains = method.TRAINS
        spans.append(StageSpan(index, stage.kind, epoch, layout.epochs, start_step, layout.epochs * steps_per_epoch,
                               config.stage_optimizer(stage) if trains else None,
                               config.stage_lr_schedule(stage) if trains else None,
                               tuple(Segment(epoch + offset, length) for offset, length in layout.segments),
                               layout.detail if isinstance(layout.detail, GaPLayout) else None, parts))
        events += method.events(stage, context)
        epoch += layout.epochs
    return Timeline(tuple(spans), Schedule(events), steps_per_epoch)


def stage_context(span: StageSpan, steps_per_epoch: int, seed: int = 0) -> StageContext:
    """The method context of a laid-out stage (what its module's ``apply``/``pruned_after`` receive)."""
    return StageContext(span.index, span.start_step, steps_per_epoch, seed, span.partitions)


def sparsity_after_events(timeline: Timeline, target_shapes: Sequence[Sequence[int]]) -> list[float]:
    """Sparsity over all targets right after each event of ``timeline.schedule`` (pure arithmetic).

    Each event's method module replays the budget it asks for (``pruned_after``), so it is what the
    run must measure after each event; NaN where only the run can tell (a profile's total).
    """
    total = sum(math.prod(shape) for shape in target_shapes)
    pruned = [0] * len(target_shapes)
    spans = {span.index: span for span in timeline.stages}
    result = []
    for event in timeline.schedule.events():
        span = spans[event.stage]
        after = method_for(span.kind).pruned_after(event, pruned, target_shapes,
                                                  stage_context(span, timeline.steps_per_epoch))
        if after is None:
            result.append(float("nan"))
            continue
        pruned = list(after)
        result.append(sum(pruned) / total)
    return result


def _fmt_sparsity(value: float | Mapping[str, float]) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return f"{value:.4g}"


def _describe_training(span: StageSpan) -> str:
    assert span.optimizer is not None and span.lr_schedule is not None
    lr = span.lr_schedule
    text = f"{span.optimizer.name} lr {span.optimizer.lr:g}, {lr.kind} per {lr.unit}"
    text += f", warm-up {lr.warmup}" if lr.warmup else ""
    if span.gap is not None:
        g = span.gap
        text += (f"; kappa {g.kappa}, T {g.epochs_per_step}, R {g.rounds}, F {g.finetune_epochs}; "
                 f"{len(span.segments)} optimizer segment(s)")
        text += g.describe()[0]
    elif span.kind == "finetune":
        text += "; masks fixed"
    return text


def _batch_text(config: RunConfig) -> str:
    """What one optimizer step takes, in the task's words (``Task.describe_batch``)."""
    from ..tasks import get_task

    return get_task(config.task.kind).describe_batch(config)


def format_plan(timeline: Timeline, config: RunConfig, target_shapes: Sequence[Sequence[int]]) -> str:
    """Human-readable schedule: stages, epochs, steps, LR, partitions (and a note per block a scheme splits
    between partitions), every mask event and the sparsity after it."""
    lines = [
        f"run {config.name!r}: {timeline.total_epochs} epochs, {timeline.total_steps} optimizer steps "
        f"({timeline.steps_per_epoch} per epoch, {_batch_text(config)})",
        "",
        "stage  kind      epochs        steps            optimizer / event",
    ]
    for span in timeline.stages:
        epochs = f"{span.start_epoch}-{span.end_epoch}" if span.epochs else f"@{span.start_epoch}"
        steps = f"{span.start_step}-{span.start_step + span.steps}" if span.steps else f"@{span.start_step}"
        if span.optimizer is not None:
            what = _describe_training(span)
        else:
            what = "; ".join(
                f"prune {e.method} -> sparsity {_fmt_sparsity(e.sparsity)}"
                + (f" (MT {e.min_threshold}%)" if e.min_threshold is not None else "")
                for e in timeline.schedule.events_at(span.start_step, span.index)
            )
        lines.append(f"{span.index:>5}  {span.kind:<9} {epochs:<13} {steps:<16} {what}")
        if span.gap is not None:
            lines += [f"{'':>7}{line}" for line in span.gap.describe()[1]]
        for part in span.partitions:
            lines.append(f"{'':>7}{part.label}")
        lines += [f"{'':>7}{note}" for note in split_block_notes(span.partitions)]
    lines += ["", "mask events (sparsity over all targets after the event):"]
    for event, after in zip(timeline.schedule.events(), sparsity_after_events(timeline, target_shapes)):
        lines.append(f"  step {event.step:>7} (epoch {event.step // timeline.steps_per_epoch:>3}): "
                     f"{event.kind:<10} {event.label} -> sparsity {after:.4f}")
    if not timeline.schedule.events():
        lines.append("  none (dense training)")
    return "\n".join(lines)


TIMELINE_FILE = "timeline.json"
"""The resolved timeline a run records; reports read its stage labels, spans and phases rather than
re-deriving them."""


def phase_records(span: StageSpan) -> list[dict]:
    """The phases of a stage for ``timeline.json``: ``{"start_epoch", "epochs", "label", "grow"}``.

    Epochs are 0-based global positions; a phase covers ``[start_epoch, start_epoch + epochs)``.
    Invariants: the phases are in order, each has ``epochs >= 1``, they are contiguous and cover
    exactly ``[span.start_epoch, span.end_epoch)``; a zero-length stage (a one-shot prune) has none.
    ``grow`` lists the 0-based indices of the partitions grown during the phase (empty when none).
    A GaP stage's phases are its layout's (:meth:`GaPLayout.phases`: grow steps or rounds, then
    ``finetune``); any other stage is one phase labelled with its kind.
    """
    if span.epochs == 0:
        return []
    gap = span.gap
    if gap is None:
        return [{"start_epoch": span.start_epoch, "epochs": span.epochs, "label": span.kind, "grow": []}]
    phases = gap.phases(span.start_epoch)
    assert sum(p["epochs"] for p in phases) == span.epochs, (span, phases)
    return phases


def partition_record(partition: Partition) -> dict:
    """A partition for ``timeline.json``: 0-based ``index`` (shown as ``P{index + 1}``), the names of
    its target tensors in target order, and ``numel``, its number of weights (elements)."""
    return {"index": partition.index, "targets": list(partition.target_names), "numel": partition.numel}


def timeline_record(timeline: Timeline, config: RunConfig, target_shapes: Sequence[Sequence[int]]) -> dict:
    """``timeline.json``: every stage with its method's report labels, its phases (:func:`phase_records`)
    and, for a partitioned stage, its partitions (:func:`partition_record`; empty list otherwise);
    every mask event with the sparsity ``plan`` predicts after it (None where only the run can tell)."""
    raw_stages = config.model_dump(mode="json")["stages"]
    stages = []
    for span, raw in zip(timeline.stages, raw_stages):
        method = method_for(span.kind)
        stages.append({"index": span.index, "kind": span.kind, "label": method.label(raw),
                       "distribution": method.distribution_label(raw), "start_epoch": span.start_epoch,
                       "epochs": span.epochs, "start_step": span.start_step, "steps": span.steps,
                       "phases": phase_records(span), "partitions": [partition_record(p) for p in span.partitions]})
    events = [
        {"step": e.step, "epoch": e.step // timeline.steps_per_epoch, "stage": e.stage, "kind": e.kind,
         "label": e.label, "after_backward": e.after_backward,
         "sparsity_after": None if math.isnan(after) else after}
        for e, after in zip(timeline.schedule.events(), sparsity_after_events(timeline, target_shapes))
    ]
    return {"steps_per_epoch": timeline.steps_per_epoch, "stages": stages, "events": events}
