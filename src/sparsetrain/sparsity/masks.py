"""MaskSet: the bool masks of a model's targets, and everything that reads or enforces them.

Masks are ``torch.bool`` tensors (True = kept) on each parameter's device, owned here and never
registered on the model, so state-dict keys never change and DDP never broadcasts them. Enforcing
them is an in-place fill with 0 at pruned positions, done once after ``optimizer.step()``; it also zeroes
every optimizer state tensor of the parameter's shape (SGD momentum, Adam/AdamW ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``) at pruned positions, so nothing can revive a pruned weight.

Invariant: after ``apply_`` / ``enforce_`` / ``mask_optimizer_state_`` every pruned position holds
exactly ``+0`` (``masked_fill_`` semantics, so a NaN or inf there cannot survive as ``NaN * 0``);
kept positions keep their bits. A mask computed with no kept weight at all emits an
:class:`EmptyLayerWarning` naming the layer.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SparsityError
from .targets import Target

STATE_VERSION = 1


class EmptyLayerWarning(UserWarning):
    """A mask keeps no weight of a target: the layer is cut off (its output is its bias only)."""


@dataclass(frozen=True)
class LayerSparsity:
    """One row of the per-layer table. ``sparsity`` and ``target`` are fractions in [0, 1]."""

    name: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    sparsity: float
    target: float | None


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().reshape(-1).cpu().numpy()))


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
"""The integer dtype of each element size: the view through which pruned positions are zeroed."""


def _zero_pruned_(tensors: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
    """Set each tensor (shaped like ``mask``) to exactly 0 where ``mask`` is False, in place.

    The result is ``t.masked_fill_(~mask, 0)`` bit for bit: kept positions keep their bits (NaN and
    inf included), pruned ones become +0 whatever they held. It is computed as an integer view of
    ``t`` times the 0/1 mask in that integer dtype (``x * 1`` and ``x * 0`` are exact on bit
    patterns), because a float multiply leaves ``NaN * 0 = NaN`` and ``masked_fill_`` is about 3x
    slower on CPU than a same-dtype multiply. Consecutive tensors of one dtype and device share one
    converted mask.
    """
    factor = None
    for tensor in tensors:
        int_dtype = _INT_OF_SIZE.get(tensor.element_size())
        if int_dtype is None:  # no integer view of this width: the plain fill
            tensor.masked_fill_(mask.to(tensor.device).logical_not(), 0)
            continue
        if factor is None or factor.dtype != int_dtype or factor.device != tensor.device:
            factor = mask.to(device=tensor.device, dtype=int_dtype)
        tensor.view(int_dtype).mul_(factor)


def _same_shape_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer state tensors of ``param`` shaped like it (momentum, ``exp_avg``, ``exp_avg_sq``...)."""
    state = optimizer.state.get(param)
    if not state:
        return []
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == mask.shape]


