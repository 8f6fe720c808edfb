"""sparsetrain: make PyTorch models sparse and keep them accurate.

The one-shot API lives at the top level::

    masks = sparsetrain.prune(model, 0.9, method="gpmt", min_threshold=0.05)
    sparsifier = sparsetrain.Sparsifier(model, masks)
    ...  # loss.backward(); optimizer.step(); sparsifier.step(optimizer)
    sparsetrain.save_sparse(model, "model.safetensors", masks)   # smaller the sparser
    state = sparsetrain.load_sparse("model.safetensors")          # the same tensors, bit for bit

The top-level names are loaded on first use (PEP 562), so ``import sparsetrain`` and the command
line's ``--help``/``--version`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MaskSet", "Sparsifier", "SparsityError", "__version__", "load_sparse", "load_sparse_masks", "prune",
           "save_sparse", "select_targets"]

_LAZY = {"MaskSet", "Sparsifier", "SparsityError", "prune", "select_targets"}  # all from .sparsity
_LAZY_EXPORT = {"save_sparse", "load_sparse", "load_sparse_masks"}  # from .export

if TYPE_CHECKING:
    from .export import load_sparse, load_sparse_masks, save_sparse
    from .sparsity import MaskSet, Sparsifier, SparsityError, prune, select_targets


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _LAZY_EXPORT:
        value = getattr(importlib.import_module(".sparsity" if name in _LAZY else ".export", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY | _LAZY_EXPORT)
