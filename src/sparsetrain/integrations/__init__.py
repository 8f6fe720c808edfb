"""sparsetrain inside other training libraries: Hugging Face ``Trainer`` (:mod:`.huggingface`), Lightning
(:mod:`.lightning`), each an optional extra; :mod:`.core` holds what they share and imports neither."""

from .core import SparsityDriver, default_target_types

__all__ = ["SparsityDriver", "default_target_types"]
