"""Pre-flight: every check of a run that needs no data and no trained weights, before any epoch.

``sparsetrain plan`` and the start of ``sparsetrain run`` call :func:`check_run` with the run's
targets (their names and shapes only: the weights are never read) and its timeline, so a config
that must fail, fails in seconds instead of after its dense epochs. Checks, in this order; the
first problem raises a one-line ``UserError`` naming the config key, the bad value and the valid
range:

1. processes (``world_size``, default: the ``WORLD_SIZE`` environment variable that torchrun
   sets): a ``pgap`` stage needs exactly ``kappa`` processes when there is more than one; a run
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

import math
import os
import re
from collections.abc import Mapping, Sequence

from ..config import DSTStage, GaPStage, GMPStage, PruneStage, RunConfig
from ..errors import UserError
from ..sparsity import budgets
from ..sparsity.errors import SparsityError
from ..sparsity.prune import DEFAULT_MIN_THRESHOLD
from ..sparsity.targets import Target
from .timeline import Timeline


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
    for index, stage in enumerate(config.stages):
        key = f"stages.{index}.sparsity"
        if isinstance(stage, PruneStage):
            _check_prune_stage(key, stage, names, shapes)
        elif isinstance(stage, GaPStage):
            if stage.distribution == "non-uniform":
                for part in spans[index].partitions:
                    indices = part.target_indices
                    _check_group(key, f"{stage.kind} non-uniform, partition P{part.index + 1}", stage.sparsity,
                                 [names[i] for i in indices], [shapes[i] for i in indices])
            else:
                _check_per_tensor(key, f"{stage.kind} {stage.distribution}", stage.sparsity, names, shapes,
                                  budgets.per_tensor_counts(shapes, stage.sparsity, stage.distribution))
        elif isinstance(stage, GMPStage):
            if stage.distribution == "global":
                _check_group(key, "gmp global", stage.sparsity, names, shapes)
            else:
                _check_per_tensor(key, "gmp uniform", stage.sparsity, names, shapes,
                                  budgets.uniform_counts([math.prod(s) for s in shapes], stage.sparsity))
        elif isinstance(stage, DSTStage):
            _check_per_tensor(key, f"{stage.kind} {stage.distribution}", stage.sparsity, names, shapes,
                              budgets.per_tensor_counts(shapes, stage.sparsity, stage.distribution))


def check_processes(config: RunConfig, timeline: Timeline, world_size: int) -> None:
    """P-GaP needs one process per partition; data parallelism needs one example per process and batch."""
    if world_size <= 1:
        return
    pgap = [span for span in timeline.stages if span.kind == "pgap"]
    for span in pgap:
        kappa = span.gap.kappa if span.gap is not None else len(span.partitions)
        if kappa != world_size:
            raise UserError(
                f"stages.{span.index} (pgap): P-GaP with kappa={kappa} needs {kappa} processes, got "
                f"WORLD_SIZE={world_size}; valid: torchrun --nproc-per-node {kappa} (one process per partition), "
                f"or no torchrun (the {kappa} workers then train one after another)")
    if not pgap and config.data.batch_size < world_size:
        raise UserError(f"data.batch_size={config.data.batch_size} is the global batch; it must be at least "
                        f"WORLD_SIZE={world_size}")


def _check_prune_stage(key: str, stage: PruneStage, names: list[str], shapes: list[tuple[int, ...]]) -> None:
    numels = [math.prod(s) for s in shapes]
    what = f"prune {stage.method}"
    if stage.method == "gpmt":
        mt = DEFAULT_MIN_THRESHOLD if stage.min_threshold is None else stage.min_threshold
        _check_min_threshold(key, stage.sparsity, mt, numels)
        if budgets.min_threshold_floor(sum(numels), mt) == 0:  # no floor: as for gp, only the total is known
            _check_group(key, what, stage.sparsity, names, shapes)
    elif stage.method == "gp":
        _check_group(key, what, stage.sparsity, names, shapes)
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
                    f"{_last_keeping(numel):.6g} for this layer")
    else:
        counts = (budgets.erk_counts(shapes, stage.sparsity) if stage.method == "erk"
                  else budgets.uniform_counts(numels, stage.sparsity))
        _check_per_tensor(key, what, stage.sparsity, names, shapes, counts)


def _check_min_threshold(key: str, sparsity: float, min_threshold: float, numels: Sequence[int]) -> None:
    """GPMT's feasibility from layer sizes: the engine's check with every layer touched by GP."""
    touched = [1] * len(numels)
    try:
        budgets.min_threshold_counts(numels, touched, sparsity, min_threshold)
    except SparsityError:
        floor = budgets.min_threshold_floor(sum(numels), min_threshold)
        best = budgets.max_min_threshold_sparsity(numels, touched, min_threshold)
        raise SparsityError(
            f"{key}={sparsity!r} (prune gpmt) is unreachable with min_threshold={min_threshold}%: every layer keeps "
            f"at least {floor:,} weights, so the highest reachable sparsity of these {len(numels)} targets "
            f"({sum(numels):,} weights) is {best:.4%}; valid: sparsity <= {math.floor(best * 1e4) / 1e4:.4f}, or a "
            "lower min_threshold") from None


def _last_keeping(numel: int) -> float:
    """Sparsities below this keep at least one of ``numel`` weights under ``round(s * numel)``."""
    return (numel - 0.5) / numel


def _check_per_tensor(key: str, what: str, sparsity: float, names: Sequence[str],
                      shapes: Sequence[tuple[int, ...]], counts: Sequence[int]) -> None:
    """Raise if a per-tensor budget prunes every weight of a target."""
    for name, shape, count in zip(names, shapes, counts):
        numel = math.prod(shape)
        if numel and count >= numel:
            limit = f" (uniform: below {_last_keeping(numel):.6g} for this layer)" if "erk" not in what else ""
            raise SparsityError(
                f"{key}={sparsity!r} ({what}) prunes all {numel} weights of target {name!r} {shape}, which would "
                f"leave that layer no weight; valid: a sparsity that keeps a weight in every target{limit}, or "
                "exclude the layer with targets.exclude")


def _check_group(key: str, what: str, sparsity: float, names: Sequence[str],
                 shapes: Sequence[tuple[int, ...]]) -> None:
    """Raise if one budget over a group of targets prunes all of their weights."""
    total = sum(math.prod(s) for s in shapes)
    if total and budgets.count_for(total, sparsity) >= total:
        raise SparsityError(
            f"{key}={sparsity!r} ({what}) prunes all {total} weights of {len(names)} target(s) from {names[0]!r}, "
            f"which would leave no weight; valid: below {_last_keeping(total):.6g}")
