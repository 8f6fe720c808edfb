"""Scheduled grow-and-prune (Ma et al., ICLR 2022) as schedules of mask events.

The targets are split into kappa partitions (``sparsity.partitions``). A *step* trains ``T``
epochs with one partition grown (dense) and every other partition at the target sparsity.

S-GaP (cyclic): random init, partition 1 grown, the others random-sparse; then ``R`` rounds that
grow partitions 2..kappa, 1 in turn (or a seeded random order that never grows the same
partition twice in a row); at each step boundary the previously grown partition is pruned back by
magnitude. After the last step the grown partition is pruned and all masks stay fixed for ``F``
fine-tuning epochs. Steps: ``1 + kappa * R``; epochs: ``(1 + kappa * R) * T + F``. This is the
reference's Transformer schedule (its first step plus R rounds).

P-GaP (parallel): random init, every partition random-sparse. Each of ``R`` rounds, worker ``i``
starts from the merged model, grows partition ``i`` and trains ``T`` epochs; the merged model
takes partition ``i`` (and the parameters and buffers it owns) from worker ``i``, orphans from
worker 0, and every partition is pruned back to the target. Then ``F`` fine-tuning epochs.
Epochs per worker: ``R * T + F``.

Default distribution is ``uniform`` (every tensor at the target, the reference's Transformer
and ResNet "uniform" rows). ``non-uniform`` prunes the partition being pruned by one magnitude
threshold over that partition (the reference code's ``--sp-global-weight-sparsity`` mechanism),
so layer budgets differ while the partition, and hence the model, stays exactly at the target;
``erk`` gives every tensor its ERK budget. The regrown weights start at zero and their optimizer
state is zero, as in the reference code.

``pattern`` (``"N:M"`` or ``"RxC"`` blocks, see ``sparsity.patterns``) makes every prune-back
structured: ``uniform`` prunes each tensor to its pattern budget, ``non-uniform`` ranks the block
scores of the partition together (N:M: ``uniform`` only; ``erk`` is refused with a pattern). The
``random`` init masks are not patterned, but every partition is pruned back by the pattern before
the stage ends (S-GaP grows, then prunes, every partition at least once; P-GaP prunes all at
every merge), so the final masks follow the pattern.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ..sparsity import MaskSet, per_tensor_counts, per_tensor_smallest_magnitude_masks, smallest_magnitude_masks
from ..sparsity.budgets import count_for
from ..sparsity.patterns import check_pattern_sparsity, parse_pattern, pattern_counts, pattern_masks
from ..sparsity.random_masks import random_masks
from .base import StageContext, StageLayout, distribution_cell, kind_cell
from .checks import check_group, check_per_tensor
from .events import MaskEvent
from .schema import PartitionConfig, StrictModel, with_pattern_sparsity
from ..errors import UserError


class GaPStage(StrictModel):
    """Scheduled grow-and-prune. ``sgap`` grows one partition at a time (cyclic or seeded random order);
    ``pgap`` grows every partition at once on kappa workers and merges them after each round."""

    kind: Literal["sgap", "pgap"]
    sparsity: float = Field(ge=0, lt=1)
    partitions: PartitionConfig = PartitionConfig()
    epochs_per_step: int = Field(ge=1, description="T: epochs each grown partition trains")
    rounds: int = Field(1, ge=1, description="R: S-GaP grows every partition R times after the first step; "
                        "P-GaP runs R parallel rounds")
    finetune_epochs: int = Field(ge=0, description="F: epochs with all masks fixed at the end (0: none; e.g. a "
                                 "'finetune' stage follows, the same one the rows GaP is compared with use)")
    grow_order: Literal["cyclic", "random"] = "cyclic"
    distribution: Literal["uniform", "non-uniform", "erk"] = Field(
        "uniform", description="uniform: every tensor at sparsity; non-uniform: global magnitude within the "
        "partition being pruned; erk: per-tensor ERK budgets")
    reset_optimizer: bool = Field(True, description="fresh optimizer and LR warm-up at every GaP step (reference)")
    init: Literal["random", "magnitude"] = Field(
        "random", description="random: seeded random masks (reference); magnitude: prune the current weights")
    mask_seed: int | None = Field(None, ge=0, description="seed of the initial random masks (default: run seed)")
    optimizer: dict[str, Any] = Field(default_factory=dict)
    lr_schedule: dict[str, Any] = Field(default_factory=dict)
    pattern: str | None = Field(None, description="structured prune-backs: 'N:M' (e.g. '2:4') or 'RxC' blocks")

    _pattern_sparsity = model_validator(mode="before")(classmethod(with_pattern_sparsity))

    @model_validator(mode="after")
    def _consistent(self) -> GaPStage:
        if self.kind == "pgap" and self.grow_order != "cyclic":
            raise ValueError("grow_order only applies to sgap: every P-GaP worker grows its own partition")
        if self.pattern is not None:
            pattern = parse_pattern(self.pattern)
            check_pattern_sparsity(pattern, self.sparsity)
            allowed = ("uniform",) if pattern.kind == "nm" else ("uniform", "non-uniform")
            if self.distribution not in allowed:
                raise ValueError(f"distribution={self.distribution!r} does not support pattern {self.pattern!r}; "
                                 f"valid with it: {', '.join(allowed)}")
        return self


KINDS = ("sgap", "pgap")
SCHEMA = GaPStage
TRAINS = True
PARTITIONED = True
WORKER_KINDS = ("pgap",)
"""P-GaP's rounds train kappa workers on copies of the model; the runner carries them out."""
LABELS = {"sgap": "S-GaP", "pgap": "P-GaP"}


