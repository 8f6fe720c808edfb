"""sparsetrain in a Hugging Face ``Trainer``: fixed masks or a method's schedule through one callback.

    masks = sparsetrain.prune(model, 0.5, method="uniform")            # fixed masks, or instead:
    callback = SparsityCallback(method="gmp", sparsity=0.5)            # a schedule (epochs: the Trainer's)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
    trainer.train()                                                    # pruned weights stay exactly 0
    model.save_pretrained(out)                                         # plain transformers loads it back

:class:`SparsityCallback` drives a :class:`~sparsetrain.integrations.core.SparsityDriver` from the Trainer's
events (as ``transformers`` 5 fires them in ``Trainer._inner_training_loop``):

* ``on_train_begin`` (the model, optimizer and train dataloader exist): the driver is built from
  ``kwargs["model"]``; pruned weights and their optimizer state are set to zero.
* ``on_step_begin`` (before the forward pass of the first micro-batch of an optimizer step): events due
  before step ``state.global_step``.
* ``on_pre_optimizer_step`` (gradients accumulated and clipped, before ``optimizer.step()``): events that need
  the step's gradients (RigL's growth).
* ``on_optimizer_step`` (right after ``optimizer.step()``): pruned weights and every same-shaped optimizer
  state tensor (``exp_avg``, ``exp_avg_sq``, momentum) back to exactly zero.
* ``on_train_end``: the events due at the step after the last one (a schedule whose final prune falls at its
  end, e.g. GMP with ``end_epoch == epochs`` or S-GaP with ``finetune_epochs=0``), so the masks are final.

A method's ``steps_per_epoch`` defaults to the Trainer's optimizer steps per epoch (train dataloader length over
``gradient_accumulation_steps``, rounded up; without a length, ``state.max_steps / args.num_train_epochs``), and a
method whose stage has an ``epochs`` field (GMP, RigL, ...) gets, when it is not given, the epochs the Trainer runs
(``ceil(state.max_steps / steps_per_epoch)``). Targets default to ``Linear`` (and Hugging Face's ``Conv1D``);
embeddings and LayerNorms are never targets unless named in ``include``. Masks are applied in place, so the
state dict (and ``save_pretrained``'s output) is a plain dense one with zeros in it.

:data:`HF_PARTITIONS` and :func:`hf_layer_partitions` split BERT-, GPT-2- and T5-style layer stacks into κ
contiguous groups of layers given as regexes, for S-GaP's ``partitions={"scheme": [...]}``.

A resumed run (``resume_from_checkpoint``) restores the weights (their zeros) but a schedule's masks are rebuilt
from the step's events only as they come; give fixed masks, or resume at a stage boundary.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..errors import UserError
from ..sparsity import MaskSet, select_targets
from ..sparsity.targets import Selector
from .core import DriverRecipe, SparsityDriver, default_target_types, method_kind

HF_PARTITIONS: dict[str, tuple[str, ...]] = {
    "bert": (r"(?:^|\.)encoder\.layer\.(\d+)\.",),
    "gpt2": (r"(?:^|\.)h\.(\d+)\.",),
    "t5": (r"(?:^|\.)encoder\.block\.(\d+)\.", r"(?:^|\.)decoder\.block\.(\d+)\."),
}
"""Layer-stack regexes per model family, one capture group (the layer index): BERT-like (``encoder.layer.N.``:
BERT, RoBERTa, MiniLM, ELECTRA), GPT-2 (``h.N.``), T5 (``encoder.block.N.`` then ``decoder.block.N.``).
:func:`hf_layer_partitions` turns them into κ partition regexes; other stacks are given to it as a list."""


def _families(family: str | Sequence[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    if family is None:
        return list(HF_PARTITIONS.items())
    if isinstance(family, str):
        if family not in HF_PARTITIONS:
            raise UserError(f"family={family!r} is unknown; valid: {', '.join(map(repr, HF_PARTITIONS))}, "
                            "or a list of layer regexes with one capture group")
        return [(family, HF_PARTITIONS[family])]
    return [("custom", tuple(family))]


def hf_layer_partitions(model: nn.Module, kappa: int, *, family: str | Sequence[str] | None = None,
                        include: Selector | Sequence[Selector] | None = None,
                        exclude: Selector | Sequence[Selector] | None = None) -> list[str]:
    """κ regexes, one per partition, each a contiguous group of ``model``'s transformer layers (sizes differ by
    at most one, the earlier groups larger), for ``partitions={"scheme": hf_layer_partitions(model, 3)}``.

    ``family`` is a key of :data:`HF_PARTITIONS`, a list of layer regexes (one capture group, the index), or
    None (the first family whose regexes match a target). The targets are those the callback would select
    (``include`` defaults to ``default_target_types(model)``); targets outside the layers (pooler, classifier,
    ``lm_head``) join the group of the layer before them, or the first group when they precede every layer.
    """
    if int(kappa) < 1:
        raise UserError(f"kappa={kappa!r} must be >= 1")
    kappa = int(kappa)
    names = [t.name for t in select_targets(model, include if include is not None else default_target_types(model),
                                            exclude)]
    chosen = None
    for fam, patterns in _families(family):
        compiled = [re.compile(p) for p in patterns]
        if any(rx.search(n) for rx in compiled for n in names):
            chosen = (fam, patterns, compiled)
            break
    if chosen is None:
        tried = ", ".join(name for name, _ in _families(family))
        raise UserError(f"no target of the model is in a transformer layer stack ({tried}); "
                        "pass family= or a list of partition regexes")
    _, patterns, compiled = chosen
    units: list[tuple[int, str]] = []  # (stack, layer index), in target order
    owner: list[int | None] = []  # per target: its unit, or None outside the layers
    for name in names:
        hit = next(((j, m.group(1)) for j, rx in enumerate(compiled) if (m := rx.search(name))), None)
        if hit is None:
            owner.append(None)
            continue
        if hit not in units:
            units.append(hit)
        owner.append(units.index(hit))
    if kappa > len(units):
        raise UserError(f"kappa={kappa} exceeds the {len(units)} transformer layers of the model")
    sizes = [len(units) // kappa + (1 if g < len(units) % kappa else 0) for g in range(kappa)]
    group_of_unit, start = {}, 0
    for g, size in enumerate(sizes):
        for u in range(start, start + size):
            group_of_unit[u] = g
        start += size
    layers: list[list[tuple[int, str]]] = [[] for _ in range(kappa)]
    for u, unit in enumerate(units):
        layers[group_of_unit[u]].append(unit)
    extras: list[list[str]] = [[] for _ in range(kappa)]
    current = 0
    for name, u in zip(names, owner):
        if u is None:
            extras[current].append(name)
        else:
            current = group_of_unit[u]
    regexes = []
    for g in range(kappa):
        parts = []
        for stack in sorted({j for j, _ in layers[g]}):
            numbers = "|".join(n for j, n in layers[g] if j == stack)
            prefix = patterns[stack].replace(r"(\d+)", f"(?:{numbers})", 1)
            parts.append(prefix)
        parts += [f"^{re.escape(n)}$" for n in extras[g]]
        regexes.append("|".join(parts))
    return regexes


class SparsityCallback(TrainerCallback):
    """Fixed ``masks`` (a ``MaskSet`` of the model the Trainer trains) or a ``method``'s schedule
    (``"gmp"``, ``"rigl"``, ``"sgap"``, ... with its stage fields as keyword arguments) in a Hugging Face
    ``Trainer`` (see the module docstring for the hooks). ``driver`` is the :class:`SparsityDriver` once
    training has begun; ``masks`` its mask set."""

    def __init__(self, masks: MaskSet | None = None, *, method: str | Mapping[str, Any] | None = None,
                 steps_per_epoch: int | None = None, include: Selector | Sequence[Selector] | None = None,
                 exclude: Selector | Sequence[Selector] | None = None, seed: int = 0, **fields: Any) -> None:
        self.recipe = DriverRecipe(masks, method, steps_per_epoch, include, exclude, seed, fields)
        self.driver: SparsityDriver | None = None
        self._model: nn.Module | None = None

    @property
    def masks(self) -> MaskSet:
        return self.recipe.masks_in_force(self.driver)

    # ---- building the driver -----------------------------------------------------------------
    def _steps_per_epoch(self, args: Any, state: Any, train_dataloader: Any) -> int:
        if self.recipe.steps_per_epoch is not None:
            return int(self.recipe.steps_per_epoch)
        accumulation = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        try:
            batches = len(train_dataloader) if train_dataloader is not None else None
        except TypeError:  # an iterable dataset
            batches = None
        if batches:
            return max(1, math.ceil(batches / accumulation))
        epochs = max(1, math.ceil(float(getattr(args, "num_train_epochs", 1) or 1)))
        if state.max_steps and state.max_steps > 0:
            return max(1, state.max_steps // epochs)
        raise UserError("cannot tell the Trainer's steps per epoch (no dataloader length, no max_steps); "
                        "give SparsityCallback(steps_per_epoch=...)")

    def _build(self, model: nn.Module, args: Any, state: Any, train_dataloader: Any) -> SparsityDriver:
        if self.recipe.masks is not None:
            return self.recipe.build(model)
        spe = self._steps_per_epoch(args, state, train_dataloader)
        epochs = max(1, math.ceil(state.max_steps / spe)) if state.max_steps and state.max_steps > 0 else None
        driver = self.recipe.build(model, spe, epochs)
        method = self.recipe.method
        total = driver.scheduler.total_steps if driver.scheduler is not None else 0
        if state.max_steps and 0 < state.max_steps < total:
            warnings.warn(f"the {method_kind(method)!r} schedule runs {total} optimizer steps but the Trainer stops after "
                          f"{state.max_steps}; the masks will not reach the schedule's end", stacklevel=3)
        return driver

    # ---- Trainer events ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        model = kwargs.get("model")
        if model is None:
            raise UserError("SparsityCallback needs the Trainer's model (kwargs['model']) at on_train_begin")
        if self.driver is None or self._model is not model:
            self.driver = self._build(model, args, state, kwargs.get("train_dataloader"))
            self._model = model
        self.driver.masks.enforce_(kwargs.get("optimizer"))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.driver is not None:
            self.driver.before_step(state.global_step, kwargs.get("optimizer"))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.driver is not None:
            self.driver.after_backward(state.global_step, kwargs.get("optimizer"))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.driver is not None:
            self.driver.after_step(kwargs.get("optimizer"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.driver is not None:
            optimizer = kwargs.get("optimizer")
            self.driver.before_step(state.global_step, optimizer)  # a schedule's final prune at its end
            self.driver.masks.enforce_(optimizer)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.driver is None:
            raise UserError("SparsityCallback.state_dict() needs training to have begun")
        return self.driver.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.driver is None:
            raise UserError("SparsityCallback.load_state_dict() needs training to have begun (call it after "
                            "on_train_begin, or give masks= instead)")
        self.driver.load_state_dict(state)


def sparsity_of(model: nn.Module, include: Selector | Sequence[Selector] | None = None,
                exclude: Selector | Sequence[Selector] | None = None) -> float:
    """The fraction of exact zeros over ``model``'s targets (``include`` defaults to ``default_target_types``)."""
    targets = select_targets(model, include if include is not None else default_target_types(model), exclude)
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    total = sum(t.numel for t in targets)
    return zeros / total if total else 0.0


__all__ = ["HF_PARTITIONS", "SparsityCallback", "hf_layer_partitions", "sparsity_of"]
