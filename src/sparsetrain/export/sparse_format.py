"""The ``sparse`` export format: one safetensors file that is smaller the sparser the model is.

Layout of a file written by :func:`save_sparse` (format ``sparsetrain-sparse``, version ``1``):

* every *encoded* tensor ``NAME`` is stored as ``values/NAME`` (the kept values in the tensor's
  own dtype, 1-D, in row-major order of their positions) plus its positions, whichever is smaller:
  encoding ``bitmask``, ``mask/NAME``, the keep-mask flattened row-major and bit-packed into uint8
  in ``numpy.packbits`` order (the first element is the most significant bit of byte 0;
  ``ceil(numel / 8)`` bytes), or encoding ``indices``, ``indices/NAME``, the flat row-major
  positions of the kept values as strictly increasing int32 (4 bytes per kept value: smaller than
  the bitmask below 1/32 = 3.1 % density; a flat, COO-style variant of CSR's column indices
  without row pointers). A tie is a bitmask;
* every other tensor ``NAME`` is stored as it is, as ``dense/NAME``;
* the safetensors string metadata holds ``format`` (``sparsetrain-sparse``), ``format_version``
  (``1``), ``tensors`` (JSON: for each original key, in the original order, its ``shape``,
  ``dtype`` and ``encoding``, ``dense``, ``bitmask`` or ``indices``, and for the latter two the
  ``kept`` count),
  ``sparsity`` (pruned fraction of the encoded tensors' elements, as a decimal string) and any
  extra string entries given as ``metadata`` (the command line stores the producing config's YAML
  under ``config``).

Which tensors are encoded: with ``masks``, exactly the tensors masks are given for; without, every
floating-point tensor of dimension >= 2 whose encoding (kept values plus 1 bit per element) is
smaller than the dense tensor, i.e. ``kept * itemsize + min(ceil(numel / 8), 4 * kept) <
numel * itemsize`` (for fp32: more than about 3.1 % of the elements are zero). Tensors of 2^31
or more elements always use the bitmask.

Invariants: :func:`load_sparse` returns the same keys in the same order with the same dtypes and
shapes. A kept position decodes to exactly the bits that were saved (``-0.0``, NaN payloads and
infinities included). A pruned position decodes to ``+0.0``. So the round trip is bit-identical
when every pruned position holds ``+0.0`` (what masking in sparsetrain leaves); without ``masks``
the mask is "the bit pattern is not all zeros", so ``-0.0`` counts as kept and the round trip is
always bit-identical. With ``masks``, a non-zero value at a pruned position is dropped (it loads
as ``+0.0``).

Reading never unpickles: safetensors holds only raw tensor bytes and a JSON header. A file that
is truncated, not safetensors, or of another format version raises a one-line
:class:`~sparsetrain.errors.UserError` naming the file. A safetensors file without sparsetrain's
``format`` metadata (e.g. a plain state dict, what ``export --format safetensors`` writes) is read
as dense tensors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import UserError

FORMAT_NAME = "sparsetrain-sparse"
FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "tensors", "sparsity")
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ExportFileError(UserError):
    """An exported file that cannot be read: the message is one line and names the file."""


def _state_of(state_dict_or_model: Any) -> dict[str, torch.Tensor]:
    if isinstance(state_dict_or_model, torch.nn.Module):
        state = state_dict_or_model.state_dict()
    elif isinstance(state_dict_or_model, Mapping):
        state = dict(state_dict_or_model)
    else:
        raise UserError(f"save_sparse needs a state dict or an nn.Module, got {type(state_dict_or_model).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise UserError(f"save_sparse: entry {key!r} is not a tensor under a string key")
        if value.is_sparse or value.layout != torch.strided:
            raise UserError(f"save_sparse: {key!r} is a {value.layout} tensor; give dense (strided) tensors")
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage (tied weights).
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def _masks_of(masks: Any) -> dict[str, torch.Tensor]:
    if masks is None:
        return {}
    if hasattr(masks, "names") and hasattr(masks, "masks"):  # a MaskSet
        return {name: mask.detach().cpu() for name, mask in zip(masks.names, masks.masks)}
    if isinstance(masks, Mapping):
        return {str(k): torch.as_tensor(v).detach().cpu() for k, v in masks.items()}
    raise UserError(f"save_sparse: masks must be a MaskSet or a dict of name -> bool tensor, got {type(masks).__name__}")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor viewed as integers of its element size (exact bit patterns), flattened."""
    int_dtype = _INT_OF_SIZE.get(tensor.element_size())
    if int_dtype is None:
        raise UserError(f"cannot encode a tensor of dtype {tensor.dtype} (element size {tensor.element_size()})")
    if tensor.dtype == torch.bool:
        return tensor.reshape(-1).to(torch.uint8)
    return tensor.reshape(-1).view(int_dtype)


def _uses_indices(kept: int, numel: int) -> bool:
    """Whether int32 flat indices (4 bytes per kept value) are smaller than the bitmask."""
    return numel < 2**31 and 4 * kept < math.ceil(numel / 8)


