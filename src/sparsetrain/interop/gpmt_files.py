"""Read and write the file formats of the reference GPMT code.

The reference implementation of Global Magnitude Pruning (GP) and GP with a
Minimum Threshold (GPMT) (``GP/prune_GP.py`` and ``GP + MT/prune_GPMT.py`` in
GPMT-Authors/Global-Pruning-With-Minimum-Threshold) writes these files:

``prune_log.csv`` and ``prune_refined_log.csv``
    Written by pandas ``DataFrame.to_csv`` with the default settings. The first
    column is the unnamed 0-based row index. Then come the columns
    ``Layer Index`` (1-based), ``Layer Weights`` (numel), ``Pre Accuracy``,
    ``Weights Pruned``, ``% Pruning`` (0-100) and ``Post Accuracy``. There is
    one row per prunable layer (every ``nn.Conv2d``/``nn.Linear`` weight, in
    ``model.modules()`` order), with ``NA`` under ``Post Accuracy``. A final
    row follows in which only ``Post Accuracy`` is filled: the top-1 accuracy
    of the pruned model before fine-tuning. Example::

        ,Layer Index,Layer Weights,Pre Accuracy,Weights Pruned,% Pruning,Post Accuracy
        0,1,9408,77.04,1,0.010629251700680272,NA
        1,2,4096,77.04,2,0.048828125,NA
        2,,,,,,12.5

    Numbers are written the way Python's ``str`` writes them: integers as
    digits, floats at full (shortest round-trip) precision. Lines end in
    ``\\n``. The reference's stage 2 parses this file with
    ``numpy.genfromtxt(..., delimiter=',', skip_header=1)``. It reads the
    columns by position (column 2 = weights, column 5 = % pruning) and drops
    the last row, so the layout must stay exactly like this.

``layer_sparsities.csv``
    One per-layer sparsity fraction per line, in ``modules()`` order. The
    reference writes it with ``numpy.savetxt`` (``%.18e``). We write
    ``repr(float)``, which is also exact.

``weight_mask.npy``
    ``numpy.save`` of a 1-D object array holding one 0/1 float32 mask tensor
    per prunable layer, in ``modules()`` order. The reference's tensors were
    ``torch.cuda.FloatTensor``. A plain ``np.load(..., allow_pickle=True)``
    of such a file therefore fails on a machine without CUDA.
    :func:`load_mask_list` reads it on the CPU.

Our own mask-list format (:func:`save_mask_list`) is a ``torch.save`` file
holding a list of 0/1 float32 CPU tensors, in ``modules()`` order.

This module works on plain Python, numpy and torch values only. From
``sparsetrain`` it imports only ``errors`` and ``safe_pickle``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import operator
import os
import pickle
import pickletools
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence, Union

import numpy as np
import numpy.lib.format as npy_format
import torch
from ..errors import UserError
from ..safe_pickle import UnsafePickleError, restricted_load, safe_torch_load

__all__ = [
    "PRUNE_LOG_COLUMNS",
    "PruneLog",
    "write_prune_log",
    "read_prune_log",
    "write_layer_sparsities",
    "read_layer_sparsities",
    "save_mask_list",
    "load_mask_list",
    "write_weight_mask_npy",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Column names of ``prune_log.csv`` / ``prune_refined_log.csv`` after the
#: unnamed leading index column, in file order.
PRUNE_LOG_COLUMNS: tuple[str, ...] = (
    "Layer Index",
    "Layer Weights",
    "Pre Accuracy",
    "Weights Pruned",
    "% Pruning",
    "Post Accuracy",
)
_HEADER: tuple[str, ...] = ("",) + PRUNE_LOG_COLUMNS
_NA_TEXTS = frozenset({"", "na", "nan", "n/a", "none"})


# --------------------------------------------------------------------------
# prune_log.csv / prune_refined_log.csv


@dataclass(frozen=True)
class PruneLog:
    """Contents of a ``prune_log.csv`` / ``prune_refined_log.csv``.

    Attributes:
        layer_numels: ``Layer Weights`` column: weights per layer, in
            ``modules()`` order.
        pruned_counts: ``Weights Pruned`` column.
        percent_pruned: ``% Pruning`` column as written (0-100).
        post_accuracy: the final row's ``Post Accuracy``: top-1 of the pruned
            model before fine-tuning. ``None`` if the field is empty.
        pre_accuracy: ``Pre Accuracy`` of the first layer row. ``None`` if it
            is empty. In reference-written files this is a hard-coded
            constant, not a measurement.
    """

    layer_numels: tuple[int, ...]
    pruned_counts: tuple[int, ...]
    percent_pruned: tuple[float, ...]
    post_accuracy: float | None
    pre_accuracy: float | None = None

    @property
    def sparsities(self) -> tuple[float, ...]:
        """Per-layer sparsity fractions, ``% Pruning / 100``.

        This is how the reference's stage 2 derives them. The exact ratio
        ``pruned_counts[i] / layer_numels[i]`` can differ from it in the
        last bit.
        """
        return tuple(p / 100 for p in self.percent_pruned)

    @property
    def num_layers(self) -> int:
        return len(self.layer_numels)


def write_prune_log(
    path: PathLike,
    layer_numels: Sequence[int],
    pruned_counts: Sequence[int],
    post_accuracy: float | None,
    pre_accuracy: float | None = None,
) -> None:
    """Write a ``prune_log.csv`` / ``prune_refined_log.csv`` in the reference layout.

    The file has a header, one row per layer (in ``modules()`` order) and a
    final row. The header is the unnamed index column followed by
    :data:`PRUNE_LOG_COLUMNS`. Each layer row holds the 0-based index, the
    1-based ``Layer Index``, the numel, ``Pre Accuracy``, the pruned count,
    ``100 * pruned / numel`` and ``NA``. The final row holds only its index
    and ``Post Accuracy``. Floats are written with ``repr`` (full precision),
    as pandas writes them. The reference's stage-2 parser, which reads by
    column position and drops the last row, accepts the result.

    The reference fills ``Pre Accuracy`` with a hard-coded constant (e.g.
    77.04 for its ResNet-50), not a measurement. We write ``pre_accuracy``
    only when the caller measured it. Otherwise the field is left empty
    (the reference's parsers never read it). If ``post_accuracy`` is
    ``None``, that field of the final row is also left empty.

    The file is replaced atomically.

    Raises:
        ValueError: lengths differ, there are no layers, a numel is not
            positive, a count is outside ``[0, numel]``, or an accuracy is not
            a finite number.
    """
    numels = [_as_int(n, f"layer_numels[{i}]") for i, n in enumerate(layer_numels)]
    counts = [_as_int(c, f"pruned_counts[{i}]") for i, c in enumerate(pruned_counts)]
    if len(numels) != len(counts):
        raise UserError(
            f"layer_numels has {len(numels)} entries but pruned_counts has {len(counts)}"
        )
    if not numels:
        raise UserError("a prune log needs at least one layer")
    for i, (n, c) in enumerate(zip(numels, counts)):
        if n <= 0:
            raise UserError(f"layer_numels[{i}] = {n}; it must be positive")
        if not 0 <= c <= n:
            raise UserError(f"pruned_counts[{i}] = {c} is outside [0, {n}]")
    pre = "" if pre_accuracy is None else repr(_as_finite_float(pre_accuracy, "pre_accuracy"))
    post = "" if post_accuracy is None else repr(_as_finite_float(post_accuracy, "post_accuracy"))

    rows: list[list[str]] = [list(_HEADER)]
    for i, (n, c) in enumerate(zip(numels, counts)):
        # Same expression as the reference (int * int / int), so same float.
        percent = 100 * c / n
        rows.append([str(i), str(i + 1), str(n), pre, str(c), repr(percent), "NA"])
    rows.append([str(len(numels)), "", "", "", "", "", post])

    def emit(f: IO[str]) -> None:
        csv.writer(f, lineterminator="\n").writerows(rows)

    _atomic_write(path, emit, binary=False)


def read_prune_log(path: PathLike) -> PruneLog:
    """Read a ``prune_log.csv`` / ``prune_refined_log.csv``.

    Accepts files written by :func:`write_prune_log` and by the reference
    code (pandas ``to_csv``), with ``\\n`` or ``\\r\\n`` line ends. Integer
    columns may also be written as integral floats (``9408.0``). ``Post
    Accuracy`` on layer rows may be ``NA`` or empty. An empty or ``NA``
    accuracy reads as ``None``.

    Raises:
        ValueError: a one-line message naming the file and line, if the
            file is not in this layout.
    """
    name = os.fspath(path)
    rows: list[tuple[int, list[str]]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            for row in reader:
                if row:  # skip blank lines
                    rows.append((reader.line_num, row))
        except csv.Error as e:
            raise UserError(f"{name}: line {reader.line_num}: {_one_line(e)}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{name}: not UTF-8 text ({_one_line(e)})") from None

    if not rows:
        raise UserError(f"{name}: line 1: file is empty; expected a prune-log header")
    header_line, header = rows[0]
    if tuple(h.strip() for h in header) != _HEADER:
        raise UserError(
            f"{name}: line {header_line}: expected header {','.join(_HEADER)!r}, "
            f"got {','.join(header)!r}"
        )
    body = rows[1:]
    if not body:
        raise UserError(f"{name}: line {header_line}: no layer rows after the header")
    for lineno, row in body:
        if len(row) != len(_HEADER):
            raise UserError(
                f"{name}: line {lineno}: expected {len(_HEADER)} fields, got {len(row)}"
            )

    last_line, last = body[-1]
    if not _is_summary_row(last):
        raise UserError(
            f"{name}: line {last_line}: expected the final row with only "
            "'Post Accuracy' filled (the file may be truncated)"
        )
    layer_rows = body[:-1]
    if not layer_rows:
        raise UserError(f"{name}: line {last_line}: no layer rows before the final row")

    numels: list[int] = []
    counts: list[int] = []
    percents: list[float] = []
    pre_accuracy: float | None = None
    for pos, (lineno, row) in enumerate(layer_rows):
        where = f"{name}: line {lineno}"
        if _is_summary_row(row):
            raise UserError(f"{where}: summary row found before the last row")
        index = _parse_int(row[0], "index", where)
        layer_index = _parse_int(row[1], "'Layer Index'", where)
        if index != pos or layer_index != pos + 1:
            raise UserError(
                f"{where}: expected index {pos} and 'Layer Index' {pos + 1}, "
                f"got {index} and {layer_index}"
            )
        n = _parse_int(row[2], "'Layer Weights'", where)
        c = _parse_int(row[4], "'Weights Pruned'", where)
        if n <= 0:
            raise UserError(f"{where}: 'Layer Weights' is {n}; it must be positive")
        if not 0 <= c <= n:
            raise UserError(f"{where}: 'Weights Pruned' {c} is outside [0, {n}]")
        percent = _parse_float(row[5], "'% Pruning'", where, allow_na=False)
        assert percent is not None
        if not math.isclose(percent, 100 * c / n, rel_tol=1e-9, abs_tol=1e-9):
            raise UserError(
                f"{where}: '% Pruning' {percent!r} does not match "
                f"100 * {c} / {n} = {100 * c / n!r}"
            )
        pre = _parse_float(row[3], "'Pre Accuracy'", where, allow_na=True)
        if pos == 0:
            pre_accuracy = pre
        if row[6].strip().lower() not in _NA_TEXTS:
            raise UserError(
                f"{where}: 'Post Accuracy' of a layer row should be NA, got {row[6]!r}"
            )
        numels.append(n)
        counts.append(c)
        percents.append(percent)

    where = f"{name}: line {last_line}"
    index = _parse_int(last[0], "index", where)
    if index != len(layer_rows):
        raise UserError(f"{where}: expected index {len(layer_rows)} on the final row, got {index}")
    post_accuracy = _parse_float(last[6], "'Post Accuracy'", where, allow_na=True)
    return PruneLog(
        layer_numels=tuple(numels),
        pruned_counts=tuple(counts),
        percent_pruned=tuple(percents),
        post_accuracy=post_accuracy,
        pre_accuracy=pre_accuracy,
    )


def _is_summary_row(row: Sequence[str]) -> bool:
    return all(not field.strip() for field in row[1:6])


# --------------------------------------------------------------------------
# layer_sparsities.csv


def write_layer_sparsities(path: PathLike, sparsities: Sequence[float]) -> None:
    """Write ``layer_sparsities.csv``: one fraction per line, in ``modules()`` order.

    Values are written with ``repr(float(v))``, so
    :func:`read_layer_sparsities` gets back exactly the same floats. The
    reference's ``numpy.genfromtxt`` reads the file. The file is replaced
    atomically.

    Raises:
        ValueError: a value is not a finite number in ``[0, 1]``.
    """
    values = [_as_fraction(v, f"sparsities[{i}]") for i, v in enumerate(sparsities)]
    text = "".join(repr(v) + "\n" for v in values)
    _atomic_write(path, lambda f: f.write(text), binary=False)


def read_layer_sparsities(path: PathLike) -> list[float]:
    """Read ``layer_sparsities.csv`` (ours or the reference's ``numpy.savetxt`` output).

    Blank lines are skipped.

    Raises:
        ValueError: a one-line message naming the file and line, if a line
            is not one number in ``[0, 1]``.
    """
    name = os.fspath(path)
    values: list[float] = []
    with open(path, encoding="utf-8-sig") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise UserError(f"{name}: not UTF-8 text ({_one_line(e)})") from None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{name}: line {lineno}"
        if "," in text:
            raise UserError(f"{where}: expected one value per line, got {text!r}")
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{where}: not a number: {text!r}") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{where}: sparsity {text!r} is not a fraction in [0, 1]")
        values.append(value)
    return values


# --------------------------------------------------------------------------
# Mask lists


def save_mask_list(path: PathLike, masks: Sequence[torch.Tensor]) -> None:
    """Save per-layer masks (``modules()`` order) as a ``torch.save`` file.

    The file holds a list of contiguous float32 CPU tensors of 0s and 1s,
    the same content as the reference's mask list. Input masks may be bool
    or numeric tensors (any device) or numpy arrays. Their values must be 0
    or 1. The file is written to a temporary file in the same directory and
    then moved into place with ``os.replace``. An error leaves any earlier
    file untouched and no partial file behind.

    Raises:
        ValueError: a mask has a value other than 0 and 1, or ``masks`` is a
            single tensor instead of a sequence.
    """
    tensors = _float_masks_for_saving(masks)
    _atomic_write(path, lambda f: torch.save(tensors, f), binary=True)


def write_weight_mask_npy(path: PathLike, masks: Sequence[torch.Tensor]) -> None:
    """Write masks in the reference ``weight_mask.npy`` format.

    The file is an ``.npy`` holding an explicit 1-D object array of float32
    0/1 CPU tensors, one per layer, in ``modules()`` order. The reference
    fine-tuning script loads it with ``np.load(..., allow_pickle=True)`` and
    calls ``.cuda()`` on each element. The file is written exactly at
    ``path`` (no ``.npy`` suffix is added) and replaced atomically.

    The array's pickle names numpy's reconstruct function by its NumPy 1.x
    path ``numpy.core.multiarray._reconstruct``. NumPy 2 still accepts that
    path for old pickles. Without it, the NumPy 1.x install that the
    reference code needs could not load a file written under NumPy 2.

    Raises:
        ValueError: as :func:`save_mask_list`.
    """
    tensors = _float_masks_for_saving(masks)
    array = np.empty(len(tensors), dtype=object)
    for i, t in enumerate(tensors):
        array[i] = t
    payload = _pickle_with_numpy1_names(array)
    header = npy_format.header_data_from_array_1_0(array)

    def emit(f: IO[bytes]) -> None:
        npy_format.write_array_header_1_0(f, header)
        f.write(payload)

    _atomic_write(path, emit, binary=True)


def load_mask_list(path: PathLike) -> list[torch.Tensor]:
    """Load per-layer masks as bool CPU tensors (``modules()`` order).

    The format is detected from the file's content, not its name:

    * a ``torch.save`` file holding a list of tensors, as written by
      :func:`save_mask_list`. It is read by
      :func:`~sparsetrain.safe_pickle.safe_torch_load` (``weights_only=True``).
    * an ``.npy`` holding a 1-D object array whose elements are torch
      tensors or numpy arrays. This covers the reference's
      ``weight_mask.npy`` and :func:`write_weight_mask_npy` output. Tensors
      pickled as CUDA tensors are loaded onto the CPU, so no GPU is needed.
    * an ``.npy`` holding a plain numeric array. Each slice along the first
      axis is one mask.

    For object ``.npy`` files the pickle is read by
    :class:`~sparsetrain.safe_pickle.RestrictedUnpickler` with tensors
    allowed: only the numpy and torch functions that rebuild arrays and
    tensors. torch's storage rebuild function ``torch.storage._load_from_bytes``
    is replaced by one that calls ``torch.load(..., map_location="cpu",
    weights_only=True)`` on the embedded legacy storage bytes. Any other
    global in the pickle is refused with a one-line ``UserError``.

    Raises:
        ValueError: the file is not in one of these formats, or an element is
            not 0/1 (the message names the element's index).
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(len(npy_format.MAGIC_PREFIX))
        f.seek(0)
        if magic == npy_format.MAGIC_PREFIX:
            items = _read_npy_items(f, name)
        else:
            items = _read_torch_items(f, name)
    return [_as_bool_mask(item, f"{name}: mask {i}") for i, item in enumerate(items)]


# --------------------------------------------------------------------------
# Mask helpers


def _float_masks_for_saving(masks: Sequence[Any]) -> list[torch.Tensor]:
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        raise UserError(
            "masks must be a sequence with one mask per layer, not a single "
            f"{type(masks).__name__}"
        )
    out = []
    for i, m in enumerate(masks):
        bool_mask = _as_bool_mask(m, f"masks[{i}]")
        # A fresh compact tensor: never a view into some larger storage.
        out.append(bool_mask.to(torch.float32).contiguous())
    return out


def _as_bool_mask(obj: Any, label: str) -> torch.Tensor:
    """Check that ``obj`` holds only 0/1 and return it as a new bool CPU tensor."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu()
        if t.dtype == torch.bool:
            return t.clone()
        if t.is_complex():
            raise UserError(f"{label} has complex dtype {t.dtype}; a mask holds 0s and 1s")
        bad = ~((t == 0) | (t == 1))
        if bool(bad.any()):
            example = t[bad].flatten()[0].item()
            raise UserError(f"{label} has values other than 0 and 1 (e.g. {example!r})")
        return t != 0
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise UserError(f"{label} has dtype {obj.dtype}; a mask holds 0s and 1s")
        bad = ~((obj == 0) | (obj == 1))
        if bad.any():
            example = obj[bad].flat[0].item()
            raise UserError(f"{label} has values other than 0 and 1 (e.g. {example!r})")
        return torch.from_numpy(np.ascontiguousarray(obj != 0))
    raise UserError(f"{label} is a {type(obj).__name__}; expected a tensor or a numpy array")


def _read_torch_items(f: IO[bytes], name: str) -> list[Any]:
    try:
        obj = safe_torch_load(f, f"mask file {name!r}")
    except UnsafePickleError:
        raise
    except Exception as e:  # torch raises many types for foreign or corrupt files
        raise UserError(
            f"{name}: not a torch mask-list file or a .npy file ({type(e).__name__}: {_one_line(e)})"
        ) from None
    if not isinstance(obj, (list, tuple)):
        raise UserError(f"{name}: expected a list of mask tensors, found a {type(obj).__name__}")
    return list(obj)


def _read_npy_items(f: IO[bytes], name: str) -> list[Any]:
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise UserError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except ValueError as e:
        raise UserError(f"{name}: bad .npy header: {_one_line(e)}") from None

    if not dtype.hasobject:
        f.seek(0)
        try:
            array = npy_format.read_array(f, allow_pickle=False)
        except ValueError as e:
            raise UserError(f"{name}: bad .npy data: {_one_line(e)}") from None
        if array.ndim == 0:
            raise UserError(f"{name}: expected an array of masks, found a 0-d array")
        return list(array)

    if dtype != np.dtype(object):
        raise UserError(f"{name}: unsupported .npy dtype {dtype}; expected an object array")
    try:
        obj = restricted_load(f, f"mask file {name!r}", tensors=True)
    except UnsafePickleError:
        raise
    except Exception as e:  # a corrupt pickle can raise nearly anything
        raise UserError(
            f"{name}: cannot unpickle the mask array ({type(e).__name__}: {_one_line(e)})"
        ) from None
    if isinstance(obj, np.ndarray):
        if obj.ndim != 1:
            raise UserError(
                f"{name}: expected a 1-D object array of masks, found shape {obj.shape}"
            )
        if obj.shape != tuple(shape):
            raise UserError(
                f"{name}: header says shape {tuple(shape)} but the data has shape {obj.shape}"
            )
        return list(obj)
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise UserError(f"{name}: expected an array of masks, found a {type(obj).__name__}")


_NUMPY2_RECONSTRUCT = b"cnumpy._core.multiarray\n_reconstruct\n"
_NUMPY1_RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\n"


def _pickle_with_numpy1_names(array: np.ndarray) -> bytes:
    """Pickle ``array`` like NumPy 1.x ``np.save`` (protocol 3), with NumPy 1.x names.

    NumPy 2 pickles arrays with ``numpy._core.multiarray._reconstruct``,
    which NumPy 1.x cannot import (numpy/numpy#28340). At protocol 3 that
    reference is one ``GLOBAL`` opcode with newline-terminated text and no
    length prefix. We swap it for the NumPy 1.x name, which NumPy 2 keeps
    importable for old pickles. Only opcode positions that ``pickletools``
    reports are touched, never payload bytes.
    """
    data = pickle.dumps(array, protocol=3)
    starts = [
        pos
        for op, arg, pos in pickletools.genops(data)
        if op.name == "GLOBAL" and arg == "numpy._core.multiarray _reconstruct"
    ]
    if not starts:  # NumPy 1.x already writes the old name
        return data
    parts = []
    last = 0
    for pos in starts:
        end = pos + len(_NUMPY2_RECONSTRUCT)
        if data[pos:end] != _NUMPY2_RECONSTRUCT:  # pragma: no cover - defensive
            raise AssertionError("unexpected GLOBAL opcode encoding")
        parts.append(data[last:pos])
        parts.append(_NUMPY1_RECONSTRUCT)
        last = end
    parts.append(data[last:])
    return b"".join(parts)


# --------------------------------------------------------------------------
# Small helpers


def _atomic_write(path: PathLike, emit: Callable[[Any], Any], *, binary: bool) -> None:
    """Write through ``emit(file)`` to a temp file next to ``path``, then ``os.replace``.

    On any error the temp file is removed and an existing ``path`` is left
    as it was.
    """
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL with mode 0o666 gives the usual umask-based permissions.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with f:
            emit(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable; best effort
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _as_int(value: Any, label: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{label} must be an integer, got {value!r}") from None


def _as_finite_float(value: Any, label: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise UserError(f"{label} must be finite, got {result!r}")
    return result


def _as_fraction(value: Any, label: str) -> float:
    result = _as_finite_float(value, label)
    if not 0.0 <= result <= 1.0:
        raise UserError(f"{label} = {result!r} is not a fraction in [0, 1]")
    return result


def _parse_int(text: str, what: str, where: str) -> int:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        value = float(s)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value.is_integer():
        return int(value)
    raise UserError(f"{where}: {what} is not an integer: {text!r}")


def _parse_float(text: str, what: str, where: str, *, allow_na: bool) -> float | None:
    s = text.strip()
    if s.lower() in _NA_TEXTS:
        if allow_na:
            return None
        raise UserError(f"{where}: {what} is missing")
    try:
        value = float(s)
    except ValueError:
        raise UserError(f"{where}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: {what} is not finite: {text!r}")
    return value


def write_gpmt_reference_files(
    directory: os.PathLike[str] | str, masks: Any, gp_counts: list[int], accuracy_before: float | None, accuracy_after: float
) -> None:
    """The GPMT reference code's outputs for one GPMT prune, for side-by-side comparisons.

    ``prune_log.csv`` holds the plain GP counts of its stage 1 (the GP-pruned model is not
    evaluated, so its Post Accuracy is left empty); ``prune_refined_log.csv`` the final counts and
    the accuracy right after pruning; accuracies in percent.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    numels = [t.numel for t in masks.targets]
    counts = [n - k for n, k in zip(numels, masks.kept_counts())]
    write_prune_log(directory / "prune_log.csv", numels, gp_counts, None, accuracy_before)
    write_layer_sparsities(directory / "layer_sparsities.csv", [c / n for c, n in zip(counts, numels)])
    write_prune_log(directory / "prune_refined_log.csv", numels, counts, accuracy_after, accuracy_before)
    write_weight_mask_npy(directory / "weight_mask.npy", masks.masks)
    save_mask_list(directory / "mask_list.pt", masks.masks)
