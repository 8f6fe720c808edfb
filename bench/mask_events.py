"""Benchmark: the wall time of every method's mask event relative to one training step.

In one process, for two models:

* the demo model (``small_resnet`` width 8, 1-D, MNIST-1D input 1x40, batch 64, 10 classes,
  kappa 4 ``layers`` partitions, the demo configs' setting);
* ResNet-50 (torchvision layout, 3x224x224, a CPU-sized batch of 8 by default, 1000 classes,
  kappa 4 ``resnet_stages`` partitions);

it times, as medians after a warm-up:

* one training step: forward, cross-entropy, backward, SGD (momentum 0.9, weight decay) step and
  ``Sparsifier.step`` with S-GaP masks in force (one partition grown, the rest at the target);
* each kind of GaP mask event, applied with ``apply_gap_event`` exactly as the runner does, to
  weights that look trained (the partitions it prunes are first refilled with dense random
  values, untimed):
  ``gap_init`` (seeded random masks everywhere), ``gap_step`` (magnitude-prune the grown
  partition back, grow the next; the largest partition is pruned, the worst case), ``gap_final``
  and a P-GaP merge (every partition pruned), for the ``uniform`` and ``non-uniform``
  distributions;

* the other methods' events, through the same engine calls the runner makes: one-shot GP, GPMT
  (MT 0.05% on ResNet-50, 1% on the demo model), layer-wise magnitude and random pruning of the
  whole model; a GMP update (magnitude-prune an already 80%-sparse model to 0.9); a SET update and
  a RigL update (drop and regrow 30% of the active weights; RigL ranks this step's gradients);

and prints each event's time as a fraction of a training step. GaP events happen once every T
epochs, GMP's every few hundred steps, RigL's every 100 steps, so even a ratio of a few steps is
negligible; the figure shows that they are never the cost.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, median_time, share  # noqa: E402

from sparsetrain.methods import MaskEvent, apply_dst_event, apply_gap_event  # noqa: E402
from sparsetrain.models.registry import build_model  # noqa: E402
from sparsetrain.sparsity import MaskSet, Sparsifier, partition_targets, prune, select_targets  # noqa: E402


def training_step(model, sparsifier, optimizer, inputs, labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
    sparsifier.step(optimizer)


def other_method_events(model, targets, masks, sparsity, min_threshold, step_s, repeats, inputs, labels):
    """One-shot prunes, a GMP update, SET and RigL updates, timed on fresh dense-looking weights."""
    originals = [t.param.detach().clone() for t in targets]

    def fresh_weights():
        with torch.no_grad():
            for target, original in zip(targets, originals):
                target.param.copy_(original)

    def pruned(method, **kwargs):
        def setup():
            fresh_weights()
            return ()
        return setup, lambda: prune(model, sparsity, method=method, **kwargs)

    def gmp_setup():
        fresh_weights()
        prune(model, 0.8, method="uniform")
        return ()

    def dst_setup(kind):
        def setup():
            fresh_weights()
            apply_dst_event(MaskEvent(0, "dst_init", sparsity, distribution="erk", seed=0), masks)
            model.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            return (MaskEvent(0, kind, sparsity, distribution="erk", seed=1, drop_fraction=0.3), masks)
        return setup

    cases = [
        ("GP one-shot prune (whole model)", *pruned("gp")),
        (f"GPMT one-shot prune (MT {min_threshold}%)", *pruned("gpmt", min_threshold=min_threshold)),
        ("layer-wise magnitude one-shot prune", *pruned("uniform")),
        ("random one-shot prune", *pruned("random")),
        ("GMP update (0.8 -> 0.9, uniform)", gmp_setup, lambda: prune(model, sparsity, method="uniform")),
        ("SET update (30% of active weights)", dst_setup("set_update"), apply_dst_event),
        ("RigL update (30% of active weights, by gradient)", dst_setup("rigl_update"), apply_dst_event),
    ]
    rows = []
    for name, setup, fn in cases:
        timing = median_time(fn, repeats, 1, setup)
        rows.append((name, timing.median_s, timing.median_s / step_s))
    return rows


def bench_model(label: str, model: nn.Module, input_shape, batch: int, classes: int, scheme: str, kappa,
                sparsity: float, repeats: int, min_threshold: float) -> list[tuple[str, float, float]]:
    targets = select_targets(model)
    partitions = partition_targets(targets, scheme, kappa)
    parts = [p.target_indices for p in partitions]
    largest = max(range(len(parts)), key=lambda p: partitions[p].numel)
    following = (largest + 1) % len(parts)
    masks = MaskSet(targets)
    apply_gap_event(MaskEvent(0, "gap_init", sparsity, grow=largest, seed=0), masks, parts)
    sparsifier = Sparsifier(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    inputs = torch.randn(batch, *input_shape)
    labels = torch.randint(0, classes, (batch,))
    step = median_time(training_step, repeats, 1, lambda: (model, sparsifier, optimizer, inputs, labels))

    rows = [("training step", step.median_s, 1.0)]
    for distribution in ("uniform", "non-uniform"):
        events = [
            ("gap_init", MaskEvent(0, "gap_init", sparsity, grow=largest, distribution=distribution, seed=0)),
            (f"gap_step (prune P{largest + 1}, {partitions[largest].numel:,} weights; grow P{following + 1})",
             MaskEvent(0, "gap_step", sparsity, grow=following, prune=(largest,), distribution=distribution)),
            ("gap_final (prune one partition)",
             MaskEvent(0, "gap_final", sparsity, prune=(largest,), distribution=distribution)),
            ("pgap_merge (prune every partition)",
             MaskEvent(0, "pgap_merge", sparsity, prune=tuple(range(len(parts))), distribution=distribution)),
        ]
        for name, event in events:
            def setup(event=event):
                # Each event starts from the state it expects: the partitions it prunes grown and trained
                # (fresh dense random values, as after T epochs; pruned positions are no longer zero).
                with torch.no_grad():
                    for p in event.prune or range(len(parts)):
                        masks.grow_(parts[p])
                        for i in parts[p]:
                            targets[i].param.normal_(0.0, 0.02)
                return (event, masks, parts)

            timing = median_time(apply_gap_event, repeats, 1, setup)
            rows.append((f"{name}, {distribution}", timing.median_s, timing.median_s / step.median_s))
    rows += other_method_events(model, targets, masks, sparsity, min_threshold, step.median_s, repeats,
                                inputs, labels)
    print(f"\n### {label}\n")
    print(f"{len(targets)} target tensors, {masks.numel():,} weights; kappa {len(parts)} ({scheme}): "
          + ", ".join(f"P{p.index + 1} {p.numel:,}" for p in partitions)
          + f"; sparsity {sparsity}; input {batch}x{'x'.join(map(str, input_shape))}\n")
    print("| operation | median time (ms) | × one training step |")
    print("|---|---:|---:|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds * 1e3:.2f} | {ratio:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resnet50-batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="3 repeats, ResNet-50 at batch 2 and 112x112")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with OtherProcesses() as others:
        small = build_model("small_resnet", input_shape=(1, 40), num_classes=10, width=8)
        bench_model("Demo model (small_resnet width 8, MNIST-1D)", small, (1, 40), 64, 10, "layers", 4,
                    args.sparsity, repeats, min_threshold=1.0)
        side = 112 if args.quick else 224
        batch = 2 if args.quick else args.resnet50_batch
        resnet = build_model("resnet50", input_shape=(3, side, side), num_classes=1000)
        bench_model(f"ResNet-50 ({batch}x3x{side}x{side})", resnet, (3, side, side), batch, 1000, "resnet_stages",
                    None, args.sparsity, repeats, min_threshold=0.05)
    print(f"\nOther processes used {share(others)} of the CPUs while this ran.")


if __name__ == "__main__":
    main()
