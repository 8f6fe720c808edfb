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
from dataclasses import dataclass, replace

from ..config import (
    DSTStage,
    GaPStage,
    GMPStage,
    LRScheduleConfig,
    OptimizerConfig,
    PruneStage,
    RunConfig,
    TrainStage,
)
from ..methods import GaPLayout, Schedule, dst_events, gap_events, gap_layout, gmp_events, one_shot_prune
from ..sparsity.partitions import Partition
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


def _gap_segments(stage: GaPStage, layout: GaPLayout, start_epoch: int) -> tuple[Segment, ...]:
    if not stage.reset_optimizer and layout.variant == "sgap":
        return (Segment(start_epoch, layout.epochs),)
    steps = layout.gap_epochs // layout.epochs_per_step
    segments = [Segment(start_epoch + k * layout.epochs_per_step, layout.epochs_per_step) for k in range(steps)]
    return (*segments, Segment(start_epoch + layout.gap_epochs, layout.finetune_epochs))


def build_timeline(
    config: RunConfig, steps_per_epoch: int, partitions: Mapping[int, Sequence[Partition]] | None = None
) -> Timeline:
    """Lay out ``config``; ``partitions[i]`` are the partitions of GaP stage ``i`` (needed for kappa)."""
    if steps_per_epoch < 1:
        raise UserError(f"steps_per_epoch={steps_per_epoch} must be >= 1 (is the training set empty?)")
    spans, events = [], []
    epoch = 0
    for index, stage in enumerate(config.stages):
        start_step = epoch * steps_per_epoch
        if isinstance(stage, TrainStage):
            spans.append(StageSpan(index, stage.kind, epoch, stage.epochs, start_step, stage.epochs * steps_per_epoch,
                                   config.stage_optimizer(stage), config.stage_lr_schedule(stage),
                                   (Segment(epoch, stage.epochs),)))
            epoch += stage.epochs
        elif isinstance(stage, PruneStage):
            spans.append(StageSpan(index, stage.kind, epoch, 0, start_step, 0, None, None))
            event = one_shot_prune(start_step, stage.method, stage.sparsity, stage.min_threshold, index)
            if stage.method == "random":
                event = replace(event, seed=config.seed if stage.seed is None else stage.seed)
            events.append(event)
        elif isinstance(stage, (GMPStage, DSTStage)):
            steps = stage.epochs * steps_per_epoch
            spans.append(StageSpan(index, stage.kind, epoch, stage.epochs, start_step, steps,
                                   config.stage_optimizer(stage), config.stage_lr_schedule(stage),
                                   (Segment(epoch, stage.epochs),)))
            if isinstance(stage, GMPStage):
                events += gmp_events(start_step + stage.start_epoch * steps_per_epoch,
                                     start_step + stage.final_epoch * steps_per_epoch,
                                     stage.frequency or steps_per_epoch, stage.initial_sparsity, stage.sparsity,
                                     stage.distribution, index)
            else:
                events += dst_events(stage.kind, start_step, steps, stage.sparsity,
                                     distribution=stage.distribution, update_every=stage.update_every,
                                     drop_fraction=stage.drop_fraction, stop_fraction=stage.stop_fraction,
                                     decay=stage.drop_decay,
                                     seed=config.seed if stage.mask_seed is None else stage.mask_seed, stage=index)
            epoch += stage.epochs
        elif isinstance(stage, GaPStage):
            if partitions is None or index not in partitions:
                raise UserError(f"stages.{index} ({stage.kind}) needs its partitions, resolved against the model")
            parts = tuple(partitions[index])
            seed = config.seed if stage.mask_seed is None else stage.mask_seed
            layout = gap_layout(stage.kind, len(parts), stage.epochs_per_step, stage.rounds, stage.finetune_epochs,
                                stage.grow_order, seed)
            spans.append(StageSpan(index, stage.kind, epoch, layout.epochs, start_step,
                                   layout.epochs * steps_per_epoch, config.stage_optimizer(stage),
                                   config.stage_lr_schedule(stage), _gap_segments(stage, layout, epoch), layout,
                                   parts))
            events += gap_events(layout, start_step, steps_per_epoch, stage.sparsity,
                                 distribution=stage.distribution, init=stage.init, seed=seed,
                                 reset_optimizer=stage.reset_optimizer, stage=index)
            epoch += layout.epochs
    return Timeline(tuple(spans), Schedule(events), steps_per_epoch)


