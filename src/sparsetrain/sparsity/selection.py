"""Exact selection of the k smallest magnitudes across many tensors, without concatenating them.

Written by hand because torch's ``kthvalue``/``topk``/``sort`` need the whole population in one
tensor (a full extra copy of every weight) and are slow at tens of millions of elements (``topk``
over ResNet-50's 25.5M weights takes seconds on two cores). Here the tensors are only read, in
chunks of ``CHUNK`` elements, so the extra memory is a few chunks plus a small candidate set:

1. A strided sample of about ``SAMPLE`` magnitudes guesses a narrow value bracket ``[lo, hi)``
   holding the k-th smallest magnitude.
2. One pass counts the magnitudes below ``lo`` and below ``hi`` and gathers those inside the
   bracket; the order statistic of that small set gives the exact threshold ``t``. If the guess missed
   (adversarial layouts, massive ties), the bracket is narrowed by bisection on the float bit
   pattern with counting-only passes, so memory stays bounded whatever the data.
3. One pass writes the masks: a magnitude above ``t`` is kept, below ``t`` is pruned, and of the
   magnitudes equal to ``t`` the first ones in (tensor order, flat index) order are pruned until
   exactly k are. Ties are therefore broken deterministically by position.

The usual route (:func:`smallest_magnitude_masks`) does 2 and 3 in a single pass: it writes
``|x| >= lo`` as provisional masks while gathering the bracket's values with their positions, then
corrects only those positions once ``t`` is known. On CPU float32/float64 tensors that pass is one fused
compiled loop (:mod:`.band_scan`); elsewhere (CUDA, half precision) it is a few torch ops per chunk.
Order statistics of the sample and of the candidates, and the correction, run in numpy on the host.

Units: ``k`` is a number of elements; masks are ``torch.bool`` with True = kept. Half-precision
tensors are ranked through exact float32 upcasts, so the result does not depend on dtype or device.

Threads: each pass handles its CPU tensors on ``torch.get_num_threads()`` Python threads, each running
the GIL-free compiled scan or its torch ops single-threaded (:func:`_per_tensor`), rather than running
every small op on torch's intra-op pool. A pool op is an OpenMP parallel region whose threads spin at
its barrier: when other processes (data-loader workers, another job) hold the cores, hundreds of such
regions each wait for a descheduled thread, and a 60 ms selection took seconds. Independent threads are simply descheduled and
resumed; results are combined in tensor order, so masks and counts do not depend on the thread count.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from . import band_scan
from .band_scan import key_of, value_of
from .errors import SparsityError

CHUNK = 1 << 18
"""Elements read per step of a pass: large enough to amortise Python overhead, small enough for cache."""

SAMPLE = 1 << 16
"""Target size of the strided sample that guesses the bracket."""

SMALL = 1 << 16
"""Populations up to this size are ranked directly (every magnitude gathered, then one order statistic)."""

COLLECT_LIMIT = 1 << 22
"""Most candidate magnitudes ever gathered at once (16 MiB in float32)."""


PARALLEL_MIN = 1 << 20
"""Populations below this many elements are scanned on the calling thread (threads would cost more)."""

_R = TypeVar("_R")


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    """torch's intra-op pool at one thread for the duration (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _per_tensor(tensors: Sequence[torch.Tensor], scan: Callable[[int], _R], torch_ops: bool = True) -> list[_R]:
    """``[scan(0), scan(1), ...]``: on ``torch.get_num_threads()`` Python threads when the tensors are on the
    CPU, many and large enough, else one after the other on this thread. With ``torch_ops`` (the scans run
    torch kernels) torch's intra-op pool is set to one thread meanwhile; without, it is left alone.

    ``scan(i)`` must only read shared state and write what belongs to tensor ``i``; results come back in
    tensor order whatever the scheduling (the largest tensors are started first, for balance).
    """
    threads = min(torch.get_num_threads(), len(tensors))
    if (threads < 2 or sum(t.numel() for t in tensors) < PARALLEL_MIN
            or any(t.device.type != "cpu" for t in tensors)):
        return [scan(i) for i in range(len(tensors))]
    order = sorted(range(len(tensors)), key=lambda i: -tensors[i].numel())
    with _single_threaded_ops() if torch_ops else nullcontext(), ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {i: pool.submit(scan, i) for i in order}
        return [futures[i].result() for i in range(len(tensors))]


