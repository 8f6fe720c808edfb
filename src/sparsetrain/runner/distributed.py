"""Multi-process P-GaP with torch.distributed (gloo on CPU, NCCL on GPU), launched by torchrun.

One process per P-GaP worker: rank ``i`` grows partition ``i``. At a merge every state-dict entry
is broadcast from the rank that owns it (orphans from rank 0), so every rank ends with the same
merged model; only each partition's own tensors leave its worker. The masks computed after the
merge are compared across ranks by checksum.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
