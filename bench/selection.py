"""Benchmark: global magnitude selection over ResNet-50-shaped weights, ours vs torch.

What is measured, in one process, on the 54 conv+fc weights of ResNet-50 (25,502,912 float32
values from ``resnet50_random_weights(seed=0)``), pruning ``k = round(s * N)`` of them:

* **ours** — ``smallest_magnitude_masks`` (exact, chunked, no concatenation): a strided sample
  guesses a value bracket, then one pass writes the masks and gathers the few magnitudes inside
  the bracket, whose exact k-th value fixes the masks at those positions; one bool keep-mask per
  tensor;
* **torch.nn.utils.prune.global_unstructured** with ``L1Unstructured`` and ``amount=s``, on one
  ``nn.Module`` per tensor holding a ``weight`` Parameter cloned from it; fresh modules are built
  before every call (global_unstructured re-parametrizes them) and only the call is timed;
* **torch.kthvalue** over ``torch.cat`` of every ``|w|``, then ``|w| > t`` per tensor.

Time is the median wall-clock time of several calls after a warm-up (``bench/_measure.py``);
peak extra memory is the resident-memory high-water mark a call adds over the process's resident
size just before it (Linux ``clear_refs``/``VmHWM``), output included; "of which output" is what
is still resident right after the call, i.e. the returned masks (and, for global_unstructured,
the float32 ``weight_mask`` buffers and masked ``weight`` copies it attaches to the modules, plus
the concatenated float mask its forward pre-hooks keep alive).

Ours is also timed along its general two-pass route (``find_threshold``, then
``masks_from_threshold`` for a known threshold), which it falls back to when the sampled bracket
misses, to show what that costs.

Checks: every method prunes exactly k weights, and the masks of both torch methods are identical
to ours (the weights' magnitudes are distinct, so no tie-breaking is involved; the output prints
how many weights sit at the threshold). A mismatch makes the script exit with status 1 after printing the table.

Timings need an otherwise idle machine: ours runs ~10^3 small torch ops (1 MiB chunks), each an
OpenMP parallel region, and with the default spin-waiting OpenMP workers it slows down by one to two
orders of magnitude when other processes compete for the cores. The load average is printed.

Usage: ``.venv/bin/python bench/selection.py [--sparsity 0.9] [--repeats 5] [--slow-repeats 3]
[--threads N] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import prune

from sparsetrain.models.reference_shapes import resnet50_random_weights
from sparsetrain.sparsity import count_for, find_threshold, masks_from_threshold, smallest_magnitude_masks

from _measure import (  # bench/ is sys.path[0]
    MIB,
    MemoryPeak,
    OtherProcesses,
    Timing,
    median_time,
    peak_extra_memory,
)

SPEED_TARGET = 50.0
"""Ours must be at least this many times faster than global_unstructured (issue target)."""

DISTURBED = 0.05
"""Share of the CPUs taken by other processes above which a measurement is flagged as disturbed."""


# --- the three methods --------------------------------------------------------------------------


def ours(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    return smallest_magnitude_masks(tensors, k)


def kthvalue_masks(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    magnitudes = torch.cat([t.abs().flatten() for t in tensors])
    threshold = magnitudes.kthvalue(k).values
    del magnitudes
    return [t.abs() > threshold for t in tensors]


def weight_holders(tensors: Sequence[torch.Tensor]) -> list[nn.Module]:
    """One fresh module per tensor, with a ``weight`` Parameter cloned from it."""
    modules = []
    for tensor in tensors:
        module = nn.Module()
        module.weight = nn.Parameter(tensor.clone())
        modules.append(module)
    return modules


def torch_global_unstructured(modules: Sequence[nn.Module], amount: float) -> Sequence[nn.Module]:
    prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount
    )
    return modules


# --- running and reporting ----------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    short: str
    name: str
    fn: Callable
    setup: Callable[[], tuple]
    repeats: int
    to_masks: Callable = list


@dataclass(frozen=True)
class Result:
    method: Method
    timing: Timing
    memory: MemoryPeak
    masks: list[torch.Tensor]
    others: OtherProcesses


def measure(method: Method) -> Result:
    with OtherProcesses() as others:
        # One warm-up call each: first calls are much slower (lazy init, page faults) for every method.
        timing = median_time(method.fn, method.repeats, 1, method.setup)
        masks = method.to_masks(timing.result)
        timing = replace(timing, result=None)  # keep the masks, drop the rest (modules for torch)
        memory = peak_extra_memory(method.fn, method.setup)
    return Result(method, timing, memory, masks, others)


def share(others: OtherProcesses) -> str:
    return "unknown" if others.share is None else f"{others.share:.0%}"


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch.get_num_threads()={torch.get_num_threads()}"
    )


def pruned_count(masks: Sequence[torch.Tensor]) -> int:
    return sum(m.numel() - int(torch.count_nonzero(m)) for m in masks)


def identical(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def table(results: Sequence[Result], weight_bytes: int) -> str:
    reference = results[0]
    rows = [
        "| method | timed runs | median time (ms) | min–max (ms) | ours faster by | peak extra memory (MiB) "
        "| × weights | of which output (MiB) | pruned | masks identical to ours |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        is_ours = r is reference
        speedup = "—" if is_ours else f"{r.timing.median_s / reference.timing.median_s:.1f}×"
        retained = "?" if r.memory.retained_bytes is None else f"{r.memory.retained_bytes / MIB:.1f}"
        same = "(reference)" if is_ours else ("yes" if identical(r.masks, reference.masks) else "NO")
        rows.append(
            f"| {r.method.name} | {len(r.timing.times_s)} | {r.timing.median_s * 1e3:.0f} "
            f"| {min(r.timing.times_s) * 1e3:.0f}–{max(r.timing.times_s) * 1e3:.0f} | {speedup} "
            f"| {r.memory.peak_bytes / MIB:.1f} | {r.memory.peak_bytes / weight_bytes:.2f} "
            f"| {retained} | {pruned_count(r.masks):,} | {same} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned (default 0.9)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours and kthvalue (default 5)")
    parser.add_argument(
        "--slow-repeats", type=int, default=3, help="timed runs of global_unstructured (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="3 and 1 timed runs (well under a minute)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    repeats, slow_repeats = args.repeats, args.slow_repeats
    if args.quick:
        repeats, slow_repeats = min(repeats, 3), 1

    tensors = [w for _, w in resnet50_random_weights(seed=0)]
    total = sum(t.numel() for t in tensors)
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    k = count_for(total, args.sparsity)
    threshold = find_threshold(tensors, k)

    print(machine_line())
    print(
        f"Weights: ResNet-50 shapes, {len(tensors)} tensors, {total:,} float32 values "
        f"({weight_bytes / MIB:.1f} MiB); sparsity {args.sparsity} -> k = {k:,} pruned; "
        f"weights equal to the threshold: {threshold.ties_total}"
    )

    methods = [
        Method("ours", "ours: smallest_magnitude_masks", ours, lambda: (tensors, k), repeats),
        Method(
            "kthvalue",
            "torch.kthvalue on torch.cat of all abs(w)",
            kthvalue_masks,
            lambda: (tensors, k),
            repeats,
        ),
        Method(
            "global_unstructured",
            "torch prune.global_unstructured (L1Unstructured)",
            torch_global_unstructured,
            lambda: (weight_holders(tensors), args.sparsity),
            slow_repeats,
            to_masks=lambda modules: [m.weight_mask.bool() for m in modules],
        ),
    ]
    results = []
    for method in methods:
        print(f"measuring {method.name} ...", file=sys.stderr, flush=True)
        results.append(measure(method))

    with OtherProcesses() as split_others:
        find = median_time(find_threshold, repeats, 1, lambda: (tensors, k))
        write = median_time(masks_from_threshold, repeats, 1, lambda: (tensors, threshold))

    ours_result, _, torch_result = results
    print()
    print(table(results, weight_bytes))
    print()
    print(
        "Peak extra memory includes the output; 'of which output' is what is still resident right "
        "after the call: bool masks for ours and kthvalue; for global_unstructured the float32 "
        "weight_mask buffers, the masked weight copies and the concatenated float mask that its "
        f"forward pre-hooks keep alive. Memory measured by {ours_result.memory.how}."
    )
    print(
        f"Ours along the two-pass fallback route: find_threshold {find.median_s * 1e3:.0f} ms + "
        f"masks_from_threshold {write.median_s * 1e3:.0f} ms (medians of {repeats})."
    )
    watched = [(r.method.short, r.others) for r in results]
    watched.append(("split", split_others))
    print(
        f"Load average (1 min): {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end. "
        "Share of the CPUs used by other processes while measuring: "
        + ", ".join(f"{name} {share(others)}" for name, others in watched)
    )
    disturbed = [name for name, others in watched if others.share is not None and others.share > DISTURBED]
    if disturbed:
        print(f"WARNING: other processes were busy during: {', '.join(disturbed)}; those timings are unreliable")

    correct = all(pruned_count(r.masks) == k for r in results) and all(
        identical(r.masks, ours_result.masks) for r in results[1:]
    )
    speedup = torch_result.timing.median_s / ours_result.timing.median_s
    speed_met = speedup >= SPEED_TARGET and identical(torch_result.masks, ours_result.masks)
    memory_met = ours_result.memory.peak_bytes < weight_bytes
    print()
    print(
        f"Target 'at least {SPEED_TARGET:.0f}x faster than global_unstructured, identical masks': "
        f"{'MET' if speed_met else 'NOT MET'} ({speedup:.1f}x)"
    )
    print(
        f"Target 'extra memory below one copy of the weights ({weight_bytes / MIB:.1f} MiB)': "
        f"{'MET' if memory_met else 'NOT MET'} ({ours_result.memory.peak_bytes / MIB:.1f} MiB "
        "including the bool masks)"
    )
    if not correct:
        print("ERROR: a method did not prune exactly k weights, or masks differ from ours", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
