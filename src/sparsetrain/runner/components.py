"""Small builders the training loop uses: device, optimizer, LR schedule, selectors, seeding, loaders.

The data order of an epoch (which examples form each batch) is :mod:`sparsetrain.data.batching`'s,
asked for through the task (:meth:`Task.epoch_batches`).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig, LRScheduleConfig, OptimizerConfig
from ..errors import UserError
from .lr_schedules import LRSchedule


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device='cuda' but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``model``'s parameters; with ``decay_norm_and_bias: false`` two groups, the
    parameters of 2+ dimensions (decayed) then the rest (biases, norm weights: ``weight_decay`` 0)."""
    params: Any = list(model.parameters())
    if not config.decay_norm_and_bias:
        params = [{"params": [p for p in params if p.ndim >= 2]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    optimizer = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return optimizer(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def build_lr_schedule(config: LRScheduleConfig, base_lr: float, epochs: int, steps_per_epoch: int) -> LRSchedule:
    """The schedule of one optimizer segment of ``epochs`` epochs (in iterations or epochs per ``config.unit``)."""
    total = epochs * steps_per_epoch if config.unit == "iteration" else epochs
    return LRSchedule(config.kind, base_lr, total, config.warmup, config.warmup_init_lr, config.min_lr,
                      config.step_size, config.milestones, config.gamma)


def parse_selectors(patterns: list[str] | None) -> list[Any] | None:
    """Config selectors: ``nn.Linear`` style names become module types, anything else is a regex."""
    if patterns is None:
        return None
    selectors: list[Any] = []
    for pattern in patterns:
        if pattern.startswith("nn."):
            module_type = getattr(nn, pattern[3:], None)
            if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
                raise UserError(f"targets selector {pattern!r} is not a torch.nn module type")
            selectors.append(module_type)
        else:
            selectors.append(pattern)
    return selectors


def autocast_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("training.amp='fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pins_memory(config: DataConfig, device: torch.device | None) -> bool:
    """Whether training batches go to page-locked memory: ``data.pin_memory``, ``auto`` = on for CUDA."""
    if config.pin_memory == "auto":
        return device is not None and device.type == "cuda"
    return bool(config.pin_memory)


def eval_loader_for(task: Any, config: DataConfig, device: torch.device | None) -> DataLoader:
    """``task.eval_loader(config.eval_batch_size)`` loaded like training batches: by ``config.num_workers``
    workers (started for each evaluation; none stay alive), with ``prefetch_factor`` and pinned memory as
    :func:`pins_memory` decides. Evaluation items do not depend on which process loads them (deterministic
    transforms, or draws keyed by the item), and the loader draws the same one number from torch's global
    RNG either way, so these options change no metric and no later training step.

    The options reach ``eval_loader`` as keywords, only those that are on, and only if it accepts ``**``
    keywords: a task written against the older ``eval_loader(batch_size)`` still works (in the main process).
    """
    options: dict[str, Any] = {}
    if config.num_workers:
        options["num_workers"] = config.num_workers
        if config.prefetch_factor is not None:
            options["prefetch_factor"] = config.prefetch_factor
    if pins_memory(config, device):
        options["pin_memory"] = True
    takes_options = any(parameter.kind is inspect.Parameter.VAR_KEYWORD
                        for parameter in inspect.signature(task.eval_loader).parameters.values())
    return task.eval_loader(config.eval_batch_size, **(options if takes_options else {}))


def epoch_loader(dataset: Dataset, config: DataConfig, shards: list[list[int]], seed: int,
                 skip: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None,
                 device: torch.device | None = None) -> Iterable[Any]:
    """Batches ``shards`` (lists of example indices) of ``dataset``, loaded by ``config.num_workers`` workers,
    without the first ``skip`` batches (a run resumed in the middle of an epoch).

    The loader's own seed (what its workers seed their RNGs from) comes from ``seed``, not from the
    global RNG, so creating the loader draws nothing from the training RNG streams. In the main
    process (``num_workers=0``) the skipped batches are simply not loaded: the global RNG the
    transforms draw from is restored from the checkpoint. Worker processes seed themselves per
    loader and take batches round-robin, so with workers the skipped batches are loaded and
    dropped, which keeps their random augmentations exactly those of an uninterrupted epoch.

    Speed options, none of which changes a batch: ``pin_memory`` (see :func:`pins_memory`; ``device``
    decides ``auto``), ``prefetch_factor``, and ``persistent_workers``, which reuses one loader and its
    workers for every epoch of ``dataset``: the epoch's batches are swapped into its batch sampler and
    each worker, at its first batch of the epoch, reseeds ``random``, torch and numpy exactly as a
    fresh loader's worker would for ``seed`` (base seed drawn from ``Generator().manual_seed(seed)``,
    worker ``w`` seeded ``base + w``), so every epoch loads what a per-epoch loader would.
    """
    generator = torch.Generator().manual_seed(seed)
    pin = pins_memory(config, device)
    if config.num_workers == 0:
        return DataLoader(dataset, batch_sampler=shards[skip:], generator=generator, collate_fn=collate_fn,
                          pin_memory=pin)
    extra: dict[str, Any] = {} if config.prefetch_factor is None else {"prefetch_factor": config.prefetch_factor}
    if not config.persistent_workers:
        loader = DataLoader(dataset, batch_sampler=shards, num_workers=config.num_workers, generator=generator,
                            collate_fn=collate_fn, pin_memory=pin, **extra)
        return loader if skip == 0 else itertools.islice(loader, skip, None)
    key = (config.num_workers, pin, config.prefetch_factor, collate_fn)
    cached = _PERSISTENT.get("loader")
    if cached is None or cached[0] is not dataset or cached[1] != key:
        _PERSISTENT.clear()  # the previous loader's workers end when it is collected
        sampler = _SwappableBatches()
        loader = DataLoader(_EpochSeeded(dataset), batch_sampler=sampler, num_workers=config.num_workers,
                            collate_fn=collate_fn, pin_memory=pin, persistent_workers=True,
                            generator=torch.Generator(), **extra)  # its first iter() draws from this, not the global RNG
        cached = _PERSISTENT["loader"] = (dataset, key, loader, sampler)
    loader, sampler = cached[2], cached[3]
    base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())  # as a fresh loader draws
    _EPOCH_TOKEN[0] += 1
    sampler.batches = [[(_EPOCH_TOKEN[0], base_seed, index) for index in shard] for shard in shards]
    return loader if skip == 0 else itertools.islice(loader, skip, None)


_PERSISTENT: dict[str, tuple[Dataset, tuple, DataLoader, _SwappableBatches]] = {}
"""The one persistent-workers loader alive: (dataset, options, loader, its batch sampler)."""


def release_loaders() -> None:
    """End the persistent-workers loader's worker processes (the runner calls it when a run ends)."""
    cached = _PERSISTENT.pop("loader", None)
    if cached is not None:
        iterator = getattr(cached[2], "_iterator", None)  # torch keeps a persistent loader's iterator there
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

_EPOCH_TOKEN = [0]
"""Counts the epochs handed to a persistent loader, so its workers see each epoch start."""


class _SwappableBatches:
    """A batch sampler whose batches (lists of keys) are replaced for every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _EpochSeeded(Dataset):
    """``dataset`` read by ``(epoch token, base seed, index)`` keys: a worker seeing a new epoch token
    reseeds its RNGs as torch seeds a fresh worker (``base + worker id``; numpy from both)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch_token: int | None = None  # per worker process: each holds its own copy

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        token, base_seed, index = key
        if token != self.epoch_token:
            self.epoch_token = token
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            random.seed(base_seed + worker)
            torch.manual_seed(base_seed + worker)
            np.random.seed(_worker_numpy_seed(base_seed, worker))
        return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


def _worker_numpy_seed(base_seed: int, worker: int) -> Any:
    """The numpy seed torch's worker loop sets for ``(base_seed, worker)``."""
    from torch.utils.data._utils.worker import _generate_state
    return _generate_state(base_seed, worker)
