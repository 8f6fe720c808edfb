"""Multi-process P-GaP with torch.distributed (gloo on CPU, NCCL on GPU), launched by torchrun.

P-GaP under torchrun with ``WORLD_SIZE`` = kappa * g (:func:`pgap_worker_groups`): the ranks form
kappa groups of g consecutive ranks, and group ``i`` (ranks ``i*g .. i*g + g - 1``) is worker ``i``,
growing partition ``i``; with g > 1 its ranks train it with DDP over their own process group
(gradients are all-reduced inside the group only). At a merge every state-dict entry is broadcast
from the leader (first rank) of the group that owns it (orphans from rank 0), so every rank ends
with the same merged model; only each partition's own tensors leave its group. The masks computed
after the merge are compared across all ranks by checksum.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_environment(device: torch.device) -> DistContext | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Long timeout: after P-GaP's last merge the other ranks wait for rank 0's fine-tuning.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(days=7))
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext(dist.get_rank(), dist.get_world_size())


@dataclass(frozen=True)
class WorkerGroups:
    """This rank's place among P-GaP's ``kappa`` groups of ``size`` (g) consecutive ranks.

    ``worker`` is the partition this rank's group grows (``rank // size``), ``rank_in_group`` its
    position inside the group (``rank % size``), ``group`` the process group of the group's ranks
    (None when ``size`` is 1: a worker is one process, nothing to all-reduce).
    """

    kappa: int
    size: int
    worker: int
    rank_in_group: int
    group: Any

    def leader(self, worker: int) -> int:
        """The global rank that speaks for ``worker``'s group at a merge (its first rank)."""
        return worker * self.size

    @property
    def is_leader(self) -> bool:
        return self.rank_in_group == 0


def pgap_world_error(kappa: int, world_size: int) -> str | None:
    """The one-line complaint about ``world_size`` processes for P-GaP with ``kappa`` workers, or None if valid."""
    if world_size <= 1 or world_size % kappa == 0:
        return None
    return (f"P-GaP with kappa={kappa} needs WORLD_SIZE = kappa*g processes (g >= 1: {kappa}, {2 * kappa}, "
            f"{3 * kappa}, ...), got WORLD_SIZE={world_size}; valid: torchrun --nproc-per-node {kappa} (one process "
            f"per partition) or a multiple of {kappa} (g processes per partition, data parallel inside each group), "
            f"or no torchrun (the {kappa} workers then train one after another)")


def pgap_worker_groups(context: DistContext, kappa: int) -> WorkerGroups:
    """Split the ``WORLD_SIZE`` = kappa * g ranks into kappa groups of g; a collective call (every rank makes it).

    Raises ``UserError`` if ``WORLD_SIZE`` is not a multiple of ``kappa``.
    """
    problem = pgap_world_error(kappa, context.world_size)
    if problem is not None:
        raise UserError(problem)
    size = context.world_size // kappa
    worker, rank_in_group = divmod(context.rank, size)
    group = None
    if size > 1:
        for index in range(kappa):  # every rank creates every group, in the same order (new_group is collective)
            handle = dist.new_group(ranks=list(range(index * size, (index + 1) * size)))
            if index == worker:
                group = handle
    return WorkerGroups(kappa, size, worker, rank_in_group, group)


def broadcast_merge_(state: dict[str, torch.Tensor], owners: dict[str, int], rank: int) -> int:
    """Overwrite every entry of ``state`` in place with its owner's value; returns the bytes this rank sent."""
    sent = 0
    for key, tensor in state.items():
        source = owners[key]
        dist.broadcast(tensor, src=source)
        if source == rank:
            sent += tensor.numel() * tensor.element_size()
    return sent


def broadcast_masks_(masks: list[torch.Tensor]) -> None:
    """Overwrite every rank's masks with rank 0's (sent as uint8: collectives do not take bool)."""
    for mask in masks:
        as_bytes = mask.to(torch.uint8)
        dist.broadcast(as_bytes, src=0)
        mask.copy_(as_bytes.bool())


def check_same_on_all_ranks(value: int, what: str, device: torch.device) -> None:
    """Raise if ``value`` (e.g. a mask checksum) differs between ranks."""
    mine = torch.tensor([value], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    values = [int(v) for v in everyone]
    if len(set(values)) != 1:
        raise RuntimeError(f"{what} differs across ranks: {values}")


def shutdown_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
