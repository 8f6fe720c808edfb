"""Axis-aligned box primitives for object detection: IoU, format conversion and non-maximum suppression,
in plain vectorised torch (CPU and CUDA alike).

Why hand-written: torchvision's ``box_iou``/``nms``/``batched_nms`` (compiled operators) do not import
in this environment, and the detection task must run without them. The semantics are torchvision's
(``torchvision.ops.boxes``) so that results match it, with the few choices torchvision leaves open
(ties in score, degenerate boxes) fixed and documented on each function.

Formats: ``ltrb`` boxes are ``(x1, y1, x2, y2)`` (left, top, right, bottom) with ``x1 <= x2`` and
``y1 <= y2``; ``xywh`` boxes are ``(centre x, centre y, width, height)``. Both are ``(..., 4)`` tensors
in any consistent unit (pixels, or fractions of the image for SSD). IoU is unitless, in ``[0, 1]``.

NMS cost: the boxes are sorted by score (for :func:`batched_nms`, by category, then score) and visited
in blocks of ``_BLOCK`` boxes. A block is first tested against every box already kept in its categories
(one IoU matrix, ``_KEPT_CHUNK`` kept boxes at a time), then resolved inside itself by a fixed-point
iteration on its ``(block, block)`` suppression matrix (each iteration one vector-matrix product; at
most ``block`` iterations, in practice a handful: one more than the longest chain of boxes suppressing
each other). Time is ``O(N * kept)`` within a category, memory
``O(block * (block + kept chunk))``, never ``O(N^2)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

__all__ = ["batched_nms", "box_iou", "ltrb_to_xywh", "nms", "xywh_to_ltrb"]

_BLOCK = 128  # boxes resolved together by one fixed-point iteration (larger: longer chains, slower)
_KEPT_CHUNK = 4096  # kept boxes compared with a block at a time


def _check_boxes(name: str, boxes: torch.Tensor, batched: bool = False) -> int:
    """Number of boxes of an ``(N, 4)`` floating tensor (``(..., 4)`` when ``batched``), or a ``UserError``."""
    if not isinstance(boxes, torch.Tensor):
        raise UserError(f"{name} must be a tensor of boxes; got {type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise UserError(f"{name} must be a floating tensor; got dtype {boxes.dtype}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4 or (not batched and boxes.dim() != 2):
        want = "(..., 4)" if batched else "(N, 4)"
        raise UserError(f"{name} must have shape {want}; got {tuple(boxes.shape)}")
    return boxes.shape[0]


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype IoU is computed in: the inputs' common dtype, at least float32 (half inputs are upcast)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every box of ``a`` with every box of ``b``.

    Args:
        a: ``(N, 4)`` ltrb boxes.
        b: ``(M, 4)`` ltrb boxes, same device.

    Returns:
        ``(N, M)`` IoU in ``[0, 1]``, dtype the inputs' common dtype but at least float32.
        ``out[i, j] = inter / (area_a[i] + area_b[j] - inter)``, evaluated in exactly that order (so it is
        symmetric bit for bit). Widths and heights are clamped at 0, so inverted boxes count as empty; a
        pair whose union is 0 (two empty boxes) gets 0, never NaN.
    """
    _check_boxes("a", a)
    _check_boxes("b", b)
    dtype = _work_dtype(a, b)
    a, b = a.to(dtype), b.to(dtype)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    empty = union <= 0
    return torch.where(empty, torch.zeros_like(inter), inter / union.masked_fill(empty, 1))


