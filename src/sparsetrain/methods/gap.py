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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..sparsity import MaskSet, per_tensor_counts, per_tensor_smallest_magnitude_masks, smallest_magnitude_masks
from ..sparsity.budgets import count_for
from ..sparsity.random_masks import random_masks
from .events import MaskEvent
from ..errors import UserError


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
               init: str, seed: int, reset_optimizer: bool, stage: int) -> list[MaskEvent]:
    """Every mask event of a GaP stage that starts at global step ``start_step``."""
    per_step = layout.epochs_per_step * steps_per_epoch
    common = dict(distribution=distribution, seed=seed, stage=stage)
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


def prune_partition_(masks: MaskSet, indices: Sequence[int], sparsity: float, distribution: str) -> None:
    """Magnitude-prune the targets ``indices`` back to ``sparsity``; the weights are not touched yet."""
    tensors = [masks.targets[i].param.detach() for i in indices]
    names = [masks.targets[i].name for i in indices]
    if distribution == "non-uniform":
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
                prune_partition_(masks, part, event.sparsity, event.distribution)
    elif event.kind in ("gap_step", "gap_final", "pgap_merge"):
        for p in event.prune:
            prune_partition_(masks, partitions[p], event.sparsity, event.distribution)
    elif event.kind != "pgap_round":
        raise UserError(f"event kind {event.kind!r} is not a GaP event")
    if event.grow is not None:
        masks.grow_(partitions[event.grow])
    masks.apply_()
