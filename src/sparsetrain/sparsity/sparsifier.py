"""Sparsifier: keeps a MaskSet enforced while a model trains.

Call ``sparsifier.step(optimizer)`` right after ``optimizer.step()``. It zeroes the pruned weights
and the optimizer state at pruned positions, in place, with foreach ops: no hooks, no
re-parametrization, no change to the model's state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import MaskSet
from .targets import check_targets_belong


class Sparsifier:
    """Enforces ``masks`` on ``model``; the masks are applied once on construction."""

    def __init__(self, model: nn.Module, masks: MaskSet) -> None:
        check_targets_belong(model, masks.params)
        self.model = model
        self.masks = masks
        self.masks.apply_()

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights (and, given ``optimizer``, their optimizer state)."""
        self.masks.enforce_(optimizer)

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state["masks"])
        self.masks.apply_()
