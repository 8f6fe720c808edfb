"""What every training-framework integration does, once: keep a fixed mask set or drive a method's schedule
from another library's loop (Hugging Face ``Trainer``, Lightning), without that library.

:class:`SparsityDriver` is built from a ``MaskSet`` (fixed masks, e.g. from :func:`sparsetrain.prune`) or from
a method's stage (``"gmp"``, ``"rigl"``, ``"sgap"``, ... with its fields, through
:class:`~sparsetrain.methods.MethodScheduler`; P-GaP, which needs κ workers, is refused). The framework's
callback calls :meth:`before_step` before a step's forward pass, :meth:`after_backward` once the step's
gradients are complete (before the optimizer), and :meth:`after_step` right after the optimizer: pruned weights
and every optimizer state tensor of their shape are then exactly zero. An event that resets the optimizer in
the runner (a GaP step) clears the optimizer's state here instead (the framework owns the optimizer and its LR
schedule, which continues). ``state_dict``/``load_state_dict`` carry the masks through a framework checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..methods import MaskEvent, MethodScheduler
from ..sparsity import MaskSet, Sparsifier
from ..sparsity.targets import Selector

HF_CONV1D = "transformers.pytorch_utils.Conv1D"
"""Hugging Face's transposed linear layer (GPT-2): a default target type of the integrations."""


def default_target_types(model: nn.Module) -> list[type[nn.Module]]:
    """``nn.Linear``, ``nn.Conv1d/2d/3d`` and, when ``model`` uses it, Hugging Face's ``Conv1D`` (found by its
    qualified name, so nothing imports transformers), each only if some module of that type owns a weight no
    earlier module holds (GPT-2's ``lm_head`` is tied to the token embedding, which is never a target unless
    named); embeddings and norms are never among them."""
    types: list[type[nn.Module]] = [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d]
    seen: set[int] = set()
    owning: set[type[nn.Module]] = set()
    for module in model.modules():
        cls = type(module)
        if f"{cls.__module__}.{cls.__qualname__}" == HF_CONV1D and cls not in types:
            types.append(cls)
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and id(weight) not in seen:
            owning.add(cls)
        seen.update(id(p) for p in module.parameters(recurse=False))
    return [t for t in types if any(issubclass(u, t) for u in owning)]


def method_kind(method: str | Mapping[str, Any]) -> str:
    """The stage kind of a ``method=`` argument: the string itself, or a stage mapping's ``kind``."""
    return method if isinstance(method, str) else str(method.get("kind"))


def check_arguments(masks: MaskSet | None, method: str | Mapping[str, Any] | None, steps_per_epoch: int | None,
                    fields: Mapping[str, Any]) -> None:
    """What every integration refuses before training, in one line: both or neither of ``masks``/``method``,
    method fields with fixed masks, P-GaP, a ``steps_per_epoch`` below 1."""
    if (masks is None) == (method is None):
        raise UserError("give exactly one of masks= (fixed masks, e.g. from sparsetrain.prune) or method= "
                        "(a method's stage: 'gmp', 'rigl', 'sgap', ...)")
    if masks is not None and fields:
        raise UserError(f"fixed masks take no method fields (got {', '.join(sorted(fields))})")
    if method is not None and method_kind(method) == "pgap":
        raise UserError("method='pgap' trains kappa workers in parallel and merges them, which one training "
                        "loop cannot do; use 'sgap' here, or run P-GaP with `sparsetrain run`")
    if steps_per_epoch is not None and int(steps_per_epoch) < 1:
        raise UserError(f"steps_per_epoch={steps_per_epoch!r} must be >= 1 (optimizer steps per epoch)")


