"""Reading pickled files that users hand us without running code from them.

Torch checkpoints (``sparsetrain eval``, ``init.checkpoint``, ``run --resume``), CIFAR-10 batches
and the object arrays in GPMT's ``weight_mask.npy`` are Python pickles. A pickle may name any
importable callable and plain unpickling calls it: a checkpoint whose pickle says
``os.system("...")`` runs that command. Every such file is read here instead, and a pickle may
name only the globals on one allow-list of data-only constructors (:func:`allowed_globals`).
Any other name is refused before it is imported or called, with an :class:`UnsafePickleError`
whose one-line message names the file and the refused global.

Why this is hand-written: torch's ``weights_only`` unpickler enforces such a list for
``torch.save`` files, and :func:`safe_torch_load` uses it, adding only the foreign globals real
checkpoints hold (``argparse.Namespace``, numpy arrays and scalars, fairseq's ``Dictionary``).
Plain pickles (CIFAR batches, ``.npy`` object arrays) have no such reader in the standard library
or in numpy (``np.load(allow_pickle=True)`` is plain ``pickle``), so :class:`RestrictedUnpickler`
applies the same list to them.

Foreign classes are never imported: a name in :data:`STAND_INS` is rebuilt as an inert
:class:`DataOnly` object that holds the pickled state as attributes and has no methods of its own.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import functools
import io
import os
import pickle
import re
import warnings
from typing import IO, Any, Union

import numpy as np
import torch

from .errors import UserError

__all__ = [
    "CHECKPOINT_CONTENTS",
    "PICKLE_CONTENTS",
    "STAND_INS",
    "DataOnly",
    "FairseqDictionary",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "allowed_globals",
    "refusal_message",
    "restricted_load",
    "safe_torch_load",
]

Source = Union[str, "os.PathLike[str]", IO[bytes]]

#: What a torch file may hold, as the refusal message says it.
CHECKPOINT_CONTENTS = "tensors, numbers, strings, containers, argparse.Namespace and numpy arrays/scalars"
#: What a plain pickle may hold (``tensors=False``), as the refusal message says it.
PICKLE_CONTENTS = "numbers, strings, bytes, containers and numpy arrays/scalars"
_TENSOR_PICKLE_CONTENTS = "numbers, strings, containers, numpy arrays and torch tensors"


class UnsafePickleError(UserError):
    """A file whose pickle names a global sparsetrain refuses; the message is one line naming both."""


class RefusedGlobal(pickle.UnpicklingError):
    """Raised by :class:`RestrictedUnpickler`; ``qualname`` is the refused ``module.name``."""

    def __init__(self, qualname: str) -> None:
        super().__init__(f"refused global {qualname}")
        self.qualname = qualname


class DataOnly:
    """Inert stand-in for a class of another library: only the attributes its pickle held.

    It has no ``__setstate__``, ``__init__`` or other behaviour, so unpickling one sets
    attributes and nothing else.
    """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} stand-in with {sorted(vars(self))}>"


class FairseqDictionary(DataOnly):
    """Stand-in for ``fairseq.data.dictionary.Dictionary``: ``symbols``, ``count``, ``indices``,
    ``bos_word``/``pad_word``/``eos_word``/``unk_word`` and their ``*_index``, ``nspecial``."""


#: Qualified names of foreign classes and the inert class each is rebuilt as.
STAND_INS: dict[str, type[DataOnly]] = {"fairseq.data.dictionary.Dictionary": FairseqDictionary}


@functools.cache
def _numpy_globals() -> dict[str, Any]:
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(2).__reduce_ex__(5)[0]
    found: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for core in ("numpy.core", "numpy._core"):  # NumPy 1.x and 2.x names
        found[f"{core}.multiarray._reconstruct"] = reconstruct
        found[f"{core}.multiarray.scalar"] = scalar
        found[f"{core}.numeric._frombuffer"] = frombuffer  # pickle protocol 5 writes arrays with it
    # Each dtype instance has its own class (numpy.dtypes.Float64DType, ...). Torch's unpickler
    # restores the state of only allow-listed types, so these classes must be on the list too.
    for code in np.typecodes["All"]:
        cls = type(np.dtype(code))
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


@functools.cache
def allowed_globals(*, tensors: bool = False) -> dict[str, Any]:
    """Qualified ``module.name`` of every global a plain pickle may name, to the object it gets.

    Python containers and numbers, ``_codecs.encode`` (how protocol 2 writes ``bytes``) and
    numpy arrays, dtypes and scalars. Python 2's ``__builtin__`` is read as ``builtins``. With ``tensors`` also the functions that rebuild torch
    tensors and torch dtypes; a tensor's storage bytes are read by :func:`_load_storage_on_cpu`.
    """
    found: dict[str, Any] = {"_codecs.encode": codecs.encode, "collections.OrderedDict": collections.OrderedDict}
    found.update({f"builtins.{builtin.__name__}": builtin for builtin in (set, frozenset, bytearray, complex)})
    found.update(_numpy_globals())
    if tensors:
        found["torch.storage._load_from_bytes"] = _load_storage_on_cpu
        found["torch.Tensor"] = torch.Tensor
        found["torch.nn.parameter.Parameter"] = torch.nn.Parameter
        found.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
        for module, names in (
            ("torch._utils", ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                              "_rebuild_parameter_with_state")),
            ("torch._tensor", ("_rebuild_from_type", "_rebuild_from_type_v2")),
        ):
            owner = __import__(module, fromlist=["_"])
            found.update({f"{module}.{n}": getattr(owner, n) for n in names if hasattr(owner, n)})
    return found


def _load_storage_on_cpu(data: bytes) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes`` that reads with ``weights_only`` onto the CPU.

    A tensor pickled with plain ``pickle`` stores its storage as the bytes of a legacy
    ``torch.save``; torch's own function loads them with ``weights_only=False`` on the saved
    device ('cuda:0' in the GPMT reference's masks), which fails without CUDA.
    """
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :func:`allowed_globals` and raises :class:`RefusedGlobal`.

    Nothing the pickle names is imported: a name off the list is refused before any lookup.
    """

    def __init__(self, file: IO[bytes], *, tensors: bool = False, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed_globals(tensors=tensors)

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2's name; pickle maps it only in the find_class we replace
            module = "builtins"
        found = self._allowed.get(f"{module}.{name}")
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found


def refusal_message(subject: str, qualname: str, contents: str) -> str:
    """``<subject> needs the global '<qualname>', which sparsetrain refused to load (...)``, one line."""
    message = f"{subject} needs the global {qualname!r}, which sparsetrain refused to load (it loads only {contents})"
    if qualname.rpartition(".")[2][:1].isupper():  # a class: most likely a pickled model object
        message += "; if this is a pickled model, save model.state_dict() instead"
    return message


def restricted_load(file: IO[bytes], subject: str, *, tensors: bool = False, encoding: str = "latin1") -> Any:
    """Unpickle ``file`` through :class:`RestrictedUnpickler`.

    ``subject`` names the file in messages (``"CIFAR-10 file '/data/data_batch_1'"``). A refused
    global raises :class:`UnsafePickleError`; a corrupt pickle raises whatever ``pickle`` raises.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
            return RestrictedUnpickler(file, tensors=tensors, encoding=encoding).load()
    except RefusedGlobal as exc:
        contents = _TENSOR_PICKLE_CONTENTS if tensors else PICKLE_CONTENTS
        raise UnsafePickleError(refusal_message(subject, exc.qualname, contents)) from None


