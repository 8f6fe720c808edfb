"""sparsetrain: make PyTorch models sparse and keep them accurate.

The one-shot API lives at the top level::

    masks = sparsetrain.prune(model, 0.9, method="gpmt", min_threshold=0.05)
    sparsifier = sparsetrain.Sparsifier(model, masks)
    ...  # loss.backward(); optimizer.step(); sparsifier.step(optimizer)
"""

from .sparsity import MaskSet, Sparsifier, SparsityError, prune, select_targets

__version__ = "0.1.0"
__all__ = ["MaskSet", "Sparsifier", "SparsityError", "__version__", "prune", "select_targets"]