class DriverRecipe:
    """A callback's arguments, checked once (:func:`check_arguments`), and the :class:`SparsityDriver` they build
    once the framework tells the model, its optimizer steps per epoch and the epochs it trains."""

    def __init__(self, masks: MaskSet | None, method: str | Mapping[str, Any] | None, steps_per_epoch: int | None,
                 include: Selector | Sequence[Selector] | None, exclude: Selector | Sequence[Selector] | None,
                 seed: int, fields: Mapping[str, Any]) -> None:
        check_arguments(masks, method, steps_per_epoch, fields)
        self.masks, self.method, self.steps_per_epoch = masks, method, steps_per_epoch
        self.include, self.exclude, self.seed, self.fields = include, exclude, seed, dict(fields)

    def needs_epochs(self) -> bool:
        """Whether the method's stage has an ``epochs`` field the caller left to the framework."""
        if not isinstance(self.method, str) or "epochs" in self.fields:
            return False
        from ..methods import method_for

        return "epochs" in method_for(self.method).SCHEMA.model_fields

    def build(self, model: nn.Module, steps_per_epoch: int | None = None, epochs: int | None = None) -> SparsityDriver:
        """The driver for ``model``: fixed masks, or the method with the caller's ``steps_per_epoch`` (else the
        framework's) and, when the caller gave none, the framework's ``epochs``."""
        if self.masks is not None:
            return SparsityDriver(model, masks=self.masks)
        fields = dict(self.fields)
        if self.needs_epochs():
            if epochs is None:
                raise UserError(f"method={self.method!r} needs epochs=... (the trainer tells no number of epochs)")
            fields["epochs"] = epochs
        return SparsityDriver(model, method=self.method, steps_per_epoch=self.steps_per_epoch or steps_per_epoch,
                              include=self.include if self.include is not None else default_target_types(model),
                              exclude=self.exclude, seed=self.seed, **fields)

    def masks_in_force(self, driver: SparsityDriver | None) -> MaskSet:
        """The driver's masks, or before it exists the fixed masks given; a method's exist only once built."""
        if driver is not None:
            return driver.masks
        if self.masks is not None:
            return self.masks
        raise UserError("a method's masks exist once training has begun")


class SparsityDriver:
    """Fixed masks or a method's mask events in a loop sparsetrain does not own (see the module docstring)."""

    def __init__(self, model: nn.Module, *, masks: MaskSet | None = None,
                 method: str | Mapping[str, Any] | None = None, steps_per_epoch: int | None = None,
                 include: Selector | Sequence[Selector] | None = None,
                 exclude: Selector | Sequence[Selector] | None = None, seed: int = 0, **fields: Any) -> None:
        check_arguments(masks, method, steps_per_epoch, fields)
        self.model = model
        self.scheduler: MethodScheduler | None = None
        if masks is not None:
            self.sparsifier = Sparsifier(model, masks)
            masks.enforce_()
            return
        if steps_per_epoch is None:
            raise UserError(f"method={method!r} needs steps_per_epoch (optimizer steps per epoch)")
        if include is None:
            include = default_target_types(model)
        self.scheduler = MethodScheduler(method, model, int(steps_per_epoch), seed=seed, include=include,
                                         exclude=exclude, **fields)
        self.sparsifier = self.scheduler.sparsifier

    @property
    def masks(self) -> MaskSet:
        return self.sparsifier.masks

    def before_step(self, step: int, optimizer: torch.optim.Optimizer | None) -> list[MaskEvent]:
        return self._applied(self.scheduler.before_step(step, optimizer) if self.scheduler else [], optimizer)

    def after_backward(self, step: int, optimizer: torch.optim.Optimizer | None) -> list[MaskEvent]:
        return self._applied(self.scheduler.after_backward(step, optimizer) if self.scheduler else [], optimizer)

    def after_step(self, optimizer: torch.optim.Optimizer | None) -> None:
        self.sparsifier.step(optimizer)

    def _applied(self, events: list[MaskEvent], optimizer: torch.optim.Optimizer | None) -> list[MaskEvent]:
        if optimizer is not None and any(event.resets_optimizer for event in events):
            optimizer.state.clear()  # a GaP step's fresh optimizer: moments start at zero again
        if events:
            self.masks.enforce_()
        return events

    def state_dict(self) -> dict:
        return self.sparsifier.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sparsifier.load_state_dict(state)
