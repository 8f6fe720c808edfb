"""The tiny valid config that most tests start from: digits (64 inputs, 10 classes, 1,258 training
examples) and an MLP 64-16-10 (targets ``1.weight`` 16x64 and ``3.weight`` 10x16), one thread, no
progress bars, dense 1 epoch -> GP 0.5 -> fine-tune 1 epoch. Runs in about a second."""

from __future__ import annotations

import copy
from typing import Any

TINY_CONFIG: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "threads": 1,
    "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [16]}}},
    "data": {"batch_size": 256},
    "training": {"progress": False},
    "stages": [
        {"kind": "dense", "epochs": 1},
        {"kind": "prune", "method": "gp", "sparsity": 0.5},
        {"kind": "finetune", "epochs": 1},
    ],
}


def tiny_config(**top_level: Any) -> dict[str, Any]:
    """A fresh copy of :data:`TINY_CONFIG` with the given top-level keys replaced."""
    return {**copy.deepcopy(TINY_CONFIG), **copy.deepcopy(top_level)}