@dataclass(frozen=True)
class Threshold:
    """Where the k smallest magnitudes of a population end.

    The pruned set is every element with ``|x| < value`` plus the first ``ties_pruned`` elements
    with ``|x| == value`` in (tensor order, flat index) order; ``below + ties_pruned == k``.
    """

    value: float
    below: int
    ties_pruned: int
    ties_total: int
    k: int


def _work_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _next_up(value: float, work: torch.dtype) -> float:
    """The smallest value of dtype ``work`` above ``value`` (non-negative finite input)."""
    return value_of(key_of(value, work) + 1, work)


def _magnitude_chunks(
    tensor: torch.Tensor, work: torch.dtype
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, |x| as work dtype)`` for consecutive chunks of the flattened tensor."""
    flat = tensor.detach().reshape(-1)
    buffer = torch.empty(min(CHUNK, flat.numel()), dtype=flat.dtype, device=flat.device)  # reused: no allocation
    for start in range(0, flat.numel(), CHUNK):
        chunk = torch.abs(flat[start : start + CHUNK], out=buffer[: min(CHUNK, flat.numel() - start)])
        yield start, chunk if chunk.dtype == work else chunk.to(work)


def _names_for(tensors: Sequence[torch.Tensor], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"tensor {i}" for i in range(len(tensors))]
    if len(names) != len(tensors):
        raise SparsityError(f"got {len(names)} names for {len(tensors)} tensors")
    return list(names)


def _check_dtypes(tensors: Sequence[torch.Tensor], names: list[str]) -> None:
    for tensor, name in zip(tensors, names):
        if not tensor.is_floating_point():
            raise SparsityError(f"{name} has dtype {tensor.dtype}; only floating-point tensors can be ranked")


def _not_finite(name: str) -> SparsityError:
    return SparsityError(f"{name} holds NaN or inf values; magnitudes cannot be ranked")


def _check_finite(magnitude_sum: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or inf; ``magnitude_sum`` (sum of its |x|) is a cheap first test."""
    if not math.isfinite(float(magnitude_sum)) and not bool(torch.isfinite(tensor.detach()).all()):
        raise _not_finite(name)


