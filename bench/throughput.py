"""Benchmark: ResNet-50 training throughput (images/s), dense vs each method's sparse phase, fed by a DataLoader.

One process trains ResNet-50 (torchvision layout) with SGD (momentum, weight decay) on a synthetic
in-memory image set (uint8, as decoded JPEGs would be) read through a real ``DataLoader``: worker
processes, persistent workers, prefetching, pinned memory and ``non_blocking`` copies on CUDA; the
images are normalised to float on the device. For each method the step runs with the masks that
method has in force during its sparse phase, enforced as the runner does (``Sparsifier.mask_grads``
before every update; ``--enforce step``: ``Sparsifier.step`` after it) (GP and GPMT fine-tuning, GMP near its end, SET and RigL, an S-GaP step with partition P4 grown, a
P-GaP worker growing its partition); mask events are amortized over the steps between them (GMP:
one prune per epoch of 1,000 steps; SET and RigL: one update per 100 steps; GaP: one event per T
epochs, negligible and left out). The step does no host sync; the device is synchronised only at the
ends of each timed window.

Reported per phase: images/s = images of the timed steps / (wall time of the window + amortized
event time); the ratio to dense (the mean of a dense row before and after the sparse ones, which
bracket the timing drift); and the data loader's share of the step: host time blocked in
``next(loader)`` / wall time of the window (an upper bound on the device's idle time: a GPU keeps
executing queued work while the host waits). Target: every sparse phase within 3% of dense.

Needs only torch and numpy: ``PYTHONPATH=src python bench/throughput.py --device cuda`` (at most
``--time-limit`` seconds, default 270, including the model's set-up; CUDA defaults: batch 256 at
224x224, bf16 autocast, channels_last, 8 workers; ``--compile`` adds torch.compile).
``--quick`` (CPU): batch 4 at 64x64, 2 timed steps per phase, one worker, about a minute on two
cores. Without pydantic, the S-GaP/P-GaP and SET/RigL masks are built from ``sparsetrain.sparsity``
alone (same densities and grown partition) and the SET/RigL update cost is not measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, median_time, share  # noqa: E402

from sparsetrain.models.registry import build_model  # noqa: E402
from sparsetrain.sparsity import (  # noqa: E402
    MaskSet,
    Sparsifier,
    erk_counts,
    partition_targets,
    prune,
    random_masks,
    select_targets,
    uniform_counts,
)

try:  # the methods' own events (their stage schemas need pydantic, which a bare GPU machine may lack)
    from sparsetrain.methods import MaskEvent, apply_dst_event, apply_gap_event
except ImportError:
    MaskEvent = None

METHODS = ("dense", "gp", "gpmt", "gmp", "set", "rigl", "sgap", "pgap", "dense")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


class SyntheticImages(Dataset):
    """``size`` random uint8 images (3 x side x side) with labels in [0, classes), all in memory."""

    def __init__(self, size: int, side: int, classes: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, classes, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].clone(), self.labels[index]  # a copy, as a decoded image would be


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: batch 4 at 64x64, 2 steps per phase")
    parser.add_argument("--batch", type=int, help="images per step (default: 256 on CUDA, 8 on CPU)")
    parser.add_argument("--side", type=int, help="image side in pixels (default 224; --quick 64)")
    parser.add_argument("--steps", type=int, help="timed steps per phase (default: 30 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps before each phase (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes (default: 8 on CUDA, 1 on CPU)")
    parser.add_argument("--prefetch", type=int, default=4, help="batches each worker loads ahead")
    parser.add_argument("--amp", choices=("off", "bf16"), help="autocast (default: bf16 on CUDA, off on CPU)")
    parser.add_argument("--channels-last", choices=("on", "off"), help="NHWC model and batches (default: on for "
                        "CUDA, off on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (forward and backward)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--enforce", choices=("grads", "step"), default="grads", help="how masks act each step: "
                        "Sparsifier.mask_grads() before optimizer.step() (the runner's way) or Sparsifier.step() "
                        "after it")
    parser.add_argument("--time-limit", type=float, default=270.0, help="seconds; phases that would not fit are "
                        "left out (and reported)")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    if not 0 < args.sparsity < 1:
        sys.exit(f"--sparsity={args.sparsity}: valid range (0, 1)")
    side = args.side or (64 if args.quick else 224)
    batch = args.batch or (4 if args.quick else 256 if cuda else 8)
    steps = args.steps or (2 if args.quick else 30 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    workers = args.workers if args.workers is not None else (8 if cuda else 1)
    amp = args.amp or ("bf16" if cuda else "off")
    channels_last = (args.channels_last or ("on" if cuda else "off")) == "on"
    warnings.filterwarnings("ignore", message=".*keeps none of its")  # GP may cut fc at 90%: a fact, not news
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = build_model("resnet50", input_shape=(3, side, side), num_classes=1000).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model) if args.compile else model
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = select_targets(model)
    parts = [p.target_indices for p in partition_targets(targets, "resnet_stages")]
    s = args.sparsity

    dataset = SyntheticImages(batch * 4, side, 1000)
    loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, generator=torch.Generator()
                                                                         .manual_seed(0)),
                        num_workers=workers, pin_memory=cuda, drop_last=True, persistent_workers=workers > 0,
                        prefetch_factor=args.prefetch if workers > 0 else None)
    mean, std = MEAN.to(device), STD.to(device)

    def batches():
        while True:
            yield from loader

    feed = batches()

    def to_device(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(device, non_blocking=cuda)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.float().sub_(mean).div_(std), labels.to(device, non_blocking=cuda)

    event_repeats = (1, 0) if args.quick else (3, 1)  # (timed, warm-up) calls of a mask event
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def step(optimizer: torch.optim.Optimizer, sparsifier: Sparsifier | None, images, labels) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(network(images), labels)
        loss.backward()
        if sparsifier is not None and args.enforce == "grads":
            sparsifier.mask_grads()
        optimizer.step()
        if sparsifier is not None and args.enforce == "step":
            sparsifier.step(optimizer)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def window(optimizer, sparsifier, count: int) -> tuple[float, float]:
        """(wall seconds of ``count`` steps, of which host seconds blocked waiting for the loader)."""
        sync()
        start = time.perf_counter()
        waiting = 0.0
        for _ in range(count):
            before = time.perf_counter()
            images, labels = next(feed)
            waiting += time.perf_counter() - before
            step(optimizer, sparsifier, *to_device(images, labels))
        sync()
        return time.perf_counter() - start, waiting

    def masks_for(method: str) -> MaskSet | None:
        model.load_state_dict(dense_state)  # copies into the same parameters: the compiled graph stays valid
        if method == "dense":
            return None
        if method in ("gp", "gpmt", "gmp"):
            return prune(model, s, method=method if method != "gmp" else "uniform",
                         min_threshold=0.05 if method == "gpmt" else None)
        masks = MaskSet(targets)
        shapes = [tuple(t.param.shape) for t in targets]
        if MaskEvent is not None and method in ("set", "rigl"):
            apply_dst_event(MaskEvent(0, "dst_init", s, distribution="erk", seed=0), masks)
        elif MaskEvent is not None:  # an S-GaP step or a P-GaP worker: P4 (layer4 + fc) grown, the rest at s
            apply_gap_event(MaskEvent(0, "gap_init", s, grow=3, seed=0), masks, parts)
        else:  # the same densities from the engine alone
            counts = erk_counts(shapes, s) if method in ("set", "rigl") else uniform_counts(
                [t.param.numel() for t in targets], s)
            for i, mask in enumerate(random_masks([t.param for t in targets], counts, seed=0)):
                masks.set_(i, mask)
            if method in ("sgap", "pgap"):
                masks.grow_(parts[3])
            masks.apply_()
        return masks

    def event_cost(method: str, masks: MaskSet | None) -> float | None:
        """Seconds of mask events per training step, amortized (None: not measurable here)."""
        if method == "gmp":
            return median_time(lambda: (prune(model, s, method="uniform"), sync()), *event_repeats).median_s / 1000
        if method in ("set", "rigl"):
            if MaskEvent is None:
                return None
            images, labels = to_device(*next(feed))

            def setup():
                model.zero_grad()
                with autocast:
                    loss = nn.functional.cross_entropy(network(images), labels)
                loss.backward()
                return (MaskEvent(0, f"{method}_update", s, distribution="erk", seed=1, drop_fraction=0.3), masks)

            return median_time(lambda *a: (apply_dst_event(*a), sync()), *event_repeats, setup).median_s / 100
        return 0.0

    rows, left_out = [], []
    with OtherProcesses() as others:
        for index, method in enumerate(METHODS):
            spent = time.perf_counter() - started
            per_phase = spent / index if index > 1 else 0.0  # the first phase includes the loader's start
            if index and spent + per_phase > args.time_limit:
                left_out.append(method)
                continue
            masks = masks_for(method)
            sparsifier = Sparsifier(model, masks) if masks is not None else None
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
            window(optimizer, sparsifier, warmup)
            wall, waiting = window(optimizer, sparsifier, steps)
            extra = event_cost(method, masks)
            rate = batch * steps / (wall + steps * (extra or 0.0))
            label = "dense (again)" if method == "dense" and index else method
            rows.append((label, wall / steps, extra, waiting / wall, rate))
    dense_rates = [row[4] for row in rows if row[0].startswith("dense")]
    dense_rate = statistics.fmean(dense_rates)
    print(f"ResNet-50, batch {batch} x 3x{side}x{side} uint8 through a DataLoader ({workers} workers, prefetch "
          f"{args.prefetch if workers else '-'}, pin_memory {cuda}), device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; amp {amp}, channels_last {channels_last}, compile {args.compile}; "
          f"sparsity {s}, masks enforced by {args.enforce}; {steps} timed steps per phase after {warmup} warm-up; masks from "
          f"{'sparsetrain.methods' if MaskEvent is not None else 'sparsetrain.sparsity alone (no pydantic)'}\n")
    print("| method | step (ms) | amortized mask events (ms/step) | loader wait (share of step) | images/s "
          "| x dense | target (sparse within 3% of dense) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    worst = None
    for label, step_s, extra_s, wait_share, rate in rows:
        ratio = rate / dense_rate
        verdict = "-"
        if not label.startswith("dense"):
            verdict = "met" if ratio >= 0.97 else "not met"
            worst = ratio if worst is None else min(worst, ratio)
        events = "n/a (needs pydantic)" if extra_s is None else f"{extra_s * 1e3:.2f}"
        print(f"| {label} | {step_s * 1e3:.1f} | {events} | {wait_share:.1%} | {rate:.1f} | {ratio:.3f} | {verdict} |")
    if len(dense_rates) == 2:
        print(f"\nDense drift: {dense_rates[1] / dense_rates[0]:.3f} (second dense row / first).")
    if left_out:
        print(f"Left out to stay within --time-limit {args.time_limit:.0f} s: {', '.join(left_out)}.")
    if worst is not None:
        print(f"Target 'sparse phases within 3% of dense throughput': {'MET' if worst >= 0.97 else 'NOT MET'} "
              f"(worst {worst:.3f} x dense).")
    print(f"Other processes used {share(others)} of the CPUs; total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
