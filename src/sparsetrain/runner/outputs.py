"""Files a run writes besides checkpoints: per-layer CSVs and JSON lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..sparsity import MaskSet


def write_layer_csv(path: Path, masks: MaskSet) -> None:
    """``layer,shape,numel,kept,sparsity,target`` (fractions) for every target, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["layer", "shape", "numel", "kept", "sparsity", "target"])
    for row in masks.table():
        target = "" if row.target is None else f"{row.target:.6f}"
        writer.writerow([row.name, "x".join(map(str, row.shape)), row.numel, row.kept, f"{row.sparsity:.6f}", target])
    atomic_write(path, text.getvalue())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with one JSON line per record (a crash keeps the old log whole)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