def ltrb_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` ltrb boxes as ``(..., 4)`` xywh: ``cx = 0.5 * (x1 + x2)``, ``w = x2 - x1`` (same for y).

    A new tensor, same dtype and device; the formulas are SSD's (NVIDIA ``Encoder.encode``)."""
    _check_boxes("boxes", boxes, batched=True)
    l, t, r, b = boxes.unbind(-1)
    return torch.stack((0.5 * (l + r), 0.5 * (t + b), r - l, b - t), dim=-1)


def xywh_to_ltrb(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xywh boxes as ``(..., 4)`` ltrb: ``x1 = cx - 0.5 * w``, ``x2 = cx + 0.5 * w`` (same for y).

    A new tensor, same dtype and device; the inverse of :func:`ltrb_to_xywh` up to rounding (exact for
    dyadic values such as multiples of 1/64)."""
    _check_boxes("boxes", boxes, batched=True)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def _check_threshold(iou_threshold: float) -> float:
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)) or math.isnan(iou_threshold):
        raise UserError(f"iou_threshold={iou_threshold!r} must be a real number (boxes are suppressed above it; "
                        "useful values lie in [0, 1])")
    return float(iou_threshold)


def _suppresses(boxes: torch.Tensor, cats: torch.Tensor | None, rows: torch.Tensor, cols: slice,
                threshold: float) -> torch.Tensor:
    """``(len(rows), cols)`` bool: box ``rows[i]`` would suppress box ``cols[j]`` (IoU above the threshold
    and, with categories, the same category)."""
    over = box_iou(boxes[rows], boxes[cols]) > threshold
    if cats is not None:
        over &= cats[rows][:, None] == cats[cols][None, :]
    return over


def _greedy_keep(boxes: torch.Tensor, cats: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """Greedy NMS over boxes already sorted by category (if any), then decreasing priority: ``(N,)`` bool,
    True where kept. Box ``i`` is kept iff no kept box ``j < i`` of its category has IoU > threshold with it."""
    n = boxes.shape[0]
    device = boxes.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    if cats is None:
        run_start = None
    else:  # run_start[i]: the first position of box i's category; earlier boxes cannot suppress it
        first = torch.ones(n, dtype=torch.bool, device=device)
        first[1:] = cats[1:] != cats[:-1]
        run_start = torch.cummax(torch.where(first, torch.arange(n, device=device), 0), 0).values
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = slice(start, stop)
        alive = torch.ones(stop - start, dtype=torch.bool, device=device)
        low = 0 if run_start is None else int(run_start[start])
        kept = keep[low:start].nonzero().squeeze(1) + low
        for k in range(0, kept.numel(), _KEPT_CHUNK):
            alive &= ~_suppresses(boxes, cats, kept[k:k + _KEPT_CHUNK], block, threshold).any(0)
        # Inside the block: edges[j, i] = box j precedes box i and would suppress it. Box i survives
        # iff no *surviving* j has an edge to it; iterating that rule from "all alive" fixes one more box
        # per round in index order, so it reaches the greedy result (the rule's unique fixed point).
        local = torch.arange(stop - start, device=device)
        edges = _suppresses(boxes, cats, local + start, block, threshold)
        edges &= local[:, None] < local[None, :]
        edges = edges.to(torch.float32)
        survive = alive
        while True:
            updated = alive & ((survive.to(torch.float32) @ edges) == 0)
            if torch.equal(updated, survive):
                break
            survive = updated
        keep[block] = survive
    return keep


def _nms(boxes: torch.Tensor, scores: torch.Tensor, cats: torch.Tensor | None, iou_threshold: float) -> torch.Tensor:
    n = _check_boxes("boxes", boxes)
    if not isinstance(scores, torch.Tensor) or scores.shape != (n,) or not scores.is_floating_point():
        got = f"shape {tuple(scores.shape)} {scores.dtype}" if isinstance(scores, torch.Tensor) else repr(scores)
        raise UserError(f"scores must be a floating tensor of shape ({n},) (one per box); got {got}")
    threshold = _check_threshold(iou_threshold)
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    with torch.no_grad():
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        if cats is None:
            return order[_greedy_keep(boxes.detach()[order], None, threshold)]
        # Categories are independent, so each is resolved as one contiguous run (a block then meets only
        # the kept boxes of its own categories); the kept boxes are put back in score order afterwards.
        order = order[torch.sort(cats[order], stable=True).indices]
        kept = order[_greedy_keep(boxes.detach()[order], cats[order], threshold)].sort().values
        return kept[torch.sort(scores.detach()[kept], descending=True, stable=True).indices]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``.

    Boxes are visited by decreasing score; a box is kept unless its IoU (:func:`box_iou`) with an already
    kept box is strictly greater than ``iou_threshold`` (IoU exactly at the threshold does not suppress).
    Equal scores are visited in increasing index order (a stable sort; torchvision leaves this open).

    Args:
        boxes: ``(N, 4)`` ltrb boxes, any floating dtype, CPU or CUDA.
        scores: ``(N,)`` floating scores, same device.
        iou_threshold: a real number; values >= 1 keep everything, values < 0 keep only the best box
            (every pair, even a disjoint one, has IoU >= 0 > threshold).

    Returns:
        ``(K,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score (ties: lower index
        first); empty for ``N = 0``. Not differentiable (indices only).
    """
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`nms` independently within each category of ``idxs``, as ``torchvision.ops.batched_nms``.

    A box is suppressed only by a kept box of the same category. torchvision gets this by shifting each
    category's boxes by ``idx * (max coordinate + 1)`` so categories never overlap; here the IoU test is
    masked by category equality instead, which gives the same result without the shift's rounding of
    large coordinates and for negative coordinates too.

    Args:
        boxes: ``(N, 4)`` ltrb boxes, any floating dtype, CPU or CUDA.
        scores: ``(N,)`` floating scores.
        idxs: ``(N,)`` integer category of each box (any integer values).
        iou_threshold: as :func:`nms`.

    Returns:
        ``(K,)`` int64 indices of the kept boxes of all categories together, by decreasing score (ties:
        lower index first); empty for ``N = 0``.
    """
    n = _check_boxes("boxes", boxes)
    if not isinstance(idxs, torch.Tensor) or idxs.shape != (n,) or idxs.is_floating_point() or idxs.is_complex():
        got = f"shape {tuple(idxs.shape)} {idxs.dtype}" if isinstance(idxs, torch.Tensor) else repr(idxs)
        raise UserError(f"idxs must be an integer tensor of shape ({n},) (one category per box); got {got}")
    return _nms(boxes, scores, idxs, iou_threshold)
