"""Files a run writes besides checkpoints: per-layer CSVs, JSON lines, GPMT reference files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..interop import gpmt_files
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


def write_gpmt_reference_files(
    directory: Path, masks: MaskSet, gp_counts: list[int], accuracy_before: float | None, accuracy_after: float
) -> None:
    """The GPMT reference code's outputs for one GPMT prune, for side-by-side comparisons.

    ``prune_log.csv`` holds the plain GP counts of its stage 1 (the GP-pruned model is not
    evaluated, so its Post Accuracy is left empty); ``prune_refined_log.csv`` the final counts and
    the accuracy right after pruning; accuracies in percent.
    """
    directory.mkdir(parents=True, exist_ok=True)
    numels = [t.numel for t in masks.targets]
    counts = [n - k for n, k in zip(numels, masks.kept_counts())]
    gpmt_files.write_prune_log(directory / "prune_log.csv", numels, gp_counts, None, accuracy_before)
    gpmt_files.write_layer_sparsities(directory / "layer_sparsities.csv", [c / n for c, n in zip(counts, numels)])
    gpmt_files.write_prune_log(directory / "prune_refined_log.csv", numels, counts, accuracy_after, accuracy_before)
    gpmt_files.write_weight_mask_npy(directory / "weight_mask.npy", masks.masks)
    gpmt_files.save_mask_list(directory / "mask_list.pt", masks.masks)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` atomically with one JSON line per record (a crash keeps the old log whole)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))