@dataclass(frozen=True)
class GaPLayout:
    """Where a GaP stage's steps fall; ``grow_sequence`` lists the partition grown in each S-GaP step."""

    variant: str
    kappa: int
    epochs_per_step: int
    rounds: int
    finetune_epochs: int
    grow_sequence: tuple[int, ...]

    @property
    def gap_epochs(self) -> int:
        steps = len(self.grow_sequence) if self.variant == "sgap" else self.rounds
        return steps * self.epochs_per_step

    @property
    def epochs(self) -> int:
        return self.gap_epochs + self.finetune_epochs

    def phases(self, start_epoch: int) -> list[dict]:
        """``{"start_epoch", "epochs", "label", "grow"}`` per step, then the fine-tuning, from ``start_epoch``.

        Epochs are 0-based global positions; the phases are contiguous and cover the stage's
        ``epochs`` exactly. S-GaP: one per grow step (``grow P3``, 1-based as in ``plan``); P-GaP:
        one per round (every worker grows its own partition; epochs are one worker's). ``grow``
        lists the 0-based partitions grown in the phase.
        """
        if self.variant == "sgap":
            steps = [(f"grow P{p + 1}", [p]) for p in self.grow_sequence]
        else:
            steps = [(f"round {r + 1}: {self.kappa} workers", list(range(self.kappa))) for r in range(self.rounds)]
        phases = [{"start_epoch": start_epoch + k * self.epochs_per_step, "epochs": self.epochs_per_step,
                   "label": label, "grow": grow} for k, (label, grow) in enumerate(steps)]
        if self.finetune_epochs:
            phases.append({"start_epoch": start_epoch + self.gap_epochs, "epochs": self.finetune_epochs,
                           "label": "finetune", "grow": []})
        return phases

    def describe(self) -> tuple[str, list[str]]:
        """What ``plan`` shows: text for the stage's line (the S-GaP grow order) and lines under it."""
        if self.variant == "sgap":
            return "; grow order " + " ".join(f"P{p + 1}" for p in self.grow_sequence), []
        return "", [f"P-GaP: {self.kappa} workers x {self.rounds} round(s) x {self.epochs_per_step} epoch(s) = "
                    f"{self.kappa * self.gap_epochs} worker-epochs, then {self.finetune_epochs} fine-tuning epoch(s)"]


