"""One fused pass over a CPU tensor's magnitudes: keep flags at or above a bound and their count, finiteness,
and the few values inside a bracket with their positions. Every pass of ``selection.py`` (bracket counts,
the one-pass masks, mask writing, pruned counts) is this pass with different bounds.

Written by hand (compiled with numba) because torch has no fused form of it: in torch each step (``abs``,
``>=``, a second comparison, ``&``, ``nonzero``, ``sum``) is a separate kernel that reads and writes the whole
chunk, and together they took about three times one ``abs()`` pass over ResNet-50's weights. Here every
element is read once and its keep flag written once, in a loop the compiler vectorises; the rare elements
inside the bracket are found from a 64-bit hit word per block of 64 elements.

Magnitudes are compared as integers: for IEEE floats, ``bits & ~sign`` orders exactly like ``|x|`` (NaN and
inf have the largest keys), so no ``abs()`` copy is made. Only float32 and float64 tensors on the CPU take this
path (:func:`supports`); everything else goes through the torch ops in ``selection.py``, with the same result,
as does everything when numba is not importable (a source checkout on ``PYTHONPATH`` without the dependencies,
as ``bench/throughput.py`` runs on a lent GPU machine).

The kernels compile on first use and numba caches them on disk where it can write; the first call in a
process then costs about 0.35 s (loading the cached code), or about 0.7 s when it has to compile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

try:
    import numba
except ImportError:  # a source checkout run without the installed dependencies (PYTHONPATH=src): torch ops serve
    numba = None

BLOCK = 64
"""Elements per hit word (bits of a uint64)."""

_KEY_DTYPE = {torch.float32: torch.int32, torch.float64: torch.int64}
_SIGN_OFF = {torch.float32: 0x7FFFFFFF, torch.float64: 0x7FFFFFFFFFFFFFFF}

# Position of the lowest set bit of a uint64 by de Bruijn multiplication (no intrinsic needed).
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DEBRUIJN_INDEX[((1 << _bit) * int(_DEBRUIJN) % (1 << 64)) >> 58] = _bit


def _compiled(function):
    """``numba.njit`` releasing the GIL (scans run on several Python threads), cached on disk where numba finds
    a writable cache directory (next to this file, or the user's cache); compiled per process otherwise."""
    if numba is None:
        return None
    try:
        return numba.njit(nogil=True, cache=True, boundscheck=False)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available" (read-only install and home)
        return numba.njit(nogil=True, cache=False, boundscheck=False)(function)


@_compiled
def _lowest_bit(word, table):
    """Index (0..63) of the lowest set bit of a non-zero uint64."""
    lowest = word & (~word + np.uint64(1))
    return table[(lowest * _DEBRUIJN) >> np.uint64(58)]


@_compiled
def _scan(bits, sign_off, lo, hi, keep, positions, keys, start, table):
    """For the integer keys ``bits & sign_off``: ``keep[j] = key >= lo``, and each element with ``lo <= key < hi``
    appended, in index order, to ``positions`` (``start + j``) and ``keys`` (both at least ``len(bits)`` long).

    Returns (number kept, number appended, largest key)."""
    kept = 0
    top = sign_off - sign_off  # zero of the key dtype
    found = 0
    size = bits.shape[0]
    whole = size - size % BLOCK
    for b0 in range(0, whole, BLOCK):
        hits = np.uint64(0)
        kept_here = np.int32(0)
        for j in range(BLOCK):
            key = bits[b0 + j] & sign_off
            k = key >= lo
            keep[b0 + j] = k
            kept_here += np.int32(k)
            top = max(top, key)
            hits |= np.uint64(k & (key < hi)) << np.uint64(j)
        kept += kept_here
        while hits:
            j = b0 + _lowest_bit(hits, table)
            positions[found] = start + j
            keys[found] = bits[j] & sign_off
            found += 1
            hits &= hits - np.uint64(1)
    for j in range(whole, size):
        key = bits[j] & sign_off
        k = key >= lo
        keep[j] = k
        kept += np.int32(k)
        top = max(top, key)
        if k and key < hi:
            positions[found] = start + j
            keys[found] = key
            found += 1
    return kept, found, top


def supports(tensor: torch.Tensor, work: torch.dtype) -> bool:
    """Whether :func:`scan_chunks` handles ``tensor`` ranked in dtype ``work``."""
    return numba is not None and tensor.device.type == "cpu" and tensor.dtype == work and work in _KEY_DTYPE


def key_of(value: float, work: torch.dtype) -> int:
    """The integer key (bit pattern) of a non-negative value of dtype ``work``, float32 or float64 (``inf``
    included): keys order like the values, and consecutive keys are consecutive representable values."""
    return int(torch.tensor(value, dtype=work).view(_KEY_DTYPE[work]).item())


def value_of(key: int, work: torch.dtype) -> float:
    """The value of dtype ``work`` whose key is ``key`` (inverse of :func:`key_of`)."""
    return float(torch.tensor(key, dtype=_KEY_DTYPE[work]).view(work).item())


@dataclass
class BandScan:
    """What one tensor's pass found: ``kept`` elements at or above ``lo``, ``found`` inside ``[lo, hi)``, of which
    ``values`` (numpy arrays of magnitudes, dtype ``work``) at flat ``positions`` (int64 arrays) were kept, one
    pair per chunk, in index order; ``complete`` when none was dropped."""

    kept: int
    found: int
    values: list[np.ndarray]
    positions: list[np.ndarray]
    complete: bool
    finite: bool


def scan_chunks(
    tensor: torch.Tensor, work: torch.dtype, lo: float, hi: float, chunk: int, room: Callable[[int], bool],
    mask: torch.Tensor | None = None,
) -> BandScan:
    """Count ``|tensor| >= lo`` (written to ``mask`` if given) and gather the magnitudes in ``[lo, hi)`` with their
    flat positions.

    ``chunk`` elements are scanned per call; after each, ``room(n)`` is asked whether its ``n`` gathered values
    may be kept (a shared budget): when it says no they are dropped, and the scan goes on counting.
    ``finite`` is False when the tensor holds NaN or inf (counts and mask are then meaningless).
    """
    key_dtype = _KEY_DTYPE[work]
    magnitude_dtype = np.float32 if work == torch.float32 else np.float64
    bits = tensor.detach().reshape(-1).view(key_dtype).numpy()
    size = bits.shape[0]
    keep = mask.view(-1).view(torch.uint8).numpy() if mask is not None else None
    scratch = np.empty(min(chunk, size), dtype=np.uint8) if keep is None else None  # flags nobody reads
    sign_off = bits.dtype.type(_SIGN_OFF[work])
    lo_key, hi_key = bits.dtype.type(key_of(lo, work)), bits.dtype.type(key_of(hi, work))
    positions = np.empty(min(chunk, size), dtype=np.int64)
    keys = np.empty(min(chunk, size), dtype=bits.dtype)
    result = BandScan(0, 0, [], [], True, True)
    top = 0
    for start in range(0, size, chunk):
        end = min(start + chunk, size)
        flags = keep[start:end] if keep is not None else scratch[: end - start]
        kept, found, chunk_top = _scan(bits[start:end], sign_off, lo_key, hi_key, flags, positions, keys, start,
                                       _DEBRUIJN_INDEX)
        result.kept += int(kept)
        result.found += int(found)
        top = max(top, int(chunk_top))
        if not found:
            continue
        if room(int(found)):
            result.values.append(keys[:found].view(magnitude_dtype).copy())
            result.positions.append(positions[:found].copy())
        else:
            result.complete = False
    result.finite = top < key_of(float("inf"), work)
    return result
