"""The data order of an epoch: which examples form each optimizer step's batch, on which rank.

The order depends only on (seed, epoch, stream), never on how a run got there, which is what
makes resume and P-GaP's single-process simulation of its workers exact. A task with its own
batching (e.g. token-budget batches of sentences) overrides :meth:`Task.epoch_batches` and
:meth:`Task.steps_per_epoch` with the same contract.
"""

from __future__ import annotations

import torch

from ..config import DataConfig


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


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """Batches of ``batch_size`` examples in an epoch of ``num_examples`` (the last one short unless ``drop_last``)."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)