def _unpack(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    numel = int(np.prod(shape, dtype=np.int64))
    flat = np.unpackbits(bits.cpu().numpy().astype(np.uint8), count=numel).astype(bool)
    return torch.from_numpy(flat).reshape(tuple(shape))


class MaskSet:
    """Bool keep-masks for an ordered list of targets.

    ``model_numel`` is the parameter count of the whole model, used for sparsity over all
    parameters; ``target_counts`` are the pruned counts the budget asked for (the table's target).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        masks: Sequence[torch.Tensor] | None = None,
        *,
        model_numel: int | None = None,
        target_counts: Sequence[int] | None = None,
    ) -> None:
        if not targets:
            raise SparsityError("a MaskSet needs at least one target")
        self.targets = list(targets)
        given = masks is not None
        if masks is None:
            masks = [torch.ones(t.shape, dtype=torch.bool, device=t.param.device) for t in self.targets]
        if len(masks) != len(self.targets):
            raise SparsityError(f"got {len(masks)} masks for {len(self.targets)} targets")
        for target, mask in zip(self.targets, masks):
            if tuple(mask.shape) != target.shape or mask.dtype != torch.bool:
                raise SparsityError(
                    f"mask for {target.name!r} must be bool of shape {target.shape}, got {mask.dtype} {tuple(mask.shape)}"
                )
        self.masks = [m.to(t.param.device) for t, m in zip(self.targets, masks)]
        self._factors: dict[int, tuple[int, int, torch.Tensor]] = {}  # see _factor
        self.model_numel = model_numel
        self.target_counts = list(target_counts) if target_counts is not None else None
        if given:
            self._warn_if_empty(range(len(self.masks)))

    @classmethod
    def from_nonzero(cls, targets: Sequence[Target], *, model_numel: int | None = None) -> MaskSet:
        """Masks that keep exactly the non-zero weights (e.g. of a checkpoint saved with zeros)."""
        return cls(targets, [t.param.detach() != 0 for t in targets], model_numel=model_numel)

    # ---- views -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.targets)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [t.param for t in self.targets]

    def numel(self) -> int:
        """Elements over all targets."""
        return sum(t.numel for t in self.targets)

    def kept_counts(self) -> list[int]:
        return [int(c) for c in torch.stack([m.sum().cpu() for m in self.masks]).tolist()]

    def pruned_count(self) -> int:
        return self.numel() - sum(self.kept_counts())

    def sparsity(self) -> float:
        """Pruned fraction of the target elements."""
        return self.pruned_count() / self.numel()

    def sparsity_over_parameters(self) -> float:
        """Pruned target elements as a fraction of every parameter of the model."""
        if self.model_numel is None:
            raise SparsityError("this MaskSet was built without model_numel; sparsity over all parameters is unknown")
        return self.pruned_count() / self.model_numel

    # ---- changes ----------------------------------------------------------------------------
    def set_(self, index: int, mask: torch.Tensor) -> None:
        """Replace the mask of target ``index`` in place (bool, same shape)."""
        if mask.shape != self.masks[index].shape or mask.dtype != torch.bool:
            raise SparsityError(f"new mask for {self.targets[index].name!r} must be bool of shape {self.targets[index].shape}")
        self.masks[index].copy_(mask)
        self._warn_if_empty([index])

    def _warn_if_empty(self, indices: Sequence[int]) -> None:
        """``EmptyLayerWarning`` for each target of ``indices`` whose mask keeps no weight (one sync)."""
        indices = [i for i in indices if self.targets[i].numel > 0]
        if not indices:
            return
        kept_any = torch.stack([self.masks[i].any().cpu() for i in indices]).tolist()
        for i, any_kept in zip(indices, kept_any):
            if not any_kept:
                target = self.targets[i]
                warnings.warn(
                    f"the mask of target {target.name!r} {target.shape} keeps none of its {target.numel} weight{'' if target.numel == 1 else 's'} "
                    "(sparsity 100%): the layer is cut off; lower the sparsity or exclude it from the targets",
                    EmptyLayerWarning, stacklevel=3)

    def grow_(self, indices: Sequence[int]) -> None:
        """Unmask targets ``indices`` entirely. Pruned weights stay exactly zero until trained."""
        for i in indices:
            self.masks[i].fill_(True)

    # ---- enforcement -------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """Set every pruned weight to exactly 0 in place (NaN or inf there become 0 too)."""
        for param, mask in zip(self.params, self.masks):
            _zero_pruned_([param.data], mask)

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Set to exactly 0, at pruned positions, every optimizer state tensor shaped like its parameter."""
        for param, mask in zip(self.params, self.masks):
            states = _same_shape_state(optimizer, param, mask)
            if states:
                _zero_pruned_(states, mask)

    def _factor(self, index: int, int_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Mask ``index`` as 0/1 in ``int_dtype`` on ``device``, kept between calls while the mask is unchanged:
        the cache is keyed by the mask tensor's identity and its in-place version counter, so replacing a mask
        (``set_``, ``load_state_dict``) or writing into it (``grow_``, a method's event) rebuilds it."""
        mask = self.masks[index]
        cached = self._factors.get(index)
        if (cached is not None and cached[0] == id(mask) and cached[1] == mask._version
                and cached[2].dtype == int_dtype and cached[2].device == device):
            return cached[2]
        factor = mask.to(device=device, dtype=int_dtype)
        self._factors[index] = (id(mask), mask._version, factor)
        return factor

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Set every pruned weight's gradient to exactly 0 in place, with one foreach multiply over integer views
        (NaN and inf at pruned positions become 0 too; kept gradients keep their bits).

        Called after backward and before ``optimizer.step()`` (after ``GradScaler.unscale_`` and before gradient
        clipping, which then sees the masked gradients), it keeps pruned weights and their optimizer state exactly
        zero through any number of steps of SGD (momentum, Nesterov, dampening, weight decay), Adam, AdamW and
        AMSGrad, provided both were zero when the mask last changed (``apply_`` and ``mask_optimizer_state_`` at
        every mask event): each of those updates a weight and its state only from its own gradient and value,
        and maps (0 gradient, 0 value, 0 state) to 0. One pass over the gradients instead of one over the
        weights and every state tensor (``enforce_``). The 0/1 integer masks are kept between calls (one per
        target in the gradient's integer width, so as much memory as the target weights themselves: the
        price of not converting every mask at every step; rebuilt when a mask changes).
        """
        views, factors = [], []
        for index, (param, mask) in enumerate(zip(self.params, self.masks)):
            grad = param.grad
            if grad is None:
                continue
            int_dtype = _INT_OF_SIZE.get(grad.element_size())
            if int_dtype is None or grad.is_sparse:
                grad.masked_fill_(mask.to(grad.device).logical_not(), 0)
                continue
            views.append(grad.view(int_dtype))
            factors.append(self._factor(index, int_dtype, grad.device))
        if views:
            torch._foreach_mul_(views, factors)

    @torch.no_grad()
    def enforce_(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """``apply_()`` and ``mask_optimizer_state_(optimizer)`` in one go, for the training hot path.

        Each mask is converted once per dtype and zeroes the weight and every same-shaped state
        tensor (see :func:`_zero_pruned_`).
        """
        for param, mask in zip(self.params, self.masks):
            if optimizer is None:
                _zero_pruned_((param.data,), mask)
            else:
                _zero_pruned_((param.data, *_same_shape_state(optimizer, param, mask)), mask)

    # ---- reports -----------------------------------------------------------------------------
    def table(self) -> list[LayerSparsity]:
        rows = []
        for i, (target, kept) in enumerate(zip(self.targets, self.kept_counts())):
            wanted = None if self.target_counts is None else self.target_counts[i] / target.numel
            rows.append(LayerSparsity(target.name, target.shape, target.numel, kept, 1 - kept / target.numel, wanted))
        return rows

    def format_table(self) -> str:
        """The per-layer table as aligned text, with totals over targets and over all parameters."""
        rows = self.table()
        width = max(len("layer"), *(len(r.name) for r in rows))
        lines = [f"{'layer':<{width}}  {'shape':<18} {'numel':>11} {'kept':>11} {'sparsity':>9} {'target':>9}"]
        for r in rows:
            target = "" if r.target is None else f"{r.target:.2%}"
            shape = "x".join(map(str, r.shape))
            lines.append(f"{r.name:<{width}}  {shape:<18} {r.numel:>11,} {r.kept:>11,} {r.sparsity:>9.2%} {target:>9}")
        total, kept = self.numel(), sum(r.kept for r in rows)
        lines.append(f"{'targets':<{width}}  {'':<18} {total:>11,} {kept:>11,} {1 - kept / total:>9.2%}")
        if self.model_numel is not None:
            lines.append(f"sparsity over all {self.model_numel:,} parameters: {self.sparsity_over_parameters():.2%}")
        return "\n".join(lines)

    def checksum(self) -> int:
        """CRC32 of names, shapes and mask bits: equal on two processes iff their masks are equal."""
        crc = 0
        for target, mask in zip(self.targets, self.masks):
            crc = zlib.crc32(f"{target.name}:{target.shape};".encode(), crc)
            crc = zlib.crc32(_pack(mask).numpy().tobytes(), crc)
        return crc

    # ---- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Bit-packed masks (uint8 CPU tensors) with the names and shapes they belong to."""
        return {
            "version": STATE_VERSION,
            "names": self.names,
            "shapes": [list(t.shape) for t in self.targets],
            "bits": [_pack(m) for m in self.masks],
            "target_counts": self.target_counts,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore masks in place; names and shapes must match this MaskSet's targets exactly."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise SparsityError(f"mask state version {found!r} is not supported (expected {STATE_VERSION})")
        names, shapes, bits = state["names"], state["shapes"], state["bits"]
        if list(names) != self.names:
            diff = next((i for i, (a, b) in enumerate(zip(names, self.names)) if a != b), min(len(names), len(self)))
            got = names[diff] if diff < len(names) else "<missing>"
            want = self.names[diff] if diff < len(self) else "<none>"
            raise SparsityError(f"mask state target {diff} is {got!r} but this model's target {diff} is {want!r}")
        for name, shape, target, packed in zip(names, shapes, self.targets, bits):
            if tuple(shape) != target.shape:
                raise SparsityError(f"mask state shape {tuple(shape)} for {name!r} does not match {target.shape}")
            if packed.numel() != (target.numel + 7) // 8:
                raise SparsityError(f"mask state for {name!r} holds {packed.numel()} bytes, expected {(target.numel + 7) // 8}")
        for mask, shape, packed in zip(self.masks, shapes, bits):
            mask.copy_(_unpack(packed, shape))
        self.target_counts = state.get("target_counts")