def _torch_safe_globals() -> list[tuple[Any, str]]:
    pairs = [(value, name) for name, value in _numpy_globals().items()]
    pairs.append((argparse.Namespace, "argparse.Namespace"))
    pairs.extend((cls, name) for name, cls in STAND_INS.items())
    return pairs


_WEIGHTS_ONLY_FAILED = "Weights only load failed"
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(source: Source, subject: str | None = None) -> Any:
    """``torch.load(source, map_location="cpu", weights_only=True)``, also allowing
    ``argparse.Namespace``, numpy arrays/dtypes/scalars and the stand-ins of :data:`STAND_INS`.

    ``subject`` names the file in messages; it defaults to ``checkpoint '<path>'``. A global off
    the list raises :class:`UnsafePickleError` naming it; a file that is corrupt or not a torch
    file raises whatever ``torch.load`` raises.
    """
    if subject is None:
        subject = f"checkpoint {os.fspath(source)!r}" if isinstance(source, (str, os.PathLike)) else "checkpoint"
    present = set(torch.serialization.get_safe_globals())
    extra = [pair for pair in _torch_safe_globals() if pair not in present]
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(extra):
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if it matters
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if not text.startswith(_WEIGHTS_ONLY_FAILED):
            raise
        match = _GLOBAL_IN_MESSAGE.search(text)
        if match is None and "Unsupported operand" in text and not _starts_like_a_pickle(source):
            raise  # random bytes, not a pickle: the caller reports a corrupt file
        if match is None:
            raise UnsafePickleError(
                f"{subject} holds data that sparsetrain refused to load ({_weights_only_reason(text)}; "
                f"it loads only {CHECKPOINT_CONTENTS})"
            ) from None
        qualname = match.group(1).rstrip(".")
        if "." not in qualname:  # torch drops the "builtins." of builtins it names
            qualname = f"builtins.{qualname}"
        raise UnsafePickleError(refusal_message(subject, qualname, CHECKPOINT_CONTENTS)) from None


def _starts_like_a_pickle(source: Any) -> bool:
    """Whether ``source`` (a path) begins like a torch zip archive or a pickle (protocol marker 0x80);
    other sources: True."""
    if not isinstance(source, (str, os.PathLike)):
        return True
    try:
        with open(source, "rb") as f:
            return f.read(2) in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    except OSError:
        return True


def _weights_only_reason(text: str) -> str:
    """The part of torch's multi-paragraph ``weights_only`` message that says what failed."""
    _, marker, rest = text.partition("WeightsUnpickler error:")
    reason = rest if marker else text.split("\n\n", 1)[-1]
    reason = reason.split("Check the documentation of torch.load", 1)[0]
    return " ".join(reason.split())[:160] or "unsupported pickle content"
