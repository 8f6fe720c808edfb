"""What every method module provides, and the context its functions receive.

A method module (one per stage kind, or one for a family of kinds) defines::

    KINDS: tuple[str, ...]          the stage kinds it handles (``kind:`` in a config)
    SCHEMA                          the pydantic stage model (``kind: Literal[...]``)
    TRAINS: bool                    whether its stages train (epochs, optimizer, LR schedule)
    PARTITIONED: bool               whether its stages need the targets split into partitions
    WORKER_KINDS: tuple[str, ...]   kinds trained by parallel workers (P-GaP; the runner's rounds)
    layout(stage, ctx) -> StageLayout             epochs and optimizer segments of the stage
    training_epochs(stage) -> int | None          epochs the stage trains, from its config alone:
                                                  parallel workers counted one by one (P-GaP: kappa
                                                  x R x T + F), 0 for a stage that trains nothing,
                                                  None when only the model tells (GaP: kappa of a
                                                  computed partition scheme without ``kappa``)
    events(stage, ctx) -> list[MaskEvent]         pure: from the stage and the step layout only
    apply(event, masks, ctx) -> None              changes the masks (and zeroes pruned weights)
    pruned_after(event, pruned, shapes, ctx)      per-tensor pruned counts after the event (what
                                                  ``plan`` prints), or None when only a run knows
    evaluates_after(event) -> bool                whether a run evaluates right after the event
    prepare_outputs(event, masks) / write_outputs(event, prepared, masks, run_dir, before, after)
                                                  optional: files of the method's own (GPMT's reference
                                                  files): what to keep before the event is applied, then
                                                  the writing, after the evaluation right after it
    preflight(stage, key, names, shapes, ctx)     refuse, before training, what the targets' names
                                                  and shapes already rule out (``methods.checks``)
    label(stage) / distribution_label(stage)      the report's Method / Sparsity Distribution
                                                  cells, from the stage's config mapping

``methods/__init__.py`` lists the modules in ``REGISTRY``; adding a method is one new module
and one registry line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..sparsity.partitions import Partition


@dataclass(frozen=True)
class StageContext:
    """Where a stage sits in a run: its index, first global step, steps per epoch, the run seed
    (mask seeds default to it) and, for partitioned methods, the resolved partitions."""

    index: int = 0
    start_step: int = 0
    steps_per_epoch: int = 1
    seed: int = 0
    partitions: tuple[Partition, ...] = ()

    @property
    def partition_indices(self) -> list[Sequence[int]]:
        return [p.target_indices for p in self.partitions]


@dataclass(frozen=True)
class StageLayout:
    """A stage's length in epochs and its optimizer segments as (first epoch in the stage, epochs)."""

    epochs: int
    segments: tuple[tuple[int, int], ...] = ()
    detail: Any = None  # method-specific (GaP: its GaPLayout)


def single_segment(epochs: int) -> StageLayout:
    return StageLayout(epochs, ((0, epochs),))


def distribution_cell(stage: Mapping[str, Any]) -> str:
    """The report's Sparsity Distribution cell: the stage's ``distribution``, capitalised (``erk``: ERK), or ``-``."""
    distribution = stage.get("distribution")
    if not distribution:
        return "-"
    return "ERK" if distribution == "erk" else str(distribution).capitalize()


def kind_cell(stage: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """The report's Method cell: ``labels[kind]``, else the kind in capitals."""
    kind = str(stage.get("kind"))
    return labels.get(kind, kind.upper())

