"""The whole run laid out before training: stages on the epoch/step axis and every mask event.

Built from the config and the number of optimizer steps per epoch, it is what ``sparsetrain plan``
prints and what the training loop follows, so the plan and the events that happen cannot differ.
Epochs and steps are 0-based global positions; a stage covers ``[start, start + length)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import LRScheduleConfig, OptimizerConfig, PruneStage, RunConfig, TrainStage
from ..methods import MaskEvent, Schedule, one_shot_prune


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

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.epochs


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


def build_timeline(config: RunConfig, steps_per_epoch: int) -> Timeline:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1 (is the training set empty?)")
    spans, events = [], []
    epoch = 0
    for index, stage in enumerate(config.stages):
        start_step = epoch * steps_per_epoch
        if isinstance(stage, TrainStage):
            spans.append(StageSpan(index, stage.kind, epoch, stage.epochs, start_step, stage.epochs * steps_per_epoch,
                                   config.stage_optimizer(stage), config.stage_lr_schedule(stage)))
            epoch += stage.epochs
        elif isinstance(stage, PruneStage):
            spans.append(StageSpan(index, stage.kind, epoch, 0, start_step, 0, None, None))
            events.append(one_shot_prune(start_step, stage.method, stage.sparsity, stage.min_threshold))
    return Timeline(tuple(spans), Schedule(events), steps_per_epoch)


def _fmt_sparsity(value: float | Mapping[str, float]) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return f"{value:.4g}"


def format_plan(timeline: Timeline, config: RunConfig) -> str:
    """Human-readable schedule: stages, epochs, steps, LR, every mask event and the sparsity after it."""
    lines = [
        f"run {config.name!r}: {timeline.total_epochs} epochs, {timeline.total_steps} optimizer steps "
        f"({timeline.steps_per_epoch} per epoch, batch {config.data.batch_size})",
        "",
        "stage  kind      epochs        steps            optimizer / event",
    ]
    events_by_step: dict[int, list[MaskEvent]] = {}
    for event in timeline.schedule.events():
        events_by_step.setdefault(event.step, []).append(event)
    for span in timeline.stages:
        epochs = f"{span.start_epoch}-{span.end_epoch}" if span.epochs else f"@{span.start_epoch}"
        steps = f"{span.start_step}-{span.start_step + span.steps}" if span.steps else f"@{span.start_step}"
        if span.optimizer is not None and span.lr_schedule is not None:
            lr = span.lr_schedule
            what = (f"{span.optimizer.name} lr {span.optimizer.lr:g}, {lr.kind} per {lr.unit}"
                    + (f", warm-up {lr.warmup}" if lr.warmup else "") + "; masks fixed" * (span.kind == "finetune"))
        else:
            what = "; ".join(
                f"prune {e.method} -> sparsity {_fmt_sparsity(e.sparsity)}"
                + (f" (MT {e.min_threshold}%)" if e.min_threshold is not None else "")
                for e in events_by_step.get(span.start_step, []) if e.kind == "prune"
            )
        lines.append(f"{span.index:>5}  {span.kind:<9} {epochs:<13} {steps:<16} {what}")
    lines += ["", "mask events:"]
    for event in timeline.schedule.events():
        lines.append(f"  step {event.step:>7} (epoch {event.step // timeline.steps_per_epoch}): {event.kind} "
                     f"{event.label} -> sparsity {_fmt_sparsity(event.sparsity)}")
    if not timeline.schedule.events():
        lines.append("  none (dense training)")
    return "\n".join(lines)
