"""``MethodScheduler``: any registered method's mask events in your own training loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from ..errors import UserError
from ..sparsity import MaskSet, Sparsifier, select_targets
from ..sparsity.partitions import partition_targets
from ..sparsity.targets import Selector, parameter_count
from . import REGISTRY, method_for
from .base import StageContext
from .events import MaskEvent, Schedule


class MethodScheduler:
    """Applies the mask events of one stage of any method in ``REGISTRY`` to a ``MaskSet``::

        scheduler = MethodScheduler("rigl", model, steps_per_epoch=len(loader), sparsity=0.9, epochs=10)
        for step, (x, y) in enumerate(batches):          # the global step, 0-based
            scheduler.before_step(step, optimizer)       # events due before the forward pass
            loss_fn(model(x), y).backward()
            scheduler.after_backward(step, optimizer)    # events that need this step's gradients (RigL)
            optimizer.step()
            scheduler.after_step(optimizer)              # re-zero pruned weights and their optimizer state

    ``stage`` is a stage kind with its fields as keyword arguments, a stage mapping as in a config
    (``{"kind": "sgap", "sparsity": 0.9, ...}``) or a validated stage model. The targets are those
    of ``select_targets(model, include, exclude)``, or those of ``masks`` when given (to go on from
    masks already in force). Events are a pure function of the step (``events`` lists them all;
    ``seed`` is the default mask seed, as a run's ``seed``), so only ``state_dict()`` needs saving.
    An event whose ``resets_optimizer`` is set expects a fresh optimizer (GaP's steps, as the runner
    does); otherwise the optimizer given is masked where the masks changed. Each ``before_step`` /
    ``after_backward`` returns the events it applied.
    """

    def __init__(self, stage: str | Mapping[str, Any] | BaseModel, model: nn.Module, steps_per_epoch: int, *,
                 seed: int = 0, start_step: int = 0, include: Selector | Sequence[Selector] | None = None,
                 exclude: Selector | Sequence[Selector] | None = None, masks: MaskSet | None = None,
                 **fields: Any) -> None:
        if isinstance(stage, str):
            stage = {"kind": stage, **fields}
        elif fields:
            raise UserError("stage fields as keyword arguments need the stage given as its kind")
        if isinstance(stage, Mapping):
            module = method_for(str(stage.get("kind")))
            try:
                stage = module.SCHEMA.model_validate(dict(stage))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise UserError(f"stage {where}: {first['msg']}" if where else f"stage: {first['msg']}") from None
        module = method_for(stage.kind)
        if stage.kind in module.WORKER_KINDS:
            raise UserError(f"{stage.kind!r} trains parallel workers; run it with the sparsetrain runner")
        if int(steps_per_epoch) < 1:
            raise UserError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
        if masks is None:
            masks = MaskSet(select_targets(model, include, exclude), model_numel=parameter_count(model))
        partitions = ()
        if module.PARTITIONED:
            partitions = tuple(partition_targets(masks.targets, stage.partitions.scheme, stage.partitions.kappa))
        self.stage = stage
        self.method = module
        self.context = StageContext(0, start_step, int(steps_per_epoch), seed, partitions)
        self.layout = module.layout(stage, self.context)
        self.events: list[MaskEvent] = Schedule(module.events(stage, self.context)).events()
        self.sparsifier = Sparsifier(model, masks)

    @property
    def masks(self) -> MaskSet:
        return self.sparsifier.masks

    @property
    def total_steps(self) -> int:
        """Optimizer steps the stage trains (``layout.epochs * steps_per_epoch``)."""
        return self.layout.epochs * self.context.steps_per_epoch

    def _apply(self, step: int, after_backward: bool, optimizer: torch.optim.Optimizer | None) -> list[MaskEvent]:
        due = [e for e in self.events if e.step == step and e.after_backward == after_backward]
        for event in due:
            self.method.apply(event, self.masks, self.context)
            if optimizer is not None and not event.resets_optimizer:
                self.masks.mask_optimizer_state_(optimizer)
        return due

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> list[MaskEvent]:
        """Apply the events due at global ``step`` before its forward pass."""
        return self._apply(step, False, optimizer)

    def after_backward(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> list[MaskEvent]:
        """Apply the events due at ``step`` that need its gradients (after backward, before ``optimizer.step()``)."""
        return self._apply(step, True, optimizer)

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Right after ``optimizer.step()``: pruned weights (and their optimizer state) back to zero."""
        self.sparsifier.step(optimizer)

    def state_dict(self) -> dict:
        return self.sparsifier.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sparsifier.load_state_dict(state)


__all__ = ["MethodScheduler", "REGISTRY"]
