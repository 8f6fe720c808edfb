"""Read and write ``fairseq-preprocess`` binary datasets (``<prefix>.idx`` + ``<prefix>.bin``).

A binarized split is a sequence of 1-D integer sequences (token ids, each ending in ``</s>``). Two
on-disk formats exist; :class:`IndexedDataset` detects which from the index file's magic bytes.
All integers are little-endian.

**mmap** (``--dataset-impl mmap``, fairseq's default since 2019). ``.idx``::

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    uint64    version = 1
    uint8     dtype code (table below)
    uint64    n, the number of sequences
    int32[n]  sizes: the length (in elements) of each sequence
    int64[n]  pointers: the BYTE offset of each sequence in .bin

``.bin`` holds the sequences back to back as the dtype, ids unchanged. fairseq's mmap index ends
there (fairseq has no document index). Megatron-LM's variant of the same format inserts a
``uint64`` document count after ``n`` and appends ``int64[doc_count]`` document boundaries; the
reader accepts it too (telling the two apart by the file size) and ignores the document index.

**legacy** (``TorchNet`` ``IndexedDataset``, ``--dataset-impl lazy|cached``; the default of older
fairseq and of the GaP / NVIDIA fork's ``preprocess.py``). ``.idx``::

    8 bytes        magic b"TNTIDX\\x00\\x00"
    uint64         version = 1
    uint64         dtype code (table below)
    uint64         element size in bytes
    uint64         n, the number of sequences
    uint64         s, the total number of dimensions (= n for 1-D sequences)
    int64[n + 1]   dim_offsets: sequence i's shape is sizes[dim_offsets[i]:dim_offsets[i+1]]
    int64[n + 1]   data_offsets: sequence i is .bin ELEMENTS data_offsets[i]..data_offsets[i+1]
    int64[s]       sizes (the shape of every sequence, concatenated)

``.bin`` holds the sequences back to back as the dtype (``int32`` from the preprocess scripts) with
every id stored PLUS ONE (a Lua-indexing convention: the writer adds 1 and fairseq reads with
``fix_lua_indexing=True``, subtracting it again). The reader subtracts 1, so ids match the dictionary.

dtype codes (both formats): 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float64
(double), 8 uint16, 9 uint32, 10 uint64. Token ids must be integers, so codes 6 and 7 are refused.

Written by hand because fairseq is not a dependency; the layout above was checked against fairseq's
``fairseq/data/indexed_dataset.py``. Files are opened with ``numpy.memmap`` (nothing is unpickled
and nothing but the two named files is read), so opening WMT-sized data is instant; the index is
validated on open (sizes and offsets inside the ``.bin``) and every problem is one
:class:`~sparsetrain.errors.UserError` line naming the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_write
from ...errors import UserError

MMAP_MAGIC = b"MMIDIDX\x00\x00"
LEGACY_MAGIC = b"TNTIDX\x00\x00"

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32),
    5: np.dtype(np.int64), 6: np.dtype(np.float64), 7: np.dtype(np.float64), 8: np.dtype(np.uint16),
    9: np.dtype(np.uint32), 10: np.dtype(np.uint64),
}
_INTEGER_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16,
                  9: np.uint32, 10: np.uint64}
_CODE_OF = {np.dtype(t): c for c, t in _INTEGER_CODES.items()}

_MMAP_HEADER = len(MMAP_MAGIC) + 8 + 1 + 8  # 26 bytes
_LEGACY_HEADER = len(LEGACY_MAGIC) + 8 * 5  # 48 bytes


def best_fitting_dtype(max_id: int) -> np.dtype:
    """The dtype fairseq picks for a vocabulary of ``max_id`` symbols: uint16 below 65500, else uint32/int64."""
    if max_id < 65500:
        return np.dtype(np.uint16)
    if max_id < 4294967295:
        return np.dtype(np.uint32)
    return np.dtype(np.int64)


def dataset_exists(prefix: str | os.PathLike[str]) -> bool:
    """Whether both ``<prefix>.idx`` and ``<prefix>.bin`` exist."""
    return Path(f"{prefix}.idx").is_file() and Path(f"{prefix}.bin").is_file()


def checked_index(i: int, n: int) -> int:
    """``i`` as an index into ``n`` sequences (negative counts from the end); IndexError when out of range."""
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"sequence index {i} out of range for {n} sequences")
    return i


class IndexedDataset(Sequence):
    """A binarized split ``<prefix>.idx``/``<prefix>.bin`` in either format, read through ``numpy.memmap``.

    ``ds[i]`` is sequence ``i`` as a 1-D ``torch.long`` tensor (a copy; negative ``i`` counts from the
    end). ``ds.sizes`` is a ``numpy.int64`` array of the ``len(ds)`` sequence lengths (in tokens,
    ``</s>`` included when the preprocessor appended it). ``ds.format`` is ``"mmap"`` or ``"legacy"``;
    ``ds.dtype`` the storage dtype. Picklable (a worker re-opens the files; no data is copied).
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = str(prefix)
        self._open()

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.prefix = state["prefix"]
        self._open()

    def _open(self) -> None:
        idx, bin_ = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for f in (idx, bin_):
            if not f.is_file():
                what = "is a directory" if f.is_dir() else "does not exist"
                raise UserError(f"binarized dataset file {str(f)!r} {what}; a split needs both "
                                f"{idx.name!r} and {bin_.name!r} (fairseq-preprocess output)")
        index = np.memmap(idx, dtype=np.uint8, mode="r") if idx.stat().st_size else np.zeros(0, np.uint8)
        magic = bytes(index[:9])
        if magic == MMAP_MAGIC:
            self.format = "mmap"
            self._read_mmap_index(idx, index)
        elif magic[:8] == LEGACY_MAGIC:
            self.format = "legacy"
            self._read_legacy_index(idx, index)
        else:
            raise UserError(f"index file {str(idx)!r} starts with {magic[:9]!r}, not a fairseq index "
                            f"(mmap {MMAP_MAGIC!r} or legacy {LEGACY_MAGIC!r})")
        bin_size = bin_.stat().st_size
        if bin_size % self.dtype.itemsize:
            raise UserError(f"data file {str(bin_)!r} has {bin_size} bytes, not a whole number of "
                            f"{self.dtype.name} elements; it is truncated or belongs to another index")
        n_elements = bin_size // self.dtype.itemsize
        if len(self._starts):
            ends = self._starts + self.sizes
            if int(self._starts.min()) < 0 or int(self.sizes.min()) < 0 or int(ends.max()) > n_elements:
                bad = int(np.argmax((self._starts < 0) | (self.sizes < 0) | (ends > n_elements)))
                raise UserError(f"data file {str(bin_)!r} holds {n_elements} {self.dtype.name} elements but "
                                f"index {str(idx)!r} places sequence {bad} at elements "
                                f"{int(self._starts[bad])}..{int(ends[bad])}; the file is truncated or "
                                "does not belong to this index")
        self._data = (np.memmap(bin_, dtype=self.dtype, mode="r") if n_elements
                      else np.zeros(0, dtype=self.dtype))

    def _dtype_from_code(self, code: int, idx: Path) -> np.dtype:
        if code not in _INTEGER_CODES:
            valid = ", ".join(f"{c} ({np.dtype(t).name})" for c, t in _INTEGER_CODES.items())
            raise UserError(f"index file {str(idx)!r} has dtype code {code}; token ids need an integer "
                            f"code: {valid}")
        return np.dtype(_INTEGER_CODES[code])

    def _read_mmap_index(self, idx: Path, index: np.ndarray) -> None:
        size = len(index)
        if size < _MMAP_HEADER:
            raise UserError(f"index file {str(idx)!r} is truncated: {size} bytes, an mmap index header "
                            f"has {_MMAP_HEADER}")
        version, code, n = struct.unpack("<QBQ", bytes(index[9:_MMAP_HEADER]))
        if version != 1:
            raise UserError(f"index file {str(idx)!r} has mmap index version {version}; only version 1 exists")
        self.dtype = self._dtype_from_code(code, idx)
        offset = _MMAP_HEADER
        expected = offset + 12 * n
        if size != expected and size >= expected + 8:
            # Megatron-LM's variant: a document count after n and int64 doc_idx after the pointers
            (docs,) = struct.unpack("<Q", bytes(index[offset:offset + 8]))
            if size == expected + 8 + 8 * docs:
                offset += 8
                expected = size
        if size != expected:
            raise UserError(f"index file {str(idx)!r} has {size} bytes but its header announces {n} "
                            f"sequences ({expected} bytes); the file is truncated or damaged")
        self.sizes = np.frombuffer(index, dtype="<i4", count=n, offset=offset).astype(np.int64)
        pointers = np.frombuffer(index, dtype="<i8", count=n, offset=offset + 4 * n)
        itemsize = self.dtype.itemsize
        if n and np.any(pointers % itemsize):
            bad = int(np.argmax(pointers % itemsize != 0))
            raise UserError(f"index file {str(idx)!r}: sequence {bad} starts at byte {int(pointers[bad])}, "
                            f"not a multiple of the {itemsize}-byte {self.dtype.name} elements")
        self._starts = pointers // itemsize
        self._shift = 0

    def _read_legacy_index(self, idx: Path, index: np.ndarray) -> None:
        size = len(index)
        if size < _LEGACY_HEADER:
            raise UserError(f"index file {str(idx)!r} is truncated: {size} bytes, a legacy index header "
                            f"has {_LEGACY_HEADER}")
        version, code, element_size, n, s = struct.unpack("<QQQQQ", bytes(index[8:_LEGACY_HEADER]))
        if version != 1:
            raise UserError(f"index file {str(idx)!r} has legacy index version {version}; only version 1 exists")
        self.dtype = self._dtype_from_code(code, idx)
        if element_size != self.dtype.itemsize:
            raise UserError(f"index file {str(idx)!r} gives element size {element_size} for dtype "
                            f"{self.dtype.name}, which has {self.dtype.itemsize}")
        expected = _LEGACY_HEADER + 8 * (2 * (n + 1) + s)
        if size != expected:
            raise UserError(f"index file {str(idx)!r} has {size} bytes but its header announces {n} "
                            f"sequences and {s} dimensions ({expected} bytes); the file is truncated or damaged")
        dim_offsets = np.frombuffer(index, dtype="<i8", count=n + 1, offset=_LEGACY_HEADER)
        data_offsets = np.frombuffer(index, dtype="<i8", count=n + 1, offset=_LEGACY_HEADER + 8 * (n + 1))
        shapes = np.frombuffer(index, dtype="<i8", count=s, offset=_LEGACY_HEADER + 16 * (n + 1))
        if s != n or not np.array_equal(dim_offsets, np.arange(n + 1)):
            raise UserError(f"index file {str(idx)!r} holds multi-dimensional items; token datasets hold "
                            "1-D sequences (one dimension per item)")
        lengths = np.diff(data_offsets)
        if not np.array_equal(lengths, shapes):
            bad = int(np.argmax(lengths != shapes))
            raise UserError(f"index file {str(idx)!r}: sequence {bad} has size {int(shapes[bad])} but "
                            f"spans {int(lengths[bad])} elements; the index is damaged")
        self.sizes = shapes.astype(np.int64)
        self._starts = data_offsets[:-1].astype(np.int64)
        self._shift = 1  # ids are stored plus one (Lua indexing)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        i = checked_index(i, len(self.sizes))
        start = int(self._starts[i])
        a = np.array(self._data[start:start + int(self.sizes[i])], dtype=np.int64)
        if self._shift:
            a -= self._shift
        return torch.from_numpy(a)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, format={self.format!r}, n={len(self)}, dtype={self.dtype.name})"