def _sample(tensors: Sequence[torch.Tensor], total: int, work: torch.dtype) -> torch.Tensor:
    """Magnitudes of every ``stride``-th element of each tensor (deterministic, unsorted)."""
    stride = max(1, total // SAMPLE)
    device = tensors[0].device
    parts = [t.detach().reshape(-1)[::stride].abs().to(device=device, dtype=work) for t in tensors]
    return torch.cat(parts)


def _order_statistics(values: np.ndarray, ranks: Sequence[int]) -> list[float]:
    """The values of 1-D ``values`` at 0-based ``ranks`` of its ascending order, by numpy's introselect (on the
    host: the populations ranked here are small, and numpy runs no thread pool that could spin under load)."""
    if not ranks:
        return []
    selected = np.partition(values, list(ranks))
    return [float(selected[rank]) for rank in ranks]


def _bracket_pass(
    tensors: Sequence[torch.Tensor], names: list[str], work: torch.dtype, lo: float, hi: float
) -> tuple[int, int, np.ndarray | None]:
    """``(count below lo, count below hi, magnitudes in [lo, hi))`` in one pass.

    The gathered magnitudes are dropped (None) once there would be more than ``COLLECT_LIMIT``.
    Also checks that the tensors are finite.
    """
    room = _GatherBudget()

    def scan(i: int) -> tuple[int, int, list[np.ndarray]]:
        tensor = tensors[i]
        if band_scan.supports(tensor, work):
            fused = band_scan.scan_chunks(tensor, work, lo, hi, CHUNK, room)
            if not fused.finite:
                raise _not_finite(names[i])
            return tensor.numel() - fused.kept, fused.found, fused.values
        below = inside_count = 0
        inside_parts = []
        magnitude_sum = torch.zeros((), dtype=work, device=tensor.device)
        for _, mag in _magnitude_chunks(tensor, work):
            magnitude_sum += mag.sum()
            below_lo = mag < lo
            below += int(torch.count_nonzero(below_lo))
            inside = (mag < hi) ^ below_lo  # below lo implies below hi
            count = int(torch.count_nonzero(inside))
            inside_count += count
            if count and room(count):
                inside_parts.append(mag[inside].cpu().numpy())
        _check_finite(magnitude_sum, tensor, names[i])
        return below, inside_count, inside_parts

    scanned = _per_tensor(tensors, scan, torch_ops=_needs_torch_ops(tensors, work))
    count_lo = sum(below for below, _, _ in scanned)
    count_inside = sum(count for _, count, _ in scanned)
    if count_inside > COLLECT_LIMIT:
        return count_lo, count_lo + count_inside, None
    inside = [part for _, _, parts in scanned for part in parts]
    return count_lo, count_lo + count_inside, np.concatenate(inside) if inside else np.empty(0)


class _GatherBudget:
    """``room(n)``: whether ``n`` more gathered values fit under ``COLLECT_LIMIT`` over all scanning threads (the
    ``n`` are counted either way, so once it says no it keeps saying no)."""

    def __init__(self) -> None:
        self._total = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> bool:
        with self._lock:
            self._total += count
            return self._total <= COLLECT_LIMIT


def _needs_torch_ops(tensors: Sequence[torch.Tensor], work: torch.dtype) -> bool:
    """Whether some tensor is scanned with torch kernels rather than the fused scan."""
    return not all(band_scan.supports(t, work) for t in tensors)


def _threshold_from_candidates(candidates: np.ndarray, below_candidates: int, k: int) -> Threshold:
    """Exact threshold when ``candidates`` holds every magnitude in the bracket that contains rank k."""
    rank_in_candidates = k - below_candidates  # 1-based rank of the k-th smallest among candidates
    value = _order_statistics(candidates, [rank_in_candidates - 1])[0]
    below = below_candidates + int(np.count_nonzero(candidates < value))
    ties_total = int(np.count_nonzero(candidates == value))
    return Threshold(value, below, k - below, ties_total, k)


def _validated(tensors: Sequence[torch.Tensor], k: int, names: Sequence[str] | None) -> tuple[list[str], int]:
    names = _names_for(tensors, names)
    _check_dtypes(tensors, names)
    total = sum(t.numel() for t in tensors)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
        raise SparsityError(f"k={k!r} is outside [0, {total}] (the number of elements to rank)")
    return names, total


def _guess_bracket(tensors: Sequence[torch.Tensor], total: int, k: int, work: torch.dtype) -> tuple[float, float]:
    """A value bracket ``[lo, hi)`` that very likely holds the k-th smallest magnitude (from a sample)."""
    sample = _sample(tensors, total, work).cpu().numpy()
    n = sample.size
    expected = (k - 1) * n / total
    spread = 4.0 * math.sqrt(n * (k / total) * (1.0 - k / total)) + 8.0
    lo_index, hi_index = math.floor(expected - spread), math.ceil(expected + spread)
    ranks = [rank for rank in (lo_index, hi_index) if 0 < rank < n]
    at = dict(zip(ranks, _order_statistics(sample, ranks)))
    # Exact zeros (already pruned weights) are often numerous: keep them below the bracket, so that
    # they are counted rather than gathered, and a k-th value of zero shows up as count_lo >= k.
    smallest_positive = _next_up(0.0, work)
    guess_lo = max(at.get(lo_index, 0.0), smallest_positive)
    guess_hi = max(_next_up(at[hi_index], work) if hi_index < n else math.inf, guess_lo)
    return guess_lo, guess_hi


def find_threshold(
    tensors: Sequence[torch.Tensor], k: int, names: Sequence[str] | None = None
) -> Threshold:
    """Locate the k smallest magnitudes over all elements of ``tensors`` (0 <= k <= total)."""
    names, total = _validated(tensors, k, names)
    if k == 0:
        return Threshold(0.0, 0, 0, 0, 0)
    work = _work_dtype(tensors)
    if total <= SMALL:
        _, _, everything = _bracket_pass(tensors, names, work, 0.0, math.inf)
        assert everything is not None
        return _threshold_from_candidates(everything, 0, k)

    # Bracket invariant: count(|x| < lo) = lo_count < k <= hi_count = count(|x| < hi).
    lo, lo_count, hi, hi_count = 0.0, 0, math.inf, total
    guess_lo, guess_hi = _guess_bracket(tensors, total, k, work)
    count_lo, count_hi, gathered = _bracket_pass(tensors, names, work, guess_lo, guess_hi)
    if count_lo < k <= count_hi:
        if gathered is not None:
            return _threshold_from_candidates(gathered, count_lo, k)
        lo, lo_count, hi, hi_count = guess_lo, count_lo, guess_hi, count_hi
    elif count_lo >= k:
        hi, hi_count = guess_lo, count_lo
    else:
        lo, lo_count = guess_hi, count_hi

    lo_bits, hi_bits = key_of(lo, work), key_of(hi, work)
    while hi_bits - lo_bits > 1 and hi_count - lo_count > COLLECT_LIMIT:
        mid = value_of((lo_bits + hi_bits) // 2, work)
        count_mid, _, _ = _bracket_pass(tensors, names, work, mid, mid)  # an empty bracket: a count only
        if count_mid < k:
            lo, lo_count, lo_bits = mid, count_mid, key_of(mid, work)
        else:
            hi, hi_count, hi_bits = mid, count_mid, key_of(mid, work)
    if hi_bits - lo_bits == 1:  # the bracket holds the single value lo: all of it is ties
        return Threshold(lo, lo_count, k - lo_count, hi_count - lo_count, k)
    _, _, gathered = _bracket_pass(tensors, names, work, lo, hi)
    assert gathered is not None  # the loop above stops once the bracket holds <= COLLECT_LIMIT
    return _threshold_from_candidates(gathered, lo_count, k)


def masks_from_threshold(
    tensors: Sequence[torch.Tensor],
    threshold: Threshold,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Bool keep-masks pruning exactly ``threshold.k`` elements; written into ``out`` if given."""
    work = _work_dtype(tensors)
    value = threshold.value
    all_ties_pruned = 0 < threshold.ties_pruned == threshold.ties_total  # then |x| > t keeps; else |x| >= t
    masks = _output_masks(tensors, out)

    def write(i: int) -> None:
        if band_scan.supports(tensors[i], work):  # |x| > t is |x| >= the next value up
            keep_from = _next_up(value, work) if all_ties_pruned else value
            band_scan.scan_chunks(tensors[i], work, keep_from, keep_from, CHUNK, _no_room, masks[i])
            return
        flat = masks[i].view(-1)
        for start, mag in _magnitude_chunks(tensors[i], work):
            dest = flat[start : start + mag.numel()]
            (torch.gt if all_ties_pruned else torch.ge)(mag, value, out=dest)

    _per_tensor(tensors, write, torch_ops=_needs_torch_ops(tensors, work))
    ties_left = 0 if all_ties_pruned else threshold.ties_pruned
    for tensor, mask in zip(tensors, masks):  # only the first ties_left elements equal to t, in order
        if ties_left == 0:
            break
        flat = mask.view(-1)
        for start, mag in _magnitude_chunks(tensor, work):
            tie_positions = torch.nonzero(mag == value).squeeze(1)[:ties_left]
            flat[start + tie_positions] = False
            ties_left -= tie_positions.numel()
            if ties_left == 0:
                break
    return masks


def pruned_counts_from_threshold(tensors: Sequence[torch.Tensor], threshold: Threshold) -> list[int]:
    """Number of elements of each tensor that ``masks_from_threshold`` would prune."""
    work = _work_dtype(tensors)
    count_ties = threshold.ties_pruned > 0

    def scan(i: int) -> tuple[int, int]:
        if band_scan.supports(tensors[i], work):  # ties are [t, next up) when counted, else an empty band
            band_end = _next_up(threshold.value, work) if count_ties else threshold.value
            fused = band_scan.scan_chunks(tensors[i], work, threshold.value, band_end, CHUNK, _no_room)
            return tensors[i].numel() - fused.kept, fused.found
        below = ties = 0
        for _, mag in _magnitude_chunks(tensors[i], work):
            below += int(torch.count_nonzero(mag < threshold.value))
            if count_ties:
                ties += int(torch.count_nonzero(mag == threshold.value))
        return below, ties

    ties_left = threshold.ties_pruned
    counts = []
    for below, ties in _per_tensor(tensors, scan, torch_ops=_needs_torch_ops(tensors, work)):
        tie_share = min(ties, ties_left)
        ties_left -= tie_share
        counts.append(below + tie_share)
    return counts


def _no_room(count: int) -> bool:
    """A gather budget of zero: counting passes keep no values."""
    return False


def _output_masks(tensors: Sequence[torch.Tensor], out: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    masks = []
    for i, tensor in enumerate(tensors):
        mask = out[i] if out is not None else torch.empty(tensor.shape, dtype=torch.bool, device=tensor.device)
        if mask.shape != tensor.shape or mask.dtype != torch.bool:
            raise SparsityError(f"out[{i}] must be a bool tensor of shape {tuple(tensor.shape)}")
        masks.append(mask)
    return masks


def _true_positions(flags: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero(flags).squeeze(1)`` for a 1-D bool tensor where True is rare, about 2x faster on the CPU:
    ``nonzero`` first finds the 8-byte words holding any True (an eighth of the scan), then only inside them."""
    if flags.numel() % 8 or flags.device.type != "cpu" or not flags.is_contiguous():
        return torch.nonzero(flags).squeeze(1)
    words = torch.nonzero(flags.view(torch.int64)).squeeze(1)
    rows, columns = torch.nonzero(flags.view(-1, 8)[words], as_tuple=True)
    return words[rows] * 8 + columns


def _masks_in_one_pass(
    tensors: Sequence[torch.Tensor], names: list[str], work: torch.dtype, k: int, lo: float, hi: float,
    masks: list[torch.Tensor],
) -> bool:
    """Write exact masks with a single pass over the data if the k-th magnitude lies in ``[lo, hi)``.

    The pass writes ``|x| >= lo`` as a provisional mask and gathers the few magnitudes in
    ``[lo, hi)`` with their positions; once the threshold is known from them, only those positions
    are corrected. Returns False (masks then hold garbage) when the bracket missed or would gather
    more than ``COLLECT_LIMIT`` values; the caller then takes the general path.
    """
    room = _GatherBudget()

    def scan(i: int) -> tuple[int, list[np.ndarray], list[np.ndarray]] | None:
        tensor, flat = tensors[i], masks[i].view(-1)
        if band_scan.supports(tensor, work):
            fused = band_scan.scan_chunks(tensor, work, lo, hi, CHUNK, room, masks[i])
            if not fused.finite:
                raise _not_finite(names[i])
            return (tensor.numel() - fused.kept, fused.values, fused.positions) if fused.complete else None
        kept = torch.zeros((), dtype=torch.int64, device=tensor.device)
        magnitude_sum = torch.zeros((), dtype=work, device=tensor.device)
        values, positions = [], []
        band = torch.empty(min(CHUNK, tensor.numel()), dtype=torch.bool, device=tensor.device)  # reused per chunk
        for start, mag in _magnitude_chunks(tensor, work):
            dest = flat[start : start + mag.numel()]
            torch.ge(mag, lo, out=dest)
            kept += torch.count_nonzero(dest)
            magnitude_sum += mag.sum()
            inside = band[: mag.numel()]
            torch.lt(mag, hi, out=inside)
            inside &= dest
            index = _true_positions(inside)
            if not room(index.numel()):
                return None
            values.append(mag[index].cpu().numpy())
            positions.append((start + index).cpu().numpy())
        _check_finite(magnitude_sum, tensor, names[i])
        return tensor.numel() - int(kept), values, positions

    scanned = _per_tensor(tensors, scan, torch_ops=_needs_torch_ops(tensors, work))
    if any(result is None for result in scanned):
        return False
    # From here on only the gathered candidates are touched, with numpy on the host (no torch thread pool).
    count_lo = sum(result[0] for result in scanned)
    gathered = [(i, np.concatenate(values), np.concatenate(positions))
                for i, (_, values, positions) in enumerate(scanned) if values]
    if not count_lo < k <= count_lo + sum(value.size for _, value, _ in gathered):
        return False
    threshold = _threshold_from_candidates(np.concatenate([value for _, value, _ in gathered]), count_lo, k)
    ties_left = threshold.ties_pruned
    for i, value, index in gathered:
        prune = value < threshold.value
        if ties_left:
            ties = np.flatnonzero(value == threshold.value)[:ties_left]
            prune[ties] = True
            ties_left -= ties.size
        _clear(masks[i], index[prune])
    return True


def _clear(mask: torch.Tensor, flat_positions: np.ndarray) -> None:
    """``mask.view(-1)[flat_positions] = False`` (through numpy for a CPU mask)."""
    if mask.device.type == "cpu":
        mask.view(-1).numpy()[flat_positions] = False
    else:
        mask.view(-1)[torch.from_numpy(flat_positions).to(mask.device)] = False


def smallest_magnitude_masks(
    tensors: Sequence[torch.Tensor],
    k: int,
    names: Sequence[str] | None = None,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Masks pruning exactly the ``k`` smallest magnitudes over all ``tensors`` together (GP).

    Usually one pass over the data after the sample (see ``_masks_in_one_pass``); otherwise
    ``find_threshold`` then ``masks_from_threshold``. Both give the same masks.
    """
    names, total = _validated(tensors, k, names)
    masks = _output_masks(tensors, out)
    if total > SMALL and 0 < k < total:
        work = _work_dtype(tensors)
        lo, hi = _guess_bracket(tensors, total, k, work)
        if _masks_in_one_pass(tensors, names, work, k, lo, hi, masks):
            return masks
    return masks_from_threshold(tensors, find_threshold(tensors, k, names), masks)


def per_tensor_smallest_magnitude_masks(
    tensors: Sequence[torch.Tensor],
    counts: Sequence[int],
    names: Sequence[str] | None = None,
    out: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Masks pruning exactly ``counts[i]`` smallest magnitudes inside each tensor separately."""
    names = _names_for(tensors, names)
    if len(counts) != len(tensors):
        raise SparsityError(f"got {len(counts)} counts for {len(tensors)} tensors")
    masks = []
    for i, (tensor, count, name) in enumerate(zip(tensors, counts, names)):
        masks += smallest_magnitude_masks([tensor], count, [name], None if out is None else [out[i]])
    return masks
