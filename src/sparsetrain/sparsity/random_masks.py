"""Seeded random masks with exact per-tensor counts, identical on every rank and device.

Positions are drawn by a CPU ``torch.Generator`` seeded with ``seed`` (one permutation per
tensor, in target order) and only then moved to the tensor's device, so the same seed gives the
same masks on CPU and CUDA and in every process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import SparsityError


def random_masks(tensors: Sequence[torch.Tensor], counts: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Bool keep-masks pruning exactly ``counts[i]`` uniformly random positions of tensor ``i``."""
    if len(counts) != len(tensors):
        raise SparsityError(f"got {len(counts)} counts for {len(tensors)} tensors")
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for i, (tensor, count) in enumerate(zip(tensors, counts)):
        if not 0 <= count <= tensor.numel():
            raise SparsityError(f"count {count} for tensor {i} is outside [0, {tensor.numel()}]")
        keep = torch.ones(tensor.numel(), dtype=torch.bool)
        keep[torch.randperm(tensor.numel(), generator=generator)[:count]] = False
        masks.append(keep.view(tensor.shape).to(tensor.device))
    return masks