def write_indexed(prefix: str | os.PathLike[str], sequences: Iterable[torch.Tensor | Sequence[int] | np.ndarray],
                  format: str = "mmap", dtype: np.dtype | type | str | None = None) -> Path:
    """Write ``sequences`` (1-D integer sequences) as ``<prefix>.bin`` and ``<prefix>.idx``; returns ``<prefix>.idx``.

    ``format="mmap"`` writes fairseq's mmap layout (no document index), by default as the dtype
    fairseq would pick (:func:`best_fitting_dtype` of the largest id + 1); ``format="legacy"`` writes
    the ``TNTIDX`` layout with ids stored plus one, by default as ``int32`` (what the preprocess
    scripts write). Values must fit the dtype (checked; for legacy, id + 1 must fit). Each file is
    written atomically (``.bin`` first, so an ``.idx`` never points into a missing ``.bin``).
    Nothing is written outside ``prefix``'s directory.
    """
    if format not in ("mmap", "legacy"):
        raise UserError(f"format={format!r} is not a binarized dataset format; use 'mmap' or 'legacy'")
    arrays = []
    for i, seq in enumerate(sequences):
        a = seq.detach().cpu().numpy() if torch.is_tensor(seq) else np.asarray(seq)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iub"):
            raise UserError(f"sequence {i} has shape {a.shape} and dtype {a.dtype}; write_indexed takes "
                            "1-D integer sequences")
        arrays.append(a.astype(np.int64))
    flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    shift = 1 if format == "legacy" else 0
    if dtype is None:
        dtype = np.int32 if format == "legacy" else best_fitting_dtype(int(flat.max()) + 1 if flat.size else 0)
    dtype = np.dtype(dtype)
    if dtype not in _CODE_OF:
        raise UserError(f"dtype={dtype.name} is not an integer dtype with a fairseq code; use one of "
                        f"{sorted(t.name for t in _CODE_OF)}")
    stored = flat + shift
    info = np.iinfo(dtype)
    if stored.size and (int(stored.min()) < info.min or int(stored.max()) > info.max):
        raise UserError(f"ids {int(flat.min())}..{int(flat.max())} do not fit dtype {dtype.name} "
                        f"({info.min - shift}..{info.max - shift}{' after the legacy +1' if shift else ''})")
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    code = _CODE_OF[dtype]
    le = dtype.newbyteorder("<")
    atomic_write(f"{prefix}.bin", stored.astype(le).tobytes())
    if format == "mmap":
        if sizes.size and int(sizes.max()) > np.iinfo(np.int32).max:
            raise UserError("a sequence is longer than 2**31-1 elements; the mmap index stores int32 sizes")
        pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) * dtype.itemsize
        header = MMAP_MAGIC + struct.pack("<QBQ", 1, code, len(sizes))
        body = sizes.astype("<i4").tobytes() + pointers[: len(sizes)].astype("<i8").tobytes()
    else:
        n = len(sizes)
        header = LEGACY_MAGIC + struct.pack("<QQQQQ", 1, code, dtype.itemsize, n, n)
        data_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype("<i8")
        body = np.arange(n + 1, dtype="<i8").tobytes() + data_offsets.tobytes() + sizes.astype("<i8").tobytes()
    return atomic_write(f"{prefix}.idx", header + body)
