"""Pre-flight: every check of a run that needs no data and no trained weights, before any epoch.

``sparsetrain plan`` and the start of ``sparsetrain run`` call :func:`check_run` with the run's
targets (their names and shapes only: the weights are never read) and its timeline, so a config
that must fail, fails in seconds instead of after its dense epochs. Checks, in this order; the
first problem raises a one-line ``UserError`` naming the config key, the bad value and the valid
range:

1. processes (``world_size``, default: the ``WORLD_SIZE`` environment variable that torchrun
   sets): a ``pgap`` stage needs ``kappa * g`` processes (g >= 1 per worker, ``data.batch_size >= g``)
   when there is more than one; a run
   without P-GaP is data parallel and needs ``data.batch_size >= WORLD_SIZE``;
2. every stage that sets masks, in stage order:

   * ``prune`` with ``gpmt``: the requested sparsity must be reachable with the minimum threshold.
     The reachable maximum follows from the layer sizes alone: every layer larger than the floor
     ``m = floor(N * MT / 100)`` pruned down to ``m`` (the engine's bound when global magnitude
     pruning touches every such layer, so a sparsity refused here always fails at the event too;
     a sparsity accepted here can still fail there if GP leaves a layer untouched);
   * ``prune`` with ``profile``: every target matches a pattern and every pattern a target;
   * no stage may prune every weight of a target when that is known without weights: per-tensor
     budgets (``uniform``, ``random``, ``erk``; GaP ``uniform``/``erk``; GMP ``uniform``; SET/RigL)
     checked per target at the stage's final sparsity, one budget over a group (``gp``, GMP
     ``global``: all targets; GaP ``non-uniform``: each partition) checked for the whole group.
     GPMT keeps at least the floor ``m`` per layer, so it cannot empty a layer when ``m >= 1``.

Partitions (scheme, kappa, number of targets) and LR schedules are checked while the timeline is
built (``resolve_timeline``), targets while they are selected, so they fail before this runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..config import RunConfig
from ..errors import UserError
from ..methods import method_for, trains_with_workers
from ..sparsity.targets import Target
from .distributed import pgap_world_error
from .timeline import Timeline, stage_context


def world_size_from_environment() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset); anything but a positive integer is an error."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"environment variable WORLD_SIZE={text!r} must be an integer >= 1 (torchrun sets it)")
    return value


def check_run(config: RunConfig, targets: Sequence[Target], timeline: Timeline, world_size: int | None = None) -> None:
    """Raise ``UserError`` on the first problem of ``config`` that shows without data (module docstring).

    ``targets`` are the run's targets in order (only names and shapes are used), ``timeline`` is
    ``resolve_timeline(config, targets, ...)``, ``world_size`` the number of processes (default:
    ``WORLD_SIZE``).
    """
    world = world_size_from_environment() if world_size is None else world_size
    check_processes(config, timeline, world)
    names = [t.name for t in targets]
    shapes = [tuple(t.shape) for t in targets]
    spans = {span.index: span for span in timeline.stages}
    for index, stage in enumerate(config.stages):  # each method module checks its own stages
        method_for(stage.kind).preflight(stage, f"stages.{index}.sparsity", names, shapes,
                                         stage_context(spans[index], timeline.steps_per_epoch, config.seed))


def check_processes(config: RunConfig, timeline: Timeline, world_size: int) -> None:
    """P-GaP needs g >= 1 processes per partition; data parallelism (over every rank, or over each P-GaP worker's
    g ranks) needs one example per process and batch and the options of :func:`data_parallel_error`. Checked
    before anything trains, so a P-GaP stage after hours of dense training cannot fail on them."""
    if world_size <= 1:
        return
    pgap = [span for span in timeline.stages if trains_with_workers(span.kind)]
    for span in pgap:
        kappa = span.gap.kappa if span.gap is not None else len(span.partitions)
        problem = pgap_world_error(kappa, world_size)
        if problem is not None:
            raise UserError(f"stages.{span.index} ({span.kind}): {problem}")
        group_size = world_size // kappa  # each worker's global batch is split among its g processes
        if config.data.batch_size < group_size:
            raise UserError(f"data.batch_size={config.data.batch_size} is each P-GaP worker's global batch; it must "
                            f"be at least g={group_size} (WORLD_SIZE={world_size} / kappa={kappa})")
        problem = data_parallel_error(config, group_size, f"{group_size} processes per P-GaP worker "
                                                          f"(WORLD_SIZE={world_size})") if group_size > 1 else None
        if problem is not None:
            raise UserError(problem)
    if not pgap:
        if config.data.batch_size < world_size:
            raise UserError(f"data.batch_size={config.data.batch_size} is the global batch; it must be at least "
                            f"WORLD_SIZE={world_size}")
        problem = data_parallel_error(config, world_size, f"WORLD_SIZE={world_size}")
        if problem is not None:
            raise UserError(problem)


def data_parallel_error(config: RunConfig, processes: int, ranks: str) -> str | None:
    """The one-line complaint about training options that DDP over ``processes`` ranks (described by ``ranks``)
    cannot honour, or None."""
    if config.training.on_nonfinite == "skip":  # one rank skipping a backward would stall the others'
        return (f"training.on_nonfinite='skip' is not supported with data parallelism ({ranks}): the ranks would "
                "disagree on which updates to skip; use 'stop' or 'continue'")
    update_freq = config.training.update_freq
    if update_freq > 1 and update_freq % processes:
        return (f"training.update_freq={update_freq} micro-batches per step are divided among {ranks}; valid: 1 or "
                f"a multiple of {processes}")
    return None
