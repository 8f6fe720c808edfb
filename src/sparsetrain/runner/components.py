"""Small builders the training loop uses: device, optimizer, LR schedule, selectors, data order.

The data order of an epoch depends only on (seed, epoch, stream), never on how the run got
there, which is what makes resume and P-GaP's single-process simulation exact.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterable
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
    params = model.parameters()
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


def derived_seed(*parts: int) -> int:
    """A seed in [0, 2**32) that depends on every part (e.g. run seed, stage, round, worker)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part + 1) % 2**32
    return value


def epoch_batches(num_examples: int, config: DataConfig, seed: int, epoch: int, stream: int = 0, rank: int = 0,
                  world_size: int = 1) -> tuple[list[list[int]], list[int]]:
    """This rank's share of every global batch of epoch ``epoch``, and each global batch's size.

    The global batches are consecutive slices of one permutation that depends only on
    (seed, epoch, stream); under data parallelism rank ``r`` takes the r-th of ``world_size``
    near-equal contiguous parts of each, so the union over ranks is the single-process batch.
    """
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, stream))
    order = torch.randperm(num_examples, generator=generator).tolist()
    step = config.batch_size
    stop = num_examples - num_examples % step if config.drop_last else num_examples
    shards, sizes = [], []
    for start in range(0, stop, step):
        batch = order[start : start + step]
        base, extra = divmod(len(batch), world_size)
        begin = rank * base + min(rank, extra)
        shards.append(batch[begin : begin + base + (rank < extra)])
        sizes.append(len(batch))
    return shards, sizes


def epoch_loader(dataset: Dataset, config: DataConfig, shards: list[list[int]], seed: int,
                 skip: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None) -> Iterable[Any]:
    """Batches ``shards`` (lists of example indices) of ``dataset``, loaded by ``config.num_workers`` workers,
    without the first ``skip`` batches (a run resumed in the middle of an epoch).

    The loader's own seed (what its workers seed their RNGs from) comes from ``seed``, not from the
    global RNG, so creating the loader draws nothing from the training RNG streams. In the main
    process (``num_workers=0``) the skipped batches are simply not loaded: the global RNG the
    transforms draw from is restored from the checkpoint. Worker processes seed themselves per
    loader and take batches round-robin, so with workers the skipped batches are loaded and
    dropped, which keeps their random augmentations exactly those of an uninterrupted epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    if config.num_workers == 0:
        return DataLoader(dataset, batch_sampler=shards[skip:], generator=generator, collate_fn=collate_fn)
    loader = DataLoader(dataset, batch_sampler=shards, num_workers=config.num_workers, generator=generator,
                        collate_fn=collate_fn)
    return itertools.islice(loader, skip, None)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)