def sgap_grow_sequence(kappa: int, rounds: int, order: str, seed: int) -> tuple[int, ...]:
    """Partition grown in each S-GaP step: ``0`` first, then ``rounds`` rounds over all partitions."""
    sequence = [0]
    for round_index in range(rounds):
        if order == "cyclic":
            cycle = list(range(1, kappa)) + [0]
        else:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + round_index)
            cycle = torch.randperm(kappa, generator=generator).tolist()
            if kappa > 1 and cycle[0] == sequence[-1]:
                cycle[0], cycle[1] = cycle[1], cycle[0]
        sequence += cycle
    return tuple(sequence)


def gap_layout(variant: str, kappa: int, epochs_per_step: int, rounds: int, finetune_epochs: int,
               grow_order: str = "cyclic", seed: int = 0) -> GaPLayout:
    sequence = sgap_grow_sequence(kappa, rounds, grow_order, seed) if variant == "sgap" else ()
    return GaPLayout(variant, kappa, epochs_per_step, rounds, finetune_epochs, sequence)


def gap_events(layout: GaPLayout, start_step: int, steps_per_epoch: int, sparsity: float, *, distribution: str,
               init: str, seed: int, reset_optimizer: bool, stage: int, pattern: str | None = None) -> list[MaskEvent]:
    """Every mask event of a GaP stage that starts at global step ``start_step``."""
    per_step = layout.epochs_per_step * steps_per_epoch
    common: dict[str, Any] = dict(distribution=distribution, seed=seed, stage=stage, pattern=pattern)
    if layout.variant == "sgap":
        grown = layout.grow_sequence
        events = [MaskEvent(start_step, "gap_init", sparsity, grow=grown[0], init=init, resets_optimizer=True,
                            label=f"init ({init} masks), grow P{grown[0] + 1}", **common)]
        for k in range(1, len(grown)):
            events.append(MaskEvent(start_step + k * per_step, "gap_step", sparsity, grow=grown[k],
                                    prune=(grown[k - 1],), resets_optimizer=reset_optimizer,
                                    label=f"prune P{grown[k - 1] + 1}, grow P{grown[k] + 1}", **common))
        events.append(MaskEvent(start_step + len(grown) * per_step, "gap_final", sparsity, prune=(grown[-1],),
                                resets_optimizer=reset_optimizer, label=f"prune P{grown[-1] + 1}; fine-tune",
                                **common))
        return events
    events = [MaskEvent(start_step, "pgap_init", sparsity, init=init, resets_optimizer=True,
                        label=f"init ({init} masks) on every partition", **common)]
    everything = tuple(range(layout.kappa))
    for r in range(layout.rounds):
        events.append(MaskEvent(start_step + r * per_step, "pgap_round", sparsity, resets_optimizer=True,
                                label=f"round {r + 1}: worker i grows P(i+1) on a copy", **common))
        events.append(MaskEvent(start_step + (r + 1) * per_step, "pgap_merge", sparsity, prune=everything,
                                resets_optimizer=True, label=f"round {r + 1}: merge partitions, prune all", **common))
    return events


# ---- carrying events out ----------------------------------------------------------------------


def tensor_counts(masks: MaskSet, sparsity: float, distribution: str) -> list[int]:
    """Per-tensor pruned counts of the uniform or ERK distribution over all targets."""
    return per_tensor_counts([t.shape for t in masks.targets], sparsity, distribution)


