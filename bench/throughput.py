"""Benchmark: ResNet-50 training throughput (images/s), dense vs each method's sparse phase.

In one process, ResNet-50 (torchvision layout) at a CPU-sized batch (8 x 3x224x224 by default;
``--quick``: 4 x 3x112x112), SGD with momentum and weight decay. For each method the training
step runs with the masks that method has in force during its sparse phase, through
``Sparsifier.step`` (GP and GPMT fine-tuning, GMP near its end, SET and RigL, an S-GaP step with
partition P4 grown, a P-GaP worker growing its partition), and the method's mask events are
amortized over the steps between them (GMP: one prune per epoch of 1,000 steps; SET and RigL:
one update per 100 steps; GaP: one event per T epochs, negligible and left out). Throughput is
batch / (median step time + amortized event time); the ratio to dense is what the issue targets
(within 3%). The device is the CPU here; on a machine with CUDA, ``--device cuda`` measures it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, median_time, share  # noqa: E402
from mask_events import training_step  # noqa: E402

from sparsetrain.methods import MaskEvent, apply_dst_event, apply_gap_event  # noqa: E402
from sparsetrain.models.registry import build_model  # noqa: E402
from sparsetrain.sparsity import MaskSet, Sparsifier, partition_targets, prune, select_targets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 at 112x112, 3 repeats")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    side, batch, repeats = (112, 4, 3) if args.quick else (224, args.batch, args.repeats)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet50", input_shape=(3, side, side), num_classes=1000).to(device)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = select_targets(model)
    parts = [p.target_indices for p in partition_targets(targets, "resnet_stages")]
    inputs = torch.randn(batch, 3, side, side, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    s = args.sparsity

    def masks_for(method: str) -> MaskSet | None:
        model.load_state_dict(dense_state)
        if method == "dense":
            return None
        if method in ("gp", "gpmt", "gmp"):
            return prune(model, s, method=method if method != "gmp" else "uniform",
                         min_threshold=0.05 if method == "gpmt" else None)
        masks = MaskSet(targets)
        if method in ("set", "rigl"):
            apply_dst_event(MaskEvent(0, "dst_init", s, distribution="erk", seed=0), masks)
        else:  # an S-GaP step or a P-GaP worker: P4 (layer4 + fc) grown, the rest at the target
            apply_gap_event(MaskEvent(0, "gap_init", s, grow=3, seed=0), masks, parts)
        return masks

    def event_cost(method: str, masks: MaskSet | None) -> float:
        """Seconds of mask events per training step, amortized."""
        if method == "gmp":
            return median_time(lambda: prune(model, s, method="uniform"), 3, 1).median_s / 1000
        if method in ("set", "rigl"):
            def setup():
                model.zero_grad()
                torch.nn.functional.cross_entropy(model(inputs), labels).backward()
                return (MaskEvent(0, f"{method}_update", s, distribution="erk", seed=1, drop_fraction=0.3), masks)
            return median_time(apply_dst_event, 3, 1, setup).median_s / 100
        return 0.0

    rows = []
    with OtherProcesses() as others:
        # dense first and again last: the two bracket the sparse phases and show the timing drift
        for method in ("dense", "gp", "gpmt", "gmp", "set", "rigl", "sgap", "pgap", "dense"):
            masks = masks_for(method)
            step_masks = masks if masks is not None else MaskSet(targets)
            sparsifier = Sparsifier(model, step_masks)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            if method == "dense":  # no masking at all
                step = median_time(lambda: _dense_step(model, optimizer, inputs, labels), repeats, 1)
            else:
                step = median_time(training_step, repeats, 1, lambda: (model, sparsifier, optimizer, inputs, labels))
            extra = event_cost(method, masks)
            rows.append((method if len(rows) < 8 else "dense (again)", step.median_s, extra,
                         batch / (step.median_s + extra)))
    dense_rate = (rows[0][3] + rows[-1][3]) / 2
    print(f"ResNet-50, batch {batch} x 3x{side}x{side}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; sparsity {s}\n")
    print("| method | median step (ms) | amortized mask events (ms/step) | images/s | × dense (mean of both dense rows) |")
    print("|---|---:|---:|---:|---:|")
    for method, step_s, extra_s, rate in rows:
        print(f"| {method} | {step_s * 1e3:.1f} | {extra_s * 1e3:.2f} | {rate:.2f} | {rate / dense_rate:.3f} |")
    worst = min(rate / dense_rate for _, _, _, rate in rows[1:-1])
    print(f"\nTarget 'sparse phases within 3% of dense throughput': {'MET' if worst >= 0.97 else 'NOT MET'} "
          f"(worst {worst:.3f} x dense). Other processes used {share(others)} of the CPUs.")


def _dense_step(model, optimizer, inputs, labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()


if __name__ == "__main__":
    main()