def _encoded_bytes(kept: int, numel: int, itemsize: int) -> int:
    return kept * itemsize + (4 * kept if _uses_indices(kept, numel) else math.ceil(numel / 8))


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.reshape(-1).numpy().astype(bool)))


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool))


def encode(state: Mapping[str, torch.Tensor], masks: Any = None,
           metadata: Mapping[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors entries and string metadata of the ``sparse`` format (see the module docstring)."""
    tensors = _state_of(state)
    given = _masks_of(masks)
    unknown = [name for name in given if name not in tensors]
    if unknown:
        raise UserError(f"save_sparse: masks given for {unknown[:3]}, which the state dict does not hold")
    extra = dict(metadata or {})
    for key, value in extra.items():
        if key in _RESERVED or not isinstance(key, str) or not isinstance(value, str):
            raise UserError(f"save_sparse: metadata entry {key!r} must be a string -> string entry not named "
                            f"{', '.join(_RESERVED)}")
    entries: dict[str, torch.Tensor] = {}
    records: dict[str, dict[str, Any]] = {}
    pruned = total = 0
    for name, tensor in tensors.items():
        record: dict[str, Any] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        numel = tensor.numel()
        if name in given:
            mask = given[name]
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tensor.shape):
                raise UserError(f"save_sparse: mask for {name!r} must be bool of shape {tuple(tensor.shape)}, got "
                                f"{mask.dtype} {tuple(mask.shape)}")
            mask = mask.reshape(-1)
            encode_it = True
        else:
            encode_it = tensor.is_floating_point() and tensor.dim() >= 2
            mask = _bits(tensor) != 0 if encode_it else None
            if encode_it:
                kept = int(mask.sum())
                encode_it = _encoded_bytes(kept, numel, tensor.element_size()) < numel * tensor.element_size()
        if encode_it:
            assert mask is not None
            values = _bits(tensor)[mask].view(tensor.dtype) if tensor.dtype != torch.bool else tensor.reshape(-1)[mask]
            entries[f"values/{name}"] = values.contiguous()
            kept = int(values.numel())
            if _uses_indices(kept, numel):
                entries[f"indices/{name}"] = mask.nonzero().reshape(-1).to(torch.int32)
                record.update(encoding="indices", kept=kept)
            else:
                entries[f"mask/{name}"] = _pack(mask)
                record.update(encoding="bitmask", kept=kept)
            pruned += numel - kept
            total += numel
        else:
            entries[f"dense/{name}"] = tensor
            record["encoding"] = "dense"
        records[name] = record
    info = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tensors": json.dumps(records),
            "sparsity": repr(pruned / total) if total else "0.0", **extra}
    return entries, info


def _check_new(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise UserError(f"cannot write {str(path)!r}: it is a directory")
    if path.exists() and not overwrite:
        raise UserError(f"{str(path)!r} exists; pass overwrite=True (--overwrite) to replace it")


def save_sparse(state_dict_or_model: Any, path: str | os.PathLike[str], masks: Any = None,
                metadata: Mapping[str, str] | None = None, *, overwrite: bool = False) -> Path:
    """Write ``state_dict_or_model`` to ``path`` in the ``sparse`` format; returns the path.

    ``masks`` (a :class:`~sparsetrain.sparsity.MaskSet` or a dict of name -> bool tensor shaped like
    the tensor, True = kept) names the tensors to encode; without it, the float tensors of dim >= 2
    that the encoding makes smaller are encoded (see the module docstring). ``metadata`` adds string
    entries to the file's metadata. The file is written atomically; an existing ``path`` is refused
    unless ``overwrite``.
    """
    from safetensors.torch import save

    path = Path(path)
    _check_new(path, overwrite)
    entries, info = encode(state_dict_or_model, masks, metadata)
    atomic_write(path, save(entries, metadata=info))
    return path


def save_dense(state_dict_or_model: Any, path: str | os.PathLike[str],
               metadata: Mapping[str, str] | None = None, *, overwrite: bool = False) -> Path:
    """Write the plain dense state dict to ``path`` as safetensors (keys unchanged); returns the path."""
    from safetensors.torch import save

    path = Path(path)
    _check_new(path, overwrite)
    tensors = _state_of(state_dict_or_model)
    atomic_write(path, save(tensors, metadata=dict(metadata) if metadata else None))
    return path


def _fail(path: Path, what: str) -> ExportFileError:
    return ExportFileError(f"cannot load {str(path)!r}: {' '.join(what.split())[:200]}")


def _read_header(path: Path, data: bytes | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON header and the string metadata of a safetensors file (``data``: its bytes, if read)."""
    if path.is_dir():
        raise _fail(path, "it is a directory, not a safetensors file")
    if not path.is_file():
        raise _fail(path, "the file does not exist")
    if data is None:
        with open(path, "rb") as f:
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            data = head + f.read(min(size, 100_000_000))
    if len(data) < 8:
        raise _fail(path, f"{len(data)} bytes is too short for a safetensors file (truncated or empty)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise _fail(path, "not a safetensors file, or truncated (the header is longer than the file)")
    try:
        header = json.loads(data[8:8 + header_len])
    except ValueError:
        raise _fail(path, "not a safetensors file (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file (the header is not a JSON object)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise _fail(path, "not a safetensors file (its __metadata__ is not a JSON object)")
    return header, metadata


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All entries and the metadata of a safetensors file; anything wrong is a one-line ExportFileError."""
    from safetensors.torch import load

    data = path.read_bytes() if path.is_file() else None
    _, metadata = _read_header(path, data)
    try:
        entries = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError (and others) for bad files
        raise _fail(path, f"corrupt or truncated safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return entries, metadata


def _dtype(path: Path, name: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise _fail(path, f"unknown dtype {name!r} in the metadata")
    return dtype


def _decode(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    entries, metadata = _read_file(path)
    found = metadata.get("format")
    if found != FORMAT_NAME:  # a plain safetensors state dict (ours or anyone's): dense as it is
        if found is not None and str(found).startswith("sparsetrain"):
            raise _fail(path, f"format {found!r} is not one this sparsetrain reads ({FORMAT_NAME!r})")
        return entries, {}, metadata
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(path, f"{FORMAT_NAME} format version {version!r}; this sparsetrain reads version {FORMAT_VERSION!r}")
    try:
        records = json.loads(metadata["tensors"])
    except (KeyError, ValueError):
        records = None
    if not isinstance(records, dict):
        raise _fail(path, "the 'tensors' metadata is missing or not a JSON object")
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    used = set()
    for name, record in records.items():
        try:
            shape, dtype_name, encoding = tuple(int(n) for n in record["shape"]), record["dtype"], record["encoding"]
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"the metadata of {name!r} is not {{shape, dtype, encoding}}") from None
        dtype = _dtype(path, dtype_name)
        numel = math.prod(shape)
        if encoding == "dense":
            tensor = entries.get(f"dense/{name}")
            if tensor is None or tensor.dtype != dtype or tuple(tensor.shape) != shape:
                raise _fail(path, f"the dense tensor {name!r} is missing or not {dtype_name} {list(shape)}")
            used.add(f"dense/{name}")
            state[name] = tensor
        elif encoding in ("bitmask", "indices"):
            where = "mask" if encoding == "bitmask" else "indices"
            values, packed = entries.get(f"values/{name}"), entries.get(f"{where}/{name}")
            if values is None or packed is None:
                raise _fail(path, f"the values or the {where} of {name!r} are missing")
            if encoding == "bitmask":
                if packed.dtype != torch.uint8 or tuple(packed.shape) != (math.ceil(numel / 8),):
                    raise _fail(path, f"the mask of {name!r} is not {math.ceil(numel / 8)} uint8 bytes")
                mask = _unpack(packed, numel)
            else:
                if packed.dtype != torch.int32 or packed.dim() != 1 or (packed.numel() and (
                        int(packed[0]) < 0 or int(packed[-1]) >= numel or not bool((packed[1:] > packed[:-1]).all()))):
                    raise _fail(path, f"the indices of {name!r} are not strictly increasing int32 in [0, {numel})")
                mask = torch.zeros(numel, dtype=torch.bool)
                mask[packed.long()] = True
            kept = int(mask.sum())
            if values.dtype != dtype or tuple(values.shape) != (kept,):
                raise _fail(path, f"{name!r} holds {tuple(values.shape)} {values.dtype} values; its mask keeps {kept} "
                                  f"{dtype_name}")
            used.update((f"values/{name}", f"{where}/{name}"))
            if dtype == torch.bool:
                flat = torch.zeros(numel, dtype=torch.bool)
                flat[mask] = values
            else:
                flat = torch.zeros(numel, dtype=dtype)
                flat.view(_INT_OF_SIZE[flat.element_size()])[mask] = values.view(_INT_OF_SIZE[flat.element_size()])
            state[name] = flat.reshape(shape)
            masks[name] = mask.reshape(shape)
        else:
            raise _fail(path, f"unknown encoding {encoding!r} of {name!r}")
    stray = [key for key in entries if key not in used]
    if stray:
        raise _fail(path, f"entries {stray[:3]} are not described by the metadata")
    return state, masks, metadata


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict saved by :func:`save_sparse` (or a plain safetensors state dict), on the CPU.

    Same keys (in the saved order), dtypes and shapes; kept values bit for bit, pruned positions
    ``+0.0``. Never unpickles. A malformed, truncated or foreign file raises a one-line
    :class:`ExportFileError` (a :class:`~sparsetrain.errors.UserError`) naming the file.
    """
    return _decode(Path(path))[0]


def load_sparse_masks(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The keep-masks (bool, True = kept, shaped like the tensor) of the encoded tensors of ``path``.

    Empty for a dense safetensors file.
    """
    return _decode(Path(path))[1]


def load_sparse_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of ``path`` (format, version, tensors JSON, sparsity, config...), from its
    header alone (the tensors are neither read nor checked)."""
    return _read_header(Path(path))[1]
