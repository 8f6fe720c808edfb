"""What ``run``, ``plan`` and ``eval`` build from a config before anything trains, built in one place.

:func:`build_setup` lets the task refuse options it cannot honour (``Task.check_config``), seeds
the RNGs, pins the thread count, builds the task (reading its data, or only the facts ``plan``
needs when the task can tell them without the data), the model, its targets, and, for ``run``
and ``plan``, the timeline, then runs the pre-flight checks. So the three commands cannot
disagree on the model, the targets or the layout of a config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..data.batching import steps_per_epoch as batches_per_epoch
from ..errors import UserError
from ..methods import method_for
from ..sparsity import Target, select_targets
from ..sparsity.partitions import partition_targets
from ..sparsity.targets import parameter_count
from ..tasks import build_task, get_task
from ..tasks.base import Task
from .checkpoint import load_model_weights, load_state_dict_from, load_state_into
from .components import build_lr_schedule, parse_selectors, seed_everything
from .preflight import check_run
from .timeline import Timeline, build_timeline


@dataclass
class RunSetup:
    """A config made concrete.

    ``task`` is None only for a ``plan`` that laid the run out from the task's ``plan_facts``
    (the dataset is not read); ``timeline`` is None when it was not asked for (``eval``).
    ``num_train`` is an epoch's size (training examples, or the task's count unit: ``Task.size_unit``),
    ``steps_per_epoch`` optimizer steps per epoch.
    """

    config: RunConfig
    task: Task | None
    model: nn.Module
    targets: list[Target]
    example_input: Any
    num_train: int
    steps_per_epoch: int
    timeline: Timeline | None
    model_numel: int
    kept_dense: list[tuple[str, str]]
    """``(weight name, why)`` of each selected weight the config keeps dense (``targets.dense_first/last``)."""


def build_setup(config: RunConfig, *, device: torch.device | None = None, read_data: bool = True,
                load_init: bool = True, lay_out: bool = True) -> RunSetup:
    """Build the task, model (on ``device``, CPU when None), targets and (``lay_out``) the checked timeline.

    ``read_data=False`` (``plan``) uses ``Task.plan_facts`` when the task offers it, so a config
    naming a dataset that is not on this machine can still be planned. ``load_init`` loads
    ``init.checkpoint`` into the model (``eval`` loads its own checkpoint instead).
    """
    get_task(config.task.kind).check_config(config)  # options the task cannot honour, before anything is built
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    facts = None if read_data else get_task(config.task.kind).plan_facts(config)
    if facts is not None:
        task = None
        num_train, model, example, *task_spe = facts
        spe = task_spe[0] if task_spe else batches_per_epoch(num_train, config.data.batch_size, config.data.drop_last)
    else:
        task = build_task(config)
        model, example = task.build_model(), task.example_input()
        num_train, spe = task.epoch_size(), task.steps_per_epoch()
    if device is not None:
        model = model.to(device)
    if load_init and config.init.backbone_checkpoint:
        path = config.init.backbone_checkpoint
        get_task(config.task.kind).load_backbone(model, load_state_dict_from(path), path)
    if load_init and config.init.checkpoint:
        load_weights(task, model, config.init.checkpoint)
    targets, kept_dense = config_targets(model, config)
    timeline = None
    if lay_out:
        timeline = resolve_timeline(config, targets, num_train, spe)
        check_run(config, targets, timeline)  # what can be refused without data, before any epoch
    return RunSetup(config, task, model, targets, example, num_train, spe, timeline, parameter_count(model),
                    kept_dense)


def load_weights(task: Task | None, model: nn.Module, path: str) -> None:
    """Load checkpoint ``path`` strictly into ``model``, read by the task when it maps key names."""
    state = task.read_weights(path) if task is not None else None
    if state is None:
        load_model_weights(model, path)
    else:
        load_state_into(model, state, path)


def config_targets(model: nn.Module, config: RunConfig) -> tuple[list[Target], list[tuple[str, str]]]:
    """The targets of ``config`` and the ``(name, why)`` of each selected weight kept dense instead."""
    selected = select_targets(model, parse_selectors(config.targets.include), parse_selectors(config.targets.exclude))
    ends = [(0, "dense_first", "the first target")] if config.targets.dense_first else []
    if config.targets.dense_last:
        ends.append((len(selected) - 1, "dense_last", "the last target"))
    drop = {index for index, _, _ in ends}
    if len(selected) - len(drop) < 1:
        raise UserError(f"targets.dense_first/dense_last leave no target: the selection has {len(selected)} "
                        f"weight(s) ({', '.join(t.name for t in selected)})")
    kept_dense = [(selected[i].name, f"targets.{key}: {what}") for i, key, what in ends]
    targets = [t for i, t in enumerate(selected) if i not in drop]
    return targets, kept_dense


def resolve_timeline(config: RunConfig, targets: list[Target], num_train_examples: int,
                     steps_per_epoch: int | None = None) -> Timeline:
    """The run's timeline with GaP partitions resolved against the model's targets; LR schedules checked.

    ``steps_per_epoch`` is the task's (default: ``data.batch_size`` batches of the training examples).
    """
    partitions = {
        i: partition_targets(targets, stage.partitions.scheme, stage.partitions.kappa)
        for i, stage in enumerate(config.stages) if method_for(stage.kind).PARTITIONED
    }
    spe = steps_per_epoch
    if spe is None:
        spe = batches_per_epoch(num_train_examples, config.data.batch_size, config.data.drop_last)
    if spe < 1 and num_train_examples > 0:
        raise UserError(f"data.batch_size={config.data.batch_size} with data.drop_last=true leaves no full batch of "
                        f"the {num_train_examples} training examples; valid: batch_size <= {num_train_examples}, "
                        "or drop_last: false")
    timeline = build_timeline(config, spe, partitions)
    for span in timeline.stages:  # a schedule that does not fit its segment fails before training
        for segment in span.segments:
            try:
                build_lr_schedule(span.lr_schedule, span.optimizer.lr, segment.epochs, spe)
            except ValueError as exc:
                raise UserError(f"stages.{span.index}.lr_schedule: {exc} ({segment.epochs} epochs of "
                                 f"{spe} steps)") from None
    return timeline