def prune_partition_(masks: MaskSet, indices: Sequence[int], sparsity: float, distribution: str,
                     pattern: str | None = None) -> None:
    """Magnitude-prune the targets ``indices`` back to ``sparsity``; the weights are not touched yet.

    With ``pattern``: ``uniform`` gives each tensor its pattern budget, ``non-uniform`` ranks the
    partition's block scores together (``patterns.pattern_masks`` with ``uniform`` / ``gp``)."""
    tensors = [masks.targets[i].param.detach() for i in indices]
    names = [masks.targets[i].name for i in indices]
    if pattern is not None:
        new, _ = pattern_masks(tensors, pattern, sparsity, "gp" if distribution == "non-uniform" else "uniform",
                               names)
    elif distribution == "non-uniform":
        k = count_for(sum(t.numel() for t in tensors), sparsity)
        new = smallest_magnitude_masks(tensors, k, names)
    else:
        counts = tensor_counts(masks, sparsity, distribution)
        new = per_tensor_smallest_magnitude_masks(tensors, [counts[i] for i in indices], names)
    for i, mask in zip(indices, new):
        masks.set_(i, mask)


def apply_gap_event(event: MaskEvent, masks: MaskSet, partitions: Sequence[Sequence[int]]) -> None:
    """Carry out a GaP event on ``masks`` and zero the newly pruned weights.

    ``partitions[p]`` lists the target indices of partition ``p``. P-GaP's merge of worker weights
    happens before this is called; here it only prunes.
    """
    if event.kind in ("gap_init", "pgap_init"):
        everything = [i for part in partitions for i in part]
        if event.init == "random":
            counts = tensor_counts(masks, event.sparsity, event.distribution)
            fresh = random_masks([t.param for t in masks.targets], counts, event.seed)
            for i in everything:
                masks.set_(i, fresh[i])
        else:
            for part in partitions:
                prune_partition_(masks, part, event.sparsity, event.distribution, event.pattern)
    elif event.kind in ("gap_step", "gap_final", "pgap_merge"):
        for p in event.prune:
            prune_partition_(masks, partitions[p], event.sparsity, event.distribution, event.pattern)
    elif event.kind != "pgap_round":
        raise UserError(f"event kind {event.kind!r} is not a GaP event")
    if event.grow is not None:
        masks.grow_(partitions[event.grow])
    masks.apply_()


# ---- the method module's interface (see methods/base.py) -------------------------------------


def _seed(stage: GaPStage, ctx: StageContext) -> int:
    return ctx.seed if stage.mask_seed is None else stage.mask_seed


def layout(stage: GaPStage, ctx: StageContext) -> StageLayout:
    """Epochs and optimizer segments: one per GaP step (P-GaP: per round) and one for fine-tuning,
    or a single segment for S-GaP without ``reset_optimizer``."""
    if not ctx.partitions:
        raise UserError(f"stages.{ctx.index} ({stage.kind}) needs its partitions, resolved against the model")
    gap = gap_layout(stage.kind, len(ctx.partitions), stage.epochs_per_step, stage.rounds, stage.finetune_epochs,
                     stage.grow_order, _seed(stage, ctx))
    if not stage.reset_optimizer and gap.variant == "sgap":
        return StageLayout(gap.epochs, ((0, gap.epochs),), gap)
    steps = gap.gap_epochs // gap.epochs_per_step
    segments = [(k * gap.epochs_per_step, gap.epochs_per_step) for k in range(steps)]
    tail = ((gap.gap_epochs, gap.finetune_epochs),) if gap.finetune_epochs else ()
    return StageLayout(gap.epochs, (*segments, *tail), gap)


def configured_kappa(partitions: PartitionConfig) -> int | None:
    """The number of partitions when the config alone tells it: ``kappa``, the length of a regex list or
    of a preset; None for a computed scheme without ``kappa`` (e.g. ``stages``: it depends on the model)."""
    from ..sparsity.partitions import PRESETS

    if partitions.kappa is not None:
        return partitions.kappa
    if isinstance(partitions.scheme, list):
        return len(partitions.scheme)
    return len(PRESETS[partitions.scheme]) if partitions.scheme in PRESETS else None


