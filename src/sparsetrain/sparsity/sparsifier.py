"""Sparsifier: keeps a MaskSet enforced while a model trains.

Two ways, both in place, with foreach ops: no hooks, no re-parametrization, no change to the model's
state-dict keys.

* ``sparsifier.mask_grads()`` after backward and before ``optimizer.step()`` (after
  ``GradScaler.unscale_``, before gradient clipping): zeroes the pruned weights' gradients, one pass over
  the gradients; for SGD/Adam/AdamW/AMSGrad (any weight decay) pruned weights and their optimizer state
  then stay exactly zero, given they were zero when the masks last changed (construction and
  ``load_state_dict`` zero the weights; zero the state with ``masks.mask_optimizer_state_(optimizer)``
  when you change masks under a live optimizer). The runner does this.
* ``sparsifier.step(optimizer)`` right after ``optimizer.step()``: re-zeroes the pruned weights and the
  optimizer state at pruned positions whatever the optimizer does (one pass over the weights and every
  state tensor): for optimizers outside that family.
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

    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights (before ``optimizer.step()``; see the module docstring)."""
        self.masks.mask_grads_()

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights (and, given ``optimizer``, their optimizer state)."""
        self.masks.enforce_(optimizer)

    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.masks.load_state_dict(state["masks"])
        self.masks.apply_()
