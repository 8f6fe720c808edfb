"""Structured sparsity patterns: N:M groups and RxC blocks.

A pattern string is either ``"N:M"`` (``1 <= N < M``, e.g. ``"2:4"``, ``"1:8"``) or ``"RxC"``
(``R, C >= 1``, not both 1, e.g. ``"1x8"``, ``"4x4"``); ``parse_pattern`` reads it.

**N:M** (as NVIDIA's ASP): in every group of ``M`` consecutive weights along the *input* dimension
the ``N`` largest magnitudes are kept. Linear weights ``[out, in]`` are grouped along ``in``; conv
weights ``[out, in, *kernel]`` along the input channels at each output channel and kernel position
(the in-channel axis is moved last, grouped, moved back). Within a group, ties in magnitude are
broken by position: the weight with the lower input index is kept. Every group keeps exactly ``N``
weights, so the sparsity of a patterned tensor is exactly ``1 - N/M``; the requested sparsity must
equal that (or be omitted). The budget distribution plays no role.

**Blocks** ``RxC``: the weight is viewed as a 2-D matrix — Linear as it is, a conv flattened as
``[out, in * prod(kernel)]`` (so a ``1x8`` block of a 3x3 conv may span input channels and kernel
positions, in the memory order of the weight) — and cut into ``R`` rows by ``C`` columns blocks.
A block's score is the L1 norm of its weights (float32, or float64 for float64 weights). Blocks
are then ranked like single weights by the usual budgets, with counts *in blocks*: the sparsity
is the fraction of blocks pruned among the tensors the pattern applies to (``round(s * blocks)``,
exact): ``gp`` ranks every block score of all tensors together (one global ranking, ties by
(tensor order, block index)); ``uniform`` prunes ``round(s * blocks_i)`` blocks of each tensor;
``erk`` distributes kept blocks proportionally to ``sum(shape)`` (RigL's ERK, capped at dense).

A tensor the pattern does not fit (input dimension not divisible by ``M``; a 2-D view not
divisible into ``R x C`` blocks; fewer than 2 dimensions) stays dense and a ``PatternWarning``
names it; it is left out of the block budgets.

Masks are ``torch.bool`` with True = kept; pruned counts are numbers of weights.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import budgets
from .errors import SparsityError, check_sparsity
from .selection import per_tensor_smallest_magnitude_masks, smallest_magnitude_masks

VALID_FORMS = "'N:M' with 1 <= N < M (e.g. '2:4', '1:8') or 'RxC' blocks (e.g. '1x8', '4x4')"
PATTERN_METHODS = ("gp", "uniform", "erk")
"""Budget methods that accept a pattern (``erk`` only with blocks: N:M fixes every tensor's sparsity)."""

_NM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_BLOCK = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


class PatternWarning(UserWarning):
    """A target the pattern does not fit stays dense."""


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: ``kind`` is ``"nm"`` (``a`` = N kept of ``b`` = M) or ``"block"`` (``a`` rows x ``b`` cols)."""

    kind: str
    a: int
    b: int

    @property
    def sparsity(self) -> float | None:
        """``1 - N/M`` for N:M (the only sparsity it allows); None for blocks (any sparsity)."""
        return 1.0 - self.a / self.b if self.kind == "nm" else None

    def __str__(self) -> str:
        return f"{self.a}:{self.b}" if self.kind == "nm" else f"{self.a}x{self.b}"


def parse_pattern(text: object) -> Pattern:
    """Parse ``"N:M"`` or ``"RxC"``; anything else raises a one-line ``SparsityError``."""
    if isinstance(text, Pattern):
        return text
    if isinstance(text, str):
        nm, block = _NM.fullmatch(text), _BLOCK.fullmatch(text)
        if nm:
            n, m = int(nm.group(1)), int(nm.group(2))
            if 1 <= n < m:
                return Pattern("nm", n, m)
        elif block:
            r, c = int(block.group(1)), int(block.group(2))
            if r >= 1 and c >= 1 and r * c > 1:
                return Pattern("block", r, c)
    raise SparsityError(f"pattern={text!r} is not a valid pattern; valid: {VALID_FORMS}")


def check_pattern_sparsity(pattern: Pattern, sparsity: float | None) -> float:
    """The sparsity a pattern prunes to: for N:M ``1 - N/M`` (``sparsity`` must match or be None);
    for blocks ``sparsity`` itself (required, in [0, 1))."""
    if pattern.kind == "nm":
        implied = pattern.sparsity
        assert implied is not None
        if sparsity is not None and (isinstance(sparsity, bool) or not isinstance(sparsity, (int, float))
                                     or abs(float(sparsity) - implied) > 1e-9):
            raise SparsityError(f"sparsity={sparsity!r} does not match pattern {str(pattern)!r}, which prunes "
                                f"exactly 1 - N/M = {implied:.6g}; give that or omit sparsity")
        return implied
    if sparsity is None:
        raise SparsityError(f"pattern {str(pattern)!r} (blocks) needs a sparsity in [0, 1)")
    return check_sparsity(sparsity)


def fits(pattern: Pattern, shape: Sequence[int]) -> bool:
    """Whether ``pattern`` applies to a weight of ``shape`` (otherwise it stays dense)."""
    if len(shape) < 2:
        return False
    if pattern.kind == "nm":
        return shape[1] % pattern.b == 0
    rows, cols = shape[0], math.prod(shape[1:])
    return rows % pattern.a == 0 and cols % pattern.b == 0


def _warn_dense(pattern: Pattern, name: str, shape: Sequence[int]) -> None:
    if len(shape) < 2:
        why = "it has fewer than 2 dimensions"
    elif pattern.kind == "nm":
        why = f"its input dimension {shape[1]} does not divide by M={pattern.b}"
    else:
        why = f"its 2-D view {shape[0]}x{math.prod(shape[1:])} does not divide into {pattern} blocks"
    warnings.warn(f"pattern {pattern}: target {name!r} {tuple(shape)} stays dense: {why}", PatternWarning,
                  stacklevel=3)


def _work(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly ``n`` kept in every group of ``m`` consecutive input-dimension weights.

    ``weight.shape[1]`` must divide by ``m``. Ties: the lower input index is kept.
    """
    w = weight.detach()
    moved = w.movedim(1, -1)  # [out, *kernel, in]
    mag = moved.abs().to(_work(w)).reshape(-1, m)
    order = torch.sort(mag, dim=1, descending=True, stable=True).indices  # stable: lower index first on ties
    keep = torch.zeros_like(mag, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def block_scores(weight: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """L1 norm of every ``r x c`` block of the 2-D view ``[out, prod(rest)]``, shape ``[out/r, cols/c]``."""
    w = weight.detach()
    rows, cols = w.shape[0], math.prod(w.shape[1:])
    mag = w.reshape(rows, cols).abs().to(_work(w))
    return mag.reshape(rows // r, r, cols // c, c).sum(dim=(1, 3))


def expand_blocks(block_keep: torch.Tensor, shape: Sequence[int], r: int, c: int) -> torch.Tensor:
    """Weight keep-mask of ``shape`` from a block keep-mask ``[out/r, cols/c]``."""
    br, bc = block_keep.shape
    full = block_keep[:, None, :, None].expand(br, r, bc, c)
    return full.reshape(tuple(shape)).contiguous()


def block_count(shape: Sequence[int], pattern: Pattern) -> int:
    """Number of blocks of a weight of ``shape`` (0 if the pattern does not fit)."""
    return math.prod(shape) // (pattern.a * pattern.b) if fits(pattern, shape) else 0


def pattern_counts(pattern: Pattern, shapes: Sequence[Sequence[int]], sparsity: float, method: str) -> list[int]:
    """Pruned weights per tensor that ``pattern_masks`` gives, from the shapes alone (exact).

    For ``gp`` only the total is fixed by the shapes: it is booked on the first patterned tensor.
    """
    fitting = [fits(pattern, s) for s in shapes]
    numels = [math.prod(s) for s in shapes]
    if pattern.kind == "nm":
        return [n // pattern.b * (pattern.b - pattern.a) if f else 0 for n, f in zip(numels, fitting)]
    size = pattern.a * pattern.b
    blocks = [block_count(s, pattern) for s in shapes]
    if method == "gp":
        counts = [0] * len(shapes)
        if any(fitting):
            counts[fitting.index(True)] = budgets.count_for(sum(blocks), sparsity) * size
        return counts
    return [c * size for c in _block_budget(pattern, shapes, blocks, sparsity, method)]


def _block_budget(pattern: Pattern, shapes: Sequence[Sequence[int]], blocks: Sequence[int], sparsity: float,
                  method: str) -> list[int]:
    """Pruned blocks per tensor of a per-tensor budget (``uniform`` or ``erk``); 0 for tensors that do not fit."""
    if method == "uniform":
        return budgets.uniform_counts(blocks, sparsity)
    if method == "erk":
        total = sum(blocks)
        kept_total = total - budgets.count_for(total, sparsity)
        shares = [sum(s) if b else 0 for s, b in zip(shapes, blocks)]
        kept = budgets._water_fill(shares, list(blocks), kept_total)
        return [b - k for b, k in zip(blocks, kept)]
    raise SparsityError(f"method={method!r} does not support a pattern; valid: {', '.join(PATTERN_METHODS)}")


def check_pattern_method(pattern: Pattern, method: str) -> None:
    """Raise unless ``method`` can budget ``pattern`` (see ``PATTERN_METHODS``)."""
    allowed = PATTERN_METHODS if pattern.kind == "block" else ("gp", "uniform")
    if method not in allowed:
        raise SparsityError(f"method={method!r} does not support pattern {str(pattern)!r}; "
                            f"valid with it: {', '.join(allowed)}")


def pattern_masks(
    tensors: Sequence[torch.Tensor],
    pattern: Pattern | str,
    sparsity: float | None,
    method: str = "gp",
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor], list[int]]:
    """Keep-masks and pruned weight counts per tensor for ``pattern`` (weights untouched).

    Tensors the pattern does not fit get all-True masks and a ``PatternWarning``.
    """
    pattern = parse_pattern(pattern)
    check_pattern_method(pattern, method)
    sparsity = check_pattern_sparsity(pattern, sparsity)
    names = list(names) if names is not None else [f"tensor {i}" for i in range(len(tensors))]
    shapes = [tuple(t.shape) for t in tensors]
    fitting = [fits(pattern, s) for s in shapes]
    for name, shape, ok in zip(names, shapes, fitting):
        if not ok:
            _warn_dense(pattern, name, shape)
    for tensor, name in zip(tensors, names):
        if not tensor.is_floating_point():
            raise SparsityError(f"{name} has dtype {tensor.dtype}; only floating-point tensors can be ranked")
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise SparsityError(f"{name} holds NaN or inf values; magnitudes cannot be ranked")
    masks = [torch.ones(s, dtype=torch.bool, device=t.device) for s, t in zip(shapes, tensors)]
    idx = [i for i, ok in enumerate(fitting) if ok]
    if pattern.kind == "nm":
        for i in idx:
            masks[i] = nm_mask(tensors[i], pattern.a, pattern.b)
    elif idx:
        r, c = pattern.a, pattern.b
        scores = [block_scores(tensors[i], r, c) for i in idx]
        sub_names = [names[i] for i in idx]
        if method == "gp":
            k = budgets.count_for(sum(s.numel() for s in scores), sparsity)
            keep = smallest_magnitude_masks(scores, k, sub_names)
        else:
            blocks = _block_budget(pattern, [shapes[i] for i in idx], [s.numel() for s in scores], sparsity, method)
            keep = per_tensor_smallest_magnitude_masks(scores, blocks, sub_names)
        for i, block_keep in zip(idx, keep):
            masks[i] = expand_blocks(block_keep, shapes[i], r, c)
    counts = [m.numel() - int(m.sum()) for m in masks]
    return masks, counts