def training_epochs(stage: GaPStage) -> int | None:
    """Epochs of training, P-GaP workers counted one by one; None when kappa depends on the model.

    S-GaP trains ``1 + R * kappa`` steps of ``T`` epochs, then ``F``; P-GaP trains kappa workers for
    ``R * T`` epochs each, then ``F`` on the merged model.
    """
    kappa = configured_kappa(stage.partitions)
    if kappa is None:
        return None
    gap = gap_layout(stage.kind, kappa, stage.epochs_per_step, stage.rounds, stage.finetune_epochs)
    workers = kappa if stage.kind in WORKER_KINDS else 1
    return workers * gap.gap_epochs + gap.finetune_epochs


def events(stage: GaPStage, ctx: StageContext) -> list[MaskEvent]:
    gap = layout(stage, ctx).detail
    return gap_events(gap, ctx.start_step, ctx.steps_per_epoch, stage.sparsity, distribution=stage.distribution,
                      init=stage.init, seed=_seed(stage, ctx), reset_optimizer=stage.reset_optimizer,
                      stage=ctx.index, pattern=stage.pattern)


def apply(event: MaskEvent, masks: MaskSet, ctx: StageContext) -> None:
    apply_gap_event(event, masks, ctx.partition_indices)


def pruned_after(event: MaskEvent, pruned: list[int], shapes: Sequence[Sequence[int]],
                 ctx: StageContext) -> list[int] | None:
    """GaP events re-budget whole partitions, which together cover all targets.

    With a pattern, prune-backs (and magnitude init) are the pattern's exact counts per partition;
    random init masks keep the unpatterned per-tensor counts."""
    pruned = list(pruned)
    numels = [math.prod(shape) for shape in shapes]
    parts = ctx.partition_indices
    per_tensor = per_tensor_counts(shapes, event.sparsity, event.distribution)

    def patterned(part: Sequence[int]) -> list[int]:
        assert event.pattern is not None
        method = "gp" if event.distribution == "non-uniform" else "uniform"
        return pattern_counts(parse_pattern(event.pattern), [shapes[i] for i in part], event.sparsity, method)

    if event.kind in ("gap_init", "pgap_init"):
        for part in parts:
            counts = patterned(part) if event.pattern is not None and event.init != "random" else None
            for j, i in enumerate(part):
                pruned[i] = per_tensor[i] if counts is None else counts[j]
    for p in event.prune:
        if event.pattern is not None:
            for i, count in zip(parts[p], patterned(parts[p])):
                pruned[i] = count
        elif event.distribution == "non-uniform":
            for i in parts[p]:
                pruned[i] = 0
            pruned[parts[p][0]] = count_for(sum(numels[i] for i in parts[p]), event.sparsity)
        else:
            for i in parts[p]:
                pruned[i] = per_tensor[i]
    if event.grow is not None:
        for i in parts[event.grow]:
            pruned[i] = 0
    return pruned


def evaluates_after(event: MaskEvent) -> bool:
    return event.kind != "pgap_round"  # bookkeeping: the workers have not trained yet


def label(stage: Mapping[str, Any]) -> str:
    return kind_cell(stage, LABELS)


distribution_label = distribution_cell


def preflight(stage: GaPStage, key: str, names: Sequence[str], shapes: Sequence[tuple[int, ...]],
              ctx: StageContext) -> None:
    """No budget known to empty a layer (non-uniform: a whole partition)."""
    if stage.pattern is not None and stage.distribution == "uniform":
        check_per_tensor(key, f"{stage.kind} pattern {stage.pattern}", stage.sparsity, names, shapes,
                         pattern_counts(parse_pattern(stage.pattern), shapes, stage.sparsity, "uniform"))
    elif stage.distribution == "non-uniform":
        for part in ctx.partitions:
            indices = part.target_indices
            check_group(key, f"{stage.kind} non-uniform, partition P{part.index + 1}", stage.sparsity,
                        [names[i] for i in indices], [shapes[i] for i in indices])
    else:
        check_per_tensor(key, f"{stage.kind} {stage.distribution}", stage.sparsity, names, shapes,
                         per_tensor_counts(shapes, stage.sparsity, stage.distribution))