def sparsity_after_events(timeline: Timeline, target_shapes: Sequence[Sequence[int]]) -> list[float]:
    """Sparsity over all targets right after each event of ``timeline.schedule`` (pure arithmetic).

    It replays the budgets the events ask for, so it is what the run must measure after each event.
    A one-shot GP/GPMT/ERK total is booked on the first tensor: only totals are reported, and GaP
    events re-budget every partition, which together cover all targets.
    """
    from ..sparsity.budgets import count_for, per_tensor_counts

    target_numels = [math.prod(shape) for shape in target_shapes]
    total = sum(target_numels)
    pruned = [0] * len(target_numels)
    spans = {span.index: span for span in timeline.stages}
    result = []
    for event in timeline.schedule.events():
        if event.kind == "prune":
            # one-shot budgets fix the total exactly except uniform/profile, which round per tensor
            if event.method in ("gp", "gpmt", "erk"):
                pruned = [0] * len(target_numels)
                pruned[0] = count_for(total, event.sparsity)
            elif event.method in ("uniform", "random"):
                pruned = [count_for(n, event.sparsity) for n in target_numels]
            else:
                result.append(float("nan"))  # a profile's total depends on names; shown by the run
                continue
        elif event.kind == "dst_init":
            pruned = per_tensor_counts(target_shapes, event.sparsity, event.distribution)
        elif event.kind in ("set_update", "rigl_update"):
            pass  # drop and grow keep every tensor's count
        else:
            parts = [p.target_indices for p in spans[event.stage].partitions]
            per_tensor = per_tensor_counts(target_shapes, event.sparsity, event.distribution)
            if event.kind in ("gap_init", "pgap_init"):
                for part in parts:
                    for i in part:
                        pruned[i] = per_tensor[i]
            for p in event.prune:
                if event.distribution == "non-uniform":
                    for i in parts[p]:
                        pruned[i] = 0
                    pruned[parts[p][0]] = count_for(sum(target_numels[i] for i in parts[p]), event.sparsity)
                else:
                    for i in parts[p]:
                        pruned[i] = per_tensor[i]
            if event.grow is not None:
                for i in parts[event.grow]:
                    pruned[i] = 0
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
        if g.variant == "sgap":
            text += "; grow order " + " ".join(f"P{p + 1}" for p in g.grow_sequence)
    elif span.kind == "finetune":
        text += "; masks fixed"
    return text


def format_plan(timeline: Timeline, config: RunConfig, target_shapes: Sequence[Sequence[int]]) -> str:
    """Human-readable schedule: stages, epochs, steps, LR, partitions, every mask event and the sparsity after it."""
    lines = [
        f"run {config.name!r}: {timeline.total_epochs} epochs, {timeline.total_steps} optimizer steps "
        f"({timeline.steps_per_epoch} per epoch, batch {config.data.batch_size})",
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
        if span.gap is not None and span.gap.variant == "pgap":
            lines.append(f"{'':>7}P-GaP: {span.gap.kappa} workers x {span.gap.rounds} round(s) x "
                         f"{span.gap.epochs_per_step} epoch(s) = {span.gap.kappa * span.gap.gap_epochs} worker-epochs, "
                         f"then {span.gap.finetune_epochs} fine-tuning epoch(s)")
        for part in span.partitions:
            lines.append(f"{'':>7}{part.label}")
    lines += ["", "mask events (sparsity over all targets after the event):"]
    for event, after in zip(timeline.schedule.events(), sparsity_after_events(timeline, target_shapes)):
        lines.append(f"  step {event.step:>7} (epoch {event.step // timeline.steps_per_epoch:>3}): "
                     f"{event.kind:<10} {event.label} -> sparsity {after:.4f}")
    if not timeline.schedule.events():
        lines.append("  none (dense training)")
    return "\n".join(lines)
