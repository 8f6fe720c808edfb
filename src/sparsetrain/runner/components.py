"""Small builders the training loop uses: device, optimizer, LR schedule, selectors, seeding, loaders.

The data order of an epoch (which examples form each batch) is :mod:`sparsetrain.data.batching`'s,
asked for through the task (:meth:`Task.epoch_batches`).
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
