"""sparsetrain in a Lightning ``Trainer``: :class:`SparsityCallback` keeps fixed masks or runs a method's schedule.

::

    import lightning.pytorch as pl, sparsetrain
    from sparsetrain.integrations.lightning import SparsityCallback
    masks = sparsetrain.prune(model.net, 0.9)                       # fixed masks, or a schedule:
    callback = SparsityCallback(method="rigl", sparsity=0.9, epochs=10)  # or SparsityCallback(masks=masks)
    pl.Trainer(max_epochs=10, callbacks=[callback]).fit(model, train_loader)

The work is :class:`~sparsetrain.integrations.core.SparsityDriver`'s; this module maps its three calls onto
Lightning's hooks (checked against ``lightning/pytorch/loops/training_epoch_loop.py``,
``loops/optimization/automatic.py`` and ``plugins/precision/precision.py`` of Lightning 2.x), with
``trainer.global_step`` (optimizer steps completed) as the 0-based step of the schedule:

* ``before_step(step)``: ``on_train_batch_start`` of the first micro-batch of an optimizer step, i.e. the first
  batch that sees a new ``global_step`` (with ``accumulate_grad_batches=k`` the other k-1 batches are skipped);
* ``after_backward(step)``: ``on_before_optimizer_step``, which Lightning calls only for a real optimizer step,
  after the closure has run every backward of the step (so RigL sees the complete, accumulated gradients) and
  before gradient clipping and ``optimizer.step()``;
* ``after_step``: ``on_train_batch_end``, which follows the batch's optimizer step; it runs only when
  ``global_step`` moved since the last time, so never after an accumulation-only micro-batch. Lightning runs
  ``ModelCheckpoint`` callbacks last, so checkpoints and validation see the masks in force.

Without ``steps_per_epoch`` the callback takes ``ceil(trainer.num_training_batches / accumulate_grad_batches)``
(Lightning steps on an epoch's last, partial accumulation) at ``on_train_start``, or
``estimated_stepping_batches / max_epochs`` when the loader has no length; a method's ``epochs`` defaults to the
trainer's ``max_epochs``. ``state_dict``/``load_state_dict`` put the masks in Lightning checkpoints, so
``trainer.fit(..., ckpt_path=...)`` resumes with them. Fixed masks are applied at ``on_fit_start`` (before the
sanity check). P-GaP is refused with the driver's ``UserError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from ..errors import UserError
from ..sparsity import MaskSet
from ..sparsity.targets import Selector
from .core import DriverRecipe, SparsityDriver

__all__ = ["SparsityCallback"]


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a ``LightningOptimizer`` (the hooks may hand over either)."""
    return getattr(optimizer, "_optimizer", optimizer)


class SparsityCallback(pl.Callback):
    """Fixed masks (``masks=``, e.g. from :func:`sparsetrain.prune`) or a method's mask events (``method=`` with
    its stage fields as keyword arguments) during ``Trainer.fit``; see the module docstring for the hooks."""

    def __init__(self, masks: MaskSet | None = None, *, method: str | Mapping[str, Any] | None = None,
                 steps_per_epoch: int | None = None, include: Selector | Sequence[Selector] | None = None,
                 exclude: Selector | Sequence[Selector] | None = None, seed: int = 0, **fields: Any) -> None:
        super().__init__()
        self.recipe = DriverRecipe(masks, method, steps_per_epoch, include, exclude, seed, fields)
        self.driver: SparsityDriver | None = None
        self._pending: dict | None = None  # state loaded from a checkpoint before the driver exists
        self._before_done: int | None = None  # global_step whose before_step ran
        self._after_backward_done: int | None = None
        self._after_done: int | None = None  # global_step after the last after_step

    # ---- the driver --------------------------------------------------------------------------
    @property
    def masks(self) -> MaskSet:
        return self.recipe.masks_in_force(self.driver)

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps_per_epoch: int | None) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 1 else None
        self.driver = self.recipe.build(pl_module, steps_per_epoch, epochs)
        if self._pending is not None:
            self.driver.load_state_dict(self._pending)
            self._pending = None
        self._after_done = trainer.global_step
        self._before_done = self._after_backward_done = None

    def _trainer_steps_per_epoch(self, trainer: pl.Trainer) -> int:
        batches = trainer.num_training_batches
        if isinstance(batches, int) and batches >= 1:
            return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        total, epochs = trainer.estimated_stepping_batches, trainer.max_epochs
        if math.isfinite(total) and epochs is not None and epochs >= 1:
            return max(1, int(total) // epochs)
        raise UserError("cannot tell the optimizer steps per epoch from this trainer (a loader without length?); "
                        "give SparsityCallback(steps_per_epoch=...)")

    def _optimizers(self, trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
        return [_raw(opt) for opt in trainer.optimizers]

    def _events(self, call: str, trainer: pl.Trainer, optimizer: torch.optim.Optimizer | None) -> None:
        assert self.driver is not None
        optimizers = self._optimizers(trainer)
        first = optimizer if optimizer is not None else (optimizers[0] if optimizers else None)
        events = getattr(self.driver, call)(trainer.global_step, first)
        if events:  # the other optimizers of a manual-optimization module: their state at pruned positions too
            for other in optimizers:
                if other is not first:
                    self.driver.masks.mask_optimizer_state_(other)

    # ---- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.driver = None
        if self.recipe.masks is not None or self.recipe.steps_per_epoch is not None:
            self._build(trainer, pl_module, self.recipe.steps_per_epoch)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.driver is None:
            self._build(trainer, pl_module, self._trainer_steps_per_epoch(trainer))
        for optimizer in self._optimizers(trainer):
            self.driver.masks.enforce_(optimizer)  # restored weights and optimizer state: masked before step one

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.driver is None or self._before_done == trainer.global_step:
            return  # not the first micro-batch of this optimizer step
        self._before_done = trainer.global_step
        self._events("before_step", trainer, None)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.driver is None or self._after_backward_done == trainer.global_step:
            return
        self._after_backward_done = trainer.global_step
        self._events("after_backward", trainer, _raw(optimizer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.driver is None or self._after_done == trainer.global_step:
            return  # an accumulation-only micro-batch: no optimizer step happened
        self._after_done = trainer.global_step
        for optimizer in self._optimizers(trainer):
            self.driver.after_step(optimizer)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.driver is not None:
            return {"sparsity": self.driver.state_dict()}
        if self._pending is not None:
            return {"sparsity": self._pending}
        if self.recipe.masks is not None:
            return {"sparsity": {"masks": self.recipe.masks.state_dict()}}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sparsity")
        if state is None:
            return
        if self.driver is not None:
            self.driver.load_state_dict(state)
        else:
            self._pending = state  # Lightning restores callbacks before on_fit_start builds the driver
