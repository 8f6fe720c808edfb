"""The task protocol: what the runner, ``plan``, ``eval`` and reports need from a task, and nothing more.

A task owns its datasets, how its model is built, how a batch moves to the device, the training
loss of a batch with the number of examples (or tokens) it counts, evaluation, and its primary
metric with its direction. The runner calls only the methods of :class:`Task`; no other module
names a metric.

Metric keys: :meth:`Task.evaluate` returns names without a split (``{"top1": 97.5, "loss": 0.1}``);
the runner writes them as ``test/<name>`` (and the mean training loss as ``train/loss``) in
``metrics.jsonl`` and ``summary.json``. ``PRIMARY = ("top1", "max")`` names the metric that picks
the "best" checkpoint and fills the reports' headline columns; ``METRIC_LABEL`` says how reports
show it (``title`` and ``short`` column names, ``percent`` when the value is in percent).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import batching
from ..errors import UserError

if TYPE_CHECKING:
    from ..config import RunConfig

TEST_PREFIX = "test/"
TRAIN_LOSS = "train/loss"


class Task:
    """Base class of every task; a subclass is registered under its ``kind`` (see :mod:`.registry`).

    ``Task.build(config)`` reads the data (``train_set``, ``eval_set``); the other methods work on
    batches as the ``DataLoader`` of those datasets yields them (with :attr:`collate_fn`).
    """

    kind: ClassVar[str] = ""
    PRIMARY: ClassVar[tuple[str, str]] = ("loss", "min")
    """(metric name as :meth:`evaluate` returns it, "max" or "min")."""
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "Loss", "short": "Loss", "log": "loss", "percent": False}
    COUNT_UNIT: ClassVar[str] = "examples"
    """What :meth:`loss` counts: ``examples`` (DDP weights ranks by their share of the global batch,
    known without communication) or anything else, e.g. ``tokens`` (the counts are all-reduced)."""
    DEMO: ClassVar[str | None] = None
    """The task's demo for ``sparsetrain demo --task KIND``: a directory of run configs (``*.yaml``, run in
    name order, each naming this task's kind), absolute or relative to the directory of the module that
    defines the task; None: no demo. Read from the class's own body only: a subclass registered under
    another kind does not inherit its parent's demo (whose configs name the parent's kind)."""
    DEMO_DESCRIPTION: ClassVar[str] = ""
    """One line under the demo table's title in ``results.md``: what the metric columns are, on what data
    (own body only, like :attr:`DEMO`). Empty: a line built from :attr:`METRIC_LABEL` and :attr:`PRIMARY`."""
    GLOBAL_SIZE_IS_COUNT: ClassVar[bool] = False
    """Whether the ``global_sizes`` of :meth:`epoch_batches` are in :attr:`COUNT_UNIT`: the sum over ranks and
    micro-batches of the counts :meth:`loss` returns for the step (always so for ``examples``). Then the
    runner weights every rank and micro-batch without communication; a token-counting task whose batching
    knows each sentence's length sets it, and only such a task can take ``training.update_freq`` > 1."""
    MIXUP: ClassVar[bool] = False
    """Whether :meth:`loss` implements ``training.mixup_alpha`` (mixing a batch's inputs and targets);
    a run of a task without it that sets the option is refused by :meth:`check_config`."""
    EPOCH_KEYED_ITEMS: ClassVar[bool] = False
    """Whether the default :meth:`epoch_batches` keys each training item ``(index, epoch)`` instead of ``index``: a
    dataset whose random sampling or augmentation is a pure function of that key (so workers, resume and P-GaP's
    workers draw the same) sets it."""
    collate_fn: Any = None

    def __init__(self, config: RunConfig, train_set: Dataset, eval_set: Dataset) -> None:
        self.config = config
        self.train_set = train_set
        self.eval_set = eval_set

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, config: RunConfig) -> Task:
        """Read the datasets named by ``config.task.dataset``."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Raise a one-line ``UserError`` for a training option this task cannot honour.

        ``run``, ``plan`` and ``eval`` call it before anything is built (:func:`~sparsetrain.runner.setup.build_setup`).
        The base refuses ``training.mixup_alpha`` unless :attr:`MIXUP` is set; a subclass adding checks
        calls ``super().check_config(config)``.
        """
        alpha = config.training.mixup_alpha
        if alpha is not None and not cls.MIXUP:
            raise UserError(f"training.mixup_alpha={alpha}: task {cls.kind!r} cannot mix batches (its loss does "
                            "not implement mixup; classification does); valid here: null or 0 (off)")
        update_freq = config.training.update_freq
        if update_freq > 1 and not (cls.GLOBAL_SIZE_IS_COUNT or cls.COUNT_UNIT == "examples"):
            raise UserError(f"training.update_freq={update_freq}: task {cls.kind!r} counts {cls.COUNT_UNIT} its "
                            "batching does not know in advance (GLOBAL_SIZE_IS_COUNT), so micro-batches cannot be "
                            "weighted; valid here: 1")

    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds the RNG first)."""
        raise NotImplementedError

    @classmethod
    def plan_facts(cls, config: RunConfig) -> tuple[Any, ...] | None:
        """``(epoch size, model, one example input)`` known without reading the data (``plan`` on a dataset
        that is not on this machine), else None: ``plan`` then builds the task. The epoch size is in the
        unit of :meth:`epoch_size`; a task with its own batching appends its steps per epoch as a fourth item."""
        return None

    @classmethod
    def size_unit(cls) -> str:
        """What :meth:`epoch_size` and the FLOPs per example count: ``examples``, or :attr:`COUNT_UNIT` when
        :attr:`GLOBAL_SIZE_IS_COUNT` (a translation task's steps count target tokens)."""
        return cls.COUNT_UNIT if cls.GLOBAL_SIZE_IS_COUNT else "examples"

    @classmethod
    def check_catalog(cls, config: RunConfig, dataset_noun: str, model_noun: str) -> None:
        """Refuse a ``task.dataset.name`` or ``task.model.name`` outside :meth:`catalog`, in one line naming the
        valid ones (``... is not a translation dataset; valid: ...``)."""
        catalog = cls.catalog()
        for key, name, names, noun in (("task.dataset.name", config.task.dataset.name, catalog["datasets"], dataset_noun),
                                       ("task.model.name", config.task.model.name, catalog["models"], model_noun)):
            if names and name not in names:
                raise UserError(f"{key}={name!r} is not a {noun}; valid: {', '.join(names)}")

    @classmethod
    def catalog(cls) -> dict[str, list[str]]:
        """The names ``task.dataset.name`` and ``task.model.name`` may take for this task (``sparsetrain list``):
        ``{"datasets": [...], "models": [...]}``; empty lists when any registered name of a user's will do."""
        return {"datasets": [], "models": []}

    @classmethod
    def describe_batch(cls, config: RunConfig) -> str:
        """What one optimizer step takes, for ``plan``: ``batch 64`` (the global batch) by default."""
        return f"batch {config.data.batch_size}"

    def epoch_size(self) -> int:
        """What the ``global_sizes`` of an epoch add up to (:meth:`size_unit`): training examples by default."""
        return len(self.train_set)

    def example_input(self) -> Any:
        """One training input without the batch axis (``plan`` and FLOP counts run the model on it)."""
        return self.train_set[0][0]

    # ---- batches ------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """Optimizer steps (global batches) in one epoch; the same for every epoch and stream."""
        data = self.config.data
        return batching.steps_per_epoch(len(self.train_set), data.batch_size, data.drop_last)

    def epoch_batches(self, epoch: int, stream: int = 0, rank: int = 0,
                      world_size: int = 1) -> tuple[list[list[int]], list[int]]:
        """``(shards, global_sizes)`` of epoch ``epoch`` (0-based) for rank ``rank`` of ``world_size``.

        ``shards[i]`` lists the ``train_set`` indices this rank loads for step ``i`` of the epoch,
        ``global_sizes[i]`` the examples in that step's global batch (the sum over ranks). Both
        depend only on (config.seed, epoch, stream, rank, world_size), and there are
        :meth:`steps_per_epoch` of them. The default: consecutive ``data.batch_size`` slices of one
        seeded permutation (:func:`sparsetrain.data.batching.epoch_batches`); a task batching by
        another budget (tokens per batch) overrides both methods.
        """
        shards, sizes = batching.epoch_batches(len(self.train_set), self.config.data, self.config.seed, epoch,
                                               stream, rank, world_size)
        if self.EPOCH_KEYED_ITEMS:
            return [[(index, epoch) for index in shard] for shard in shards], sizes
        return shards, sizes

    def step_micro_batches(self, epoch: int, stream: int = 0, rank: int = 0,
                           world_size: int = 1) -> tuple[list[list[list[int]]], list[int]]:
        """``(micro, global_sizes)``: :meth:`epoch_batches` cut for gradient accumulation.

        ``micro[i]`` lists this rank's micro-batches of step ``i`` (each a list of ``train_set``
        indices), ``k = max(1, training.update_freq // world_size)`` of them (the runner refuses an
        ``update_freq`` > 1 that ``world_size`` does not divide); the step's update is the gradient of the
        mean loss over all ranks' micro-batches. ``global_sizes[i]`` is as in :meth:`epoch_batches`.
        The default splits each global batch into ``world_size * k`` parts, rank ``r`` taking parts
        ``r*k .. r*k+k-1``: the union is the batch of ``update_freq = 1``, so accumulation changes
        memory, not the data a step sees. A task whose batches are a fixed token budget (a step =
        ``update_freq`` such batches) overrides this and :meth:`steps_per_epoch`.
        """
        per_rank = max(1, self.config.training.update_freq // world_size)
        parts = [self.epoch_batches(epoch, stream, rank * per_rank + j, world_size * per_rank)
                 for j in range(per_rank)]
        micro = [list(step) for step in zip(*(shards for shards, _ in parts))]
        if any(not shard for step in micro for shard in step):
            raise UserError(f"data.batch_size={self.config.data.batch_size} cannot be split into {world_size * per_rank} "
                            f"non-empty micro-batches (training.update_freq={self.config.training.update_freq}, "
                            f"{world_size} process(es)); valid: batch_size >= {world_size * per_rank}")
        return micro, parts[0][1]

    def to_device(self, batch: Any, device: torch.device, non_blocking: bool = False,
                  channels_last: bool = False) -> Any:
        """The batch as the model and :meth:`loss` take it, on ``device``.

        ``non_blocking``: asynchronous host-to-device copies (the runner asks for them on CUDA when the
        loader pins memory; the copy is ordered before any kernel that reads it on the same stream).
        ``channels_last``: 4-D floating-point tensors (image batches) in channels_last memory format
        (``training.channels_last``); same values, another layout. The runner passes these keywords
        only when they are on, so an override with the older ``(batch, device)`` signature still works.
        """
        options = {name: True for name, on in (("non_blocking", non_blocking), ("channels_last", channels_last)) if on}
        if isinstance(batch, (list, tuple)):  # recursing with the keywords that are on only, as the runner calls
            return type(batch)(self.to_device(b, device, **options) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v, device, **options) for k, v in batch.items()}
        if not isinstance(batch, torch.Tensor):
            return batch
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            return batch.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=non_blocking)

    def batch_inputs(self, batch: Any) -> Any:
        """The model inputs of a batch (what a NaN check looks at first)."""
        return batch[0]

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """``(mean training loss of the batch, how many examples or tokens it averages over)``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
        """Metrics over ``loader`` (its first ``max_batches`` batches when given), names without a split."""
        raise NotImplementedError

    def eval_batches(self, model: nn.Module, loader: DataLoader, device: torch.device,
                     max_batches: int | None = None) -> Iterator[Any]:
        """The batches of ``loader`` on ``device`` (its first ``max_batches`` when given) with ``model`` in
        eval mode; the model's train/eval mode is restored when the iteration ends or is abandoned.

        The loop every :meth:`evaluate` needs; call it under ``torch.no_grad()``.
        """
        was_training = model.training
        model.eval()
        try:
            # Asynchronous copies from a pinned loader's page-locked batches (ordered before their first use).
            transfer = {"non_blocking": True} if device.type == "cuda" and getattr(loader, "pin_memory", False) else {}
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                yield self.to_device(batch, device, **transfer)
        finally:
            model.train(was_training)

    def eval_loader(self, batch_size: int, **loading: Any) -> DataLoader:
        """The evaluation split in batches of ``batch_size``, in order. ``loading``: DataLoader speed options
        (``num_workers``, ``prefetch_factor``, ``pin_memory``) the runner passes when they are on; they must
        not change any batch."""
        return DataLoader(self.eval_set, batch_size=batch_size, collate_fn=self.collate_fn, **loading)

    def write_figures(self, model: nn.Module, run_dir: Path, device: torch.device) -> list[dict[str, str]]:
        """Pictures of the finished model's predictions for the run report, written into ``run_dir`` (on rank 0,
        after the last evaluation); returns ``[{"file": name relative to run_dir, "caption": text}]``, recorded
        in ``summary.json`` under ``figures``. None by default."""
        return []

    # ---- checkpoints -----------------------------------------------------------------------------
    def read_weights(self, path: str | Path) -> dict[str, torch.Tensor] | None:
        """The model state dict in checkpoint file ``path`` with this task's key names, or None: the runner's
        reader then takes it (plain, wrapped and ``module.``-prefixed state dicts, sparsetrain's exports).

        ``eval`` and ``init.checkpoint`` load the result strictly. A task whose community writes other
        key names (fairseq's Transformer, the GaP fork's) maps them here, never unpickling code.
        """
        return None

    @classmethod
    def load_backbone(cls, model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
        """Initialise ``model``'s backbone from ``state``, the state dict the runner read (safely) from ``path``
        (``init.backbone_checkpoint``, loaded before ``init.checkpoint``). Only a task whose models have a
        pretrainable backbone offers it."""
        raise UserError(f"init.backbone_checkpoint={str(path)!r}: task {cls.kind!r} has no backbone to initialise; "
                        "valid: null (the detection task takes a torchvision-format ResNet-50)")

    # ---- the primary metric --------------------------------------------------------------------
    @classmethod
    def primary_key(cls) -> str:
        return TEST_PREFIX + cls.PRIMARY[0]

    @classmethod
    def primary(cls) -> dict[str, Any]:
        """What ``summary.json`` records so reports need not import the task: key, mode, labels."""
        return {"key": cls.primary_key(), "mode": cls.PRIMARY[1], **cls.METRIC_LABEL}

    @classmethod
    def better(cls, a: float, b: float) -> bool:
        """Whether primary value ``a`` is strictly better than ``b``."""
        return a > b if cls.PRIMARY[1] == "max" else a < b

    @classmethod
    def best(cls, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The record with the best primary metric (the first of ties), or None."""
        key = cls.primary_key()
        scored = [r for r in records if isinstance(r.get(key), (int, float))]
        if not scored:
            return None
        pick = max if cls.PRIMARY[1] == "max" else min
        return pick(scored, key=lambda r: r[key])

    @classmethod
    def format_primary(cls, value: float | None, after: str = "") -> str:
        """``top-1 97.50%``-style text of a primary value for log lines (``after`` goes between the two)."""
        label = cls.METRIC_LABEL.get("log", cls.METRIC_LABEL["short"])
        text = "n/a" if value is None else f"{value:.2f}%" if cls.METRIC_LABEL.get("percent") else f"{value:.4f}"
        return f"{label}{after} {text}"

def parse_options(schema: type[BaseModel], raw: dict[str, Any], where: str) -> Any:
    """``raw`` (a task's ``options`` mapping at config key ``where``) validated by ``schema``; a one-line
    ``UserError`` naming the key, the value and the rule otherwise."""
    try:
        return schema(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise UserError(f"unknown key {where}.{key!r}; valid: {', '.join(schema.model_fields)}") from None
        raise UserError(f"{where}.{key}={first.get('input')!r}: {first['msg']}") from None


def as_test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{"top1": x}`` -> ``{"test/top1": x}``."""
    return {TEST_PREFIX + name: value for name, value in metrics.items()}
