"""Shared test helpers: a reference selector and small random models."""

from __future__ import annotations

import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=40)
settings.load_profile("default")


def reference_keep_masks(tensors, k):
    """Keep-masks pruning the k smallest |x| over all tensors, ties by (tensor, flat index) order.

    A deliberately naive reference: concatenate, stable-sort, prune the first k.
    """
    flat = torch.cat([t.detach().reshape(-1).abs().double() for t in tensors])
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    masks, offset = [], 0
    for t in tensors:
        masks.append(keep[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return masks
