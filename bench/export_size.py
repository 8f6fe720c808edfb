"""Benchmark (issue 15): how large a ``sparse`` export is against the dense safetensors file.

ResNet-50 (torchvision layout, 1000 classes, input 3x224x224, ``sparsetrain.models.build_model``)
is randomly initialised with seed 0 and pruned by global magnitude (``sparsetrain.prune(model, s,
method="gp")``: the default targets, every conv and linear weight) at s = 0.80, 0.90, 0.95 and
0.98, each time from the same dense weights, and for comparison layer-wise uniform magnitude
pruning (``method="uniform"``) at the same sparsities: global magnitude on random weights prunes
some layers whole (``fc.weight`` first: its init scale is the smallest), which the format stores
in almost nothing, so the uniform rows are the fairer picture of a trained model. For each sparsity the script writes

* the dense state dict with ``sparsetrain.export.save_dense`` (plain safetensors), and
* the ``sparse`` file with ``sparsetrain.save_sparse(model, path, masks)``,

into a temporary directory, checks that ``load_sparse`` gives the pruned tensors back bit for bit,
and prints a Markdown table of file sizes in bytes (MB = 10^6 bytes) and their ratio. The ideal
ratio for fp32 targets is ``(1 - s) + 1/32`` of the target bytes (kept values + 1 bit per weight);
batch-norm tensors, biases and the running statistics are stored dense in both files.

    .venv/bin/python bench/export_size.py
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import sparsetrain
from sparsetrain.export import save_dense
from sparsetrain.models import build_model
from sparsetrain.sparsity.masks import EmptyLayerWarning

SPARSITIES = (0.8, 0.9, 0.95, 0.98)
METHODS = ("gp", "uniform")
"""gp: global magnitude (the measurement asked for); uniform: every target at the same sparsity, so no
layer is cut off whole and every target pays its mask (the per-layer worst case for the format)."""


def main() -> int:
    # Global magnitude on random weights cuts whole layers off (fc.weight, whose Kaiming-uniform
    # scale is the smallest, first); that says nothing about file size, so the warning is silenced.
    warnings.filterwarnings("ignore", category=EmptyLayerWarning)
    torch.manual_seed(0)
    dense_model = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = save_dense(dense_model, Path(tmp) / "dense.safetensors")
        dense_size = dense_path.stat().st_size
        for method, sparsity in [(m, s) for m in METHODS for s in SPARSITIES]:
            model = copy.deepcopy(dense_model)
            masks = sparsetrain.prune(model, sparsity, method=method)
            start = time.perf_counter()
            path = sparsetrain.save_sparse(model, Path(tmp) / f"{method}_{sparsity}.safetensors", masks)
            seconds = time.perf_counter() - start
            loaded = sparsetrain.load_sparse(path)
            same = all(torch.equal(v.view(torch.uint8) if v.dtype.is_floating_point else v,
                                   loaded[k].view(torch.uint8) if v.dtype.is_floating_point else loaded[k])
                       for k, v in model.state_dict().items())
            size = path.stat().st_size
            rows.append((method, sparsity, masks.sparsity(), size, size / dense_size, seconds, same))
    print(f"ResNet-50 (1000 classes), dense safetensors file: {dense_size:,} bytes ({dense_size / 1e6:.1f} MB)\n")
    print("| prune | sparsity (targets) | sparse file (bytes) | MB | sparse / dense | save (s) | load bit-identical |")
    print("|---|---|---|---|---|---|---|")
    for method, target, actual, size, ratio, seconds, same in rows:
        print(f"| {method} | {target:.2f} ({actual:.4f}) | {size:,} | {size / 1e6:.1f} | {ratio:.3f}x | {seconds:.2f} | "
              f"{'yes' if same else 'NO'} |")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
