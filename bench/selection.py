"""Benchmark: global magnitude selection over ResNet-50-shaped weights, ours vs torch.

What is measured, in one process, on the 54 conv+fc weights of ResNet-50 (25,502,912 float32
values from ``resnet50_random_weights(seed=0)``), pruning ``k = round(s * N)`` of them:

* **ours** — ``smallest_magnitude_masks`` (exact, chunked, no concatenation): a strided sample
  guesses a value bracket, then one pass (a compiled loop per tensor, on two threads) writes the
  masks and gathers the few magnitudes inside the bracket, whose exact k-th value fixes the masks at
  those positions; one bool keep-mask per tensor;
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

Timings need an otherwise idle machine (``--contended`` measures the other case on purpose): every method
here reads tens of megabytes on all cores, and the torch methods' OpenMP regions spin-wait for descheduled
threads when other processes hold the cores. The load average is printed.

Size-scaling mode (``--scaling``): how each method's cost grows with the number of weights, on a
Transformer-big-like stack built by arithmetic (no module): per layer the four 1024x1024 attention
projections, fc1 4096x1024 and fc2 1024x4096 (12,582,912 weights), random normal with
std = 1/sqrt(fan_in), float32, seeded; the first 2, 4 and 8 layers of the same stack give
25,165,824, 50,331,648 and 100,663,296 weights. For each size, in one process, it measures ours,
``torch.sort`` of the concatenated |w| (values and indices; the first k sorted indices are
pruned), and ``global_unstructured`` (skipped, with the reason printed, at sizes where its
predicted peak would not fit in ``MemAvailable``, and above 50M weights with ``--quick``). The
magnitudes of a normal float32 draw of 10^8 values are not all distinct, and a tie straddling
the k-th position would let the methods legitimately pick different elements; so before a
size is measured, any weights tied with its k-th smallest magnitude beyond the ones pruned are
moved up by one ulp (the count is printed), which makes the pruned set unique without changing
ours' masks. It prints one table (time, time per million weights, peak extra memory, ratios vs
ours) and the growth of each method's time and memory from size to size. Ours' peak memory is the
largest over 3 calls (its reading varies from call to call); the torch methods' is one call.

Contended mode (``--contended``): in one run, ours, ``global_unstructured`` and one ``abs()`` pass over the
same weights, first on the idle machine, then with ``--busy`` (default: one per CPU) processes spinning in
pure Python that the script starts and stops itself; it prints both phases and the targets (at least 50x
faster than ``global_unstructured`` idle, at least 20x contended, within 2x of one ``abs()`` pass, identical
masks) met or not.

Usage: ``.venv/bin/python bench/selection.py [--sparsity 0.9] [--repeats 5] [--slow-repeats 3]
[--threads N] [--quick] [--scaling [--layers 2 4 8] | --contended [--busy N] | --first-call]``

First-call mode (``--first-call``): ``--repeats`` fresh processes each time the first and second selection of
100,000 weights, with numba's disk cache in place, then with an empty cache directory (numba compiles).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils import prune

from sparsetrain.models.reference_shapes import resnet50_random_weights
from sparsetrain.sparsity import count_for, find_threshold, masks_from_threshold, smallest_magnitude_masks

from _measure import (  # bench/ is sys.path[0]
    machine_line,
    share,
    MIB,
    MemoryPeak,
    OtherProcesses,
    Timing,
    median_time,
    peak_extra_memory,
    release_memory,
)

SPEED_TARGET = 50.0
"""Ours must be at least this many times faster than global_unstructured (issue target)."""

DISTURBED = 0.05
"""Share of the CPUs taken by other processes above which a measurement is flagged as disturbed."""


# --- the three methods --------------------------------------------------------------------------


def report_load(load_at_start: float, watched: list[tuple[str, OtherProcesses]]) -> None:
    """Print the load average and other processes' CPU share per measurement; warn when disturbed."""
    print(
        f"Load average (1 min): {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end. "
        "Share of the CPUs used by other processes while measuring: "
        + ", ".join(f"{name} {share(others)}" for name, others in watched)
    )
    disturbed = [name for name, others in watched if others.share is not None and others.share > DISTURBED]
    if disturbed:
        print(f"WARNING: other processes were busy during: {', '.join(disturbed)}; those timings are unreliable")


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
    memory_repeats: int = 1  # peak memory is the largest over this many calls


@dataclass(frozen=True)
class Result:
    method: Method
    timing: Timing
    memory: MemoryPeak
    masks: list[torch.Tensor]
    others: OtherProcesses
    memory_peaks: tuple[int, ...] = ()  # peak extra bytes of every memory call


def measure(method: Method) -> Result:
    with OtherProcesses() as others:
        # One warm-up call each: first calls are much slower (lazy init, page faults) for every method.
        timing = median_time(method.fn, method.repeats, 1, method.setup)
        masks = method.to_masks(timing.result)
        timing = replace(timing, result=None)  # keep the masks, drop the rest (modules for torch)
        memories = [peak_extra_memory(method.fn, method.setup) for _ in range(method.memory_repeats)]
    memory = max(memories, key=lambda m: m.peak_bytes)
    return Result(method, timing, memory, masks, others, tuple(m.peak_bytes for m in memories))


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


# --- selection under load (--contended) ---------------------------------------------------------

CONTENDED_TARGET = 20.0
"""With every core busy, ours must still be this many times faster than global_unstructured."""

ABS_PASS_TARGET = 2.0
"""Ours must take at most this many times one ``abs()`` pass over the weights."""


def abs_pass(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One ``abs()`` pass over every weight (what any magnitude criterion must at least read and write)."""
    return [t.abs() for t in tensors]


def busy_processes(count: int) -> list:
    """``count`` processes spinning in pure Python (each holds one core, as data-loader workers or another job)."""
    import subprocess

    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"]) for _ in range(count)]


def contended_main(args: argparse.Namespace, repeats: int, slow_repeats: int, load_at_start: float) -> int:
    """Ours, global_unstructured and one abs() pass: first on the idle machine, then with ``args.busy`` spinning
    processes started here; the three targets of the issue are printed met or not."""
    import time

    tensors = [w for _, w in resnet50_random_weights(seed=0)]
    total = sum(t.numel() for t in tensors)
    k = count_for(total, args.sparsity)
    print(machine_line())
    print(f"Weights: ResNet-50 shapes, {len(tensors)} tensors, {total:,} float32 values; sparsity {args.sparsity} "
          f"-> k = {k:,}; torch threads {torch.get_num_threads()}; busy processes in the contended phase: {args.busy}")

    def phase() -> dict[str, tuple[Timing, list[torch.Tensor] | None]]:
        out = {}
        out["ours"] = median_time(ours, repeats, 1, lambda: (tensors, k))
        out["abs"] = median_time(abs_pass, repeats, 1, lambda: (tensors,))
        timing = median_time(torch_global_unstructured, slow_repeats, 1,
                             lambda: (weight_holders(tensors), args.sparsity))
        out["torch"] = replace(timing, result=[m.weight_mask.bool() for m in timing.result])
        release_memory()
        return out

    print("measuring on the idle machine ...", file=sys.stderr, flush=True)
    with OtherProcesses() as idle_others:
        idle = phase()
    busy = busy_processes(args.busy)
    try:
        time.sleep(1.0)
        print(f"measuring with {args.busy} busy processes ...", file=sys.stderr, flush=True)
        contended = phase()
    finally:
        for process in busy:
            process.kill()
            process.wait()

    correct = True
    print("\n| phase | ours (ms) | one abs() pass (ms) | ours / abs | global_unstructured (ms) | ours faster by | "
          "masks identical |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, result in (("idle", idle), (f"{args.busy} busy processes", contended)):
        same = identical(result["ours"].result, result["torch"].result) and pruned_count(result["ours"].result) == k
        correct &= same
        ours_s, abs_s, torch_s = (result[key].median_s for key in ("ours", "abs", "torch"))
        print(f"| {name} | {ours_s * 1e3:.0f} | {abs_s * 1e3:.0f} | {ours_s / abs_s:.2f} | {torch_s * 1e3:.0f} "
              f"| {torch_s / ours_s:.1f}× | {'yes' if same else 'NO'} |")
    print(f"\nMedians of {repeats} calls (global_unstructured: {slow_repeats}) after one warm-up each.")
    report_load(load_at_start, [("idle phase", idle_others)])
    checks = [
        (f"at least {SPEED_TARGET:.0f}x faster than global_unstructured idle",
         idle["torch"].median_s / idle["ours"].median_s >= SPEED_TARGET),
        (f"at least {CONTENDED_TARGET:.0f}x faster with {args.busy} busy processes",
         contended["torch"].median_s / contended["ours"].median_s >= CONTENDED_TARGET),
        (f"within {ABS_PASS_TARGET:.0f}x of one abs() pass, idle",
         idle["ours"].median_s <= ABS_PASS_TARGET * idle["abs"].median_s),
        (f"within {ABS_PASS_TARGET:.0f}x of one abs() pass, contended",
         contended["ours"].median_s <= ABS_PASS_TARGET * contended["abs"].median_s),
        ("identical masks, exactly k pruned", correct),
    ]
    for what, met in checks:
        print(f"Target '{what}': {'MET' if met else 'NOT MET'}")
    return 0 if correct else 1


# --- first call in a process (--first-call) -------------------------------------------------------

FIRST_CALL = """
import time, torch
from sparsetrain.sparsity import smallest_magnitude_masks
tensors = [torch.randn(100_000)]
start = time.perf_counter(); smallest_magnitude_masks(tensors, 5_000); first = time.perf_counter() - start
start = time.perf_counter(); smallest_magnitude_masks(tensors, 5_000); second = time.perf_counter() - start
print(first, second)
"""


def first_call_main(runs: int) -> int:
    """The first selection of a fresh process (numba loads or compiles the fused scan) against the second, with
    numba's disk cache in place and with an empty cache directory (``NUMBA_CACHE_DIR``: it compiles)."""
    import subprocess
    import tempfile

    print(machine_line())
    print("| numba cache | run | first call (s) | second call (ms) |\n|---|---:|---:|---:|")
    for label in ("in place", "empty (compiles)"):
        for run in range(1, runs + 1):
            with tempfile.TemporaryDirectory() as empty:
                env = dict(os.environ, **({"NUMBA_CACHE_DIR": empty} if label != "in place" else {}))
                out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True, capture_output=True,
                                     text=True).stdout.split()
            print(f"| {label} | {run} | {float(out[0]):.3f} | {float(out[1]) * 1e3:.2f} |")
    return 0


# --- size scaling (--scaling) -------------------------------------------------------------------

D_MODEL = 1024
D_FFN = 4096
LAYER_SHAPES = (
    ("self_attn.q_proj", (D_MODEL, D_MODEL)),
    ("self_attn.k_proj", (D_MODEL, D_MODEL)),
    ("self_attn.v_proj", (D_MODEL, D_MODEL)),
    ("self_attn.out_proj", (D_MODEL, D_MODEL)),
    ("fc1", (D_FFN, D_MODEL)),
    ("fc2", (D_MODEL, D_FFN)),
)
"""Weight matrices (out, in) of one Transformer-big-like layer: 12,582,912 weights."""

GU_MEMORY_MARGIN = 1.25
"""Safety factor on global_unstructured's predicted peak when deciding whether it fits."""

GU_WEIGHTS_FACTOR = 16.0
"""Predicted global_unstructured peak, in copies of the weights, when no smaller size was measured
(the default mode measures about 14 at 25M weights)."""


def transformer_random_weights(layers: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """``(name, weight)`` of ``layers`` Transformer-big-like layers, N(0, 1/fan_in), float32."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights = []
    for layer in range(layers):
        for name, shape in LAYER_SHAPES:
            values = torch.randn(shape, generator=generator, dtype=torch.float32)
            values.mul_(1.0 / math.sqrt(shape[1]))
            weights.append((f"layers.{layer}.{name}.weight", values))
    return weights


def untie_kth(tensors: Sequence[torch.Tensor], k: int) -> int:
    """Make the set of the k smallest magnitudes unique, in place; return how many weights moved.

    Weights whose magnitude equals the k-th smallest one, beyond the ones that are pruned (ours
    prunes the first ties in (tensor, flat index) order), are moved one ulp away from zero, so
    that the k-th smallest magnitude is strictly below the (k+1)-th; ours' masks do not change.
    """
    threshold = find_threshold(tensors, k)
    skip, moved = threshold.ties_pruned, 0
    if threshold.ties_total == threshold.ties_pruned:
        return 0
    for tensor in tensors:
        flat = tensor.view(-1)
        positions = torch.nonzero(flat.abs() == threshold.value).squeeze(1)
        if skip >= positions.numel():
            skip -= positions.numel()
            continue
        positions, skip = positions[skip:], 0
        values = flat[positions]
        away = torch.nextafter(values.abs(), torch.tensor(math.inf))
        flat[positions] = torch.copysign(away, values)
        moved += positions.numel()
    after = find_threshold(tensors, k)
    if after.ties_total != after.ties_pruned:
        raise RuntimeError("could not make the k-th smallest magnitude unique")
    return moved


def sort_masks(tensors: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """``torch.sort`` of the concatenated |w| (values and indices); the first k indices are pruned."""
    magnitudes = torch.cat([t.reshape(-1) for t in tensors]).abs_()
    values, order = torch.sort(magnitudes)
    del magnitudes, values
    keep = torch.ones(order.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    del order
    return [m.view(t.shape) for m, t in zip(keep.split([t.numel() for t in tensors]), tensors)]


def mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class ScalingRow:
    total: int
    k: int
    result: Result
    pruned: int
    same_as_ours: bool | None  # None for ours itself


def fmt_weights(total: int) -> str:
    return f"{total / 1e6:.1f}M ({total:,})"


def scaling_table(rows: Sequence[ScalingRow], ours_by_total: dict[int, Result]) -> str:
    lines = [
        "| size (weights) | method | timed runs | median time (s) | min–max (s) | time per million weights (ms) "
        "| peak extra memory (MiB) | × weights | time vs ours | memory vs ours | pruned = k, masks = ours |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        r, ref = row.result, ours_by_total[row.total]
        weight_bytes = row.total * 4
        is_ours = row.same_as_ours is None
        time_ratio = "—" if is_ours else f"{r.timing.median_s / ref.timing.median_s:.1f}×"
        memory_ratio = "—" if is_ours else f"{r.memory.peak_bytes / ref.memory.peak_bytes:.1f}×"
        check = "yes" if row.pruned == row.k and row.same_as_ours in (None, True) else "NO"
        lines.append(
            f"| {fmt_weights(row.total)} | {r.method.name} | {len(r.timing.times_s)} "
            f"| {r.timing.median_s:.3f} | {min(r.timing.times_s):.3f}–{max(r.timing.times_s):.3f} "
            f"| {r.timing.median_s * 1e3 / (row.total / 1e6):.2f} "
            f"| {r.memory.peak_bytes / MIB:.1f} | {r.memory.peak_bytes / weight_bytes:.2f} "
            f"| {time_ratio} | {memory_ratio} | {check} |"
        )
    return "\n".join(lines)


def growth_line(short: str, rows: Sequence[ScalingRow]) -> str | None:
    """How time and memory grow from one measured size to the next, and the fitted exponent."""
    mine = sorted((row for row in rows if row.result.method.short == short), key=lambda row: row.total)
    if len(mine) < 2:
        return None
    steps_t, steps_m = [], []
    for a, b in zip(mine, mine[1:]):
        label = f"{a.total / 1e6:.0f}M→{b.total / 1e6:.0f}M"
        steps_t.append(f"×{b.result.timing.median_s / a.result.timing.median_s:.2f} ({label})")
        steps_m.append(f"×{b.result.memory.peak_bytes / a.result.memory.peak_bytes:.2f} ({label})")
    xs = [math.log(row.total) for row in mine]

    def exponent(ys: list[float]) -> float:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    time_exp = exponent([math.log(row.result.timing.median_s) for row in mine])
    mem_exp = exponent([math.log(max(row.result.memory.peak_bytes, 1)) for row in mine])
    return (
        f"{mine[0].result.method.name}: time {', '.join(steps_t)}, fitted ~N^{time_exp:.2f}; "
        f"peak memory {', '.join(steps_m)}, fitted ~N^{mem_exp:.2f}"
    )


def scaling_main(args: argparse.Namespace, repeats: int, slow_repeats: int, load_at_start: float) -> int:
    layer_counts = sorted(set(args.layers))
    gu_limit = 50_400_000 if args.quick else None  # --quick: global_unstructured up to 50M weights
    print(machine_line())
    available = mem_available_bytes()
    print(
        f"Weights: Transformer-big-like layers (d_model {D_MODEL}, FFN {D_FFN}; per layer 4 x "
        f"{D_MODEL}x{D_MODEL} attention + {D_FFN}x{D_MODEL} fc1 + {D_MODEL}x{D_FFN} fc2 = "
        f"{sum(math.prod(s) for _, s in LAYER_SHAPES):,} weights), N(0, 1/fan_in) float32, seed 0; "
        f"layers {', '.join(map(str, layer_counts))}; sparsity {args.sparsity}; "
        f"MemAvailable at start: {'unknown' if available is None else f'{available / MIB:,.0f} MiB'}"
    )
    all_weights = [w for _, w in transformer_random_weights(max(layer_counts), seed=0)]
    per_layer = len(LAYER_SHAPES)

    rows: list[ScalingRow] = []
    ours_by_total: dict[int, Result] = {}
    watched: list[tuple[str, OtherProcesses]] = []
    notes: list[str] = []
    correct = True
    for layers in layer_counts:
        tensors = all_weights[: layers * per_layer]
        total = sum(t.numel() for t in tensors)
        weight_bytes = total * 4
        k = count_for(total, args.sparsity)
        moved = untie_kth(tensors, k)
        notes.append(
            f"{fmt_weights(total)}: {layers} layers, k = {k:,}; weights moved one ulp to untie the "
            f"k-th magnitude: {moved}"
        )
        methods = [
            Method("ours", "ours: smallest_magnitude_masks", ours, lambda: (tensors, k), repeats, memory_repeats=3),
            Method("sort", "torch.sort of torch.cat of all abs(w)", sort_masks, lambda: (tensors, k), slow_repeats),
        ]
        gu = Method(
            "global_unstructured",
            "torch prune.global_unstructured (L1Unstructured)",
            torch_global_unstructured,
            lambda: (weight_holders(tensors), args.sparsity),
            slow_repeats,
            to_masks=lambda modules: [m.weight_mask.bool() for m in modules],
        )
        if gu_limit is not None and total > gu_limit:
            notes.append(f"{fmt_weights(total)}: global_unstructured skipped (--quick measures it up to 50M weights)")
        else:
            previous = [row for row in rows if row.result.method.short == "global_unstructured"]
            if previous:
                last = max(previous, key=lambda row: row.total)
                predicted = last.result.memory.peak_bytes * total / last.total
            else:
                predicted = GU_WEIGHTS_FACTOR * weight_bytes
            needed = GU_MEMORY_MARGIN * predicted + weight_bytes  # + the cloned weights its modules hold
            release_memory()
            available = mem_available_bytes()
            if available is not None and needed > available:
                notes.append(
                    f"{fmt_weights(total)}: global_unstructured skipped: predicted to need "
                    f"{needed / MIB:,.0f} MiB, MemAvailable is {available / MIB:,.0f} MiB"
                )
            else:
                methods.append(gu)
        results = []
        for method in methods:
            print(f"{total / 1e6:.1f}M weights: measuring {method.name} ...", file=sys.stderr, flush=True)
            results.append(measure(method))
            watched.append((f"{method.short}@{total / 1e6:.0f}M", results[-1].others))
        reference = results[0]
        ours_by_total[total] = reference
        for r in results:
            pruned = pruned_count(r.masks)
            same = None if r is reference else identical(r.masks, reference.masks)
            correct = correct and pruned == k and same in (None, True)
            rows.append(ScalingRow(total, k, replace(r, masks=[]), pruned, same))
            if pruned != k:
                notes.append(f"{fmt_weights(total)}: {r.method.name} pruned {pruned:,}, not k = {k:,}")
        del results, reference
        release_memory()

    print()
    print(scaling_table(rows, ours_by_total))
    print()
    for note in notes:
        print(note)
    print(
        "Peak extra memory: resident high-water mark a call adds, its output included "
        f"({rows[0].result.memory.how}); × weights is that over the float32 weights' size (4 bytes × size); "
        "the bool masks every method returns are 0.25 × weights (global_unstructured also keeps float32 "
        "masks and masked weight copies on its modules). Ours' peak is the largest of 3 calls ("
        + "; ".join(
            f"{row.total / 1e6:.0f}M: " + ", ".join(f"{b / MIB:.1f}" for b in row.result.memory_peaks) + " MiB"
            for row in rows
            if row.same_as_ours is None
        )
        + "); the torch methods' peak is one call."
    )
    print()
    print("Growth with size (ratio of medians and of peaks between consecutive sizes; least-squares slope in log-log):")
    for short in ("ours", "sort", "global_unstructured"):
        line = growth_line(short, rows)
        if line is not None:
            print(f"- {line}")
    print()
    report_load(load_at_start, watched)
    if not correct:
        print("ERROR: a method did not prune exactly k weights, or masks differ from ours", file=sys.stderr)
        return 1
    print("All methods pruned exactly k weights with masks identical to ours at every size.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights pruned (default 0.9)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours and kthvalue (--scaling: ours) (default 5)")
    parser.add_argument(
        "--slow-repeats", type=int, default=3, help="timed runs of global_unstructured (--scaling: and sort) (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 and 1 timed runs (well under a minute; with --scaling a few minutes, "
        "global_unstructured up to 50M weights)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="cost vs model size on Transformer-big-like layers: ours, torch.sort, global_unstructured",
    )
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[2, 4, 8],
        help="--scaling: numbers of 12.6M-weight layers to measure (default 2 4 8: 25M, 50M, 100M weights)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N) first (default: torch's)")
    parser.add_argument("--contended", action="store_true",
                        help="ours, global_unstructured and one abs() pass idle, then with --busy spinning processes")
    parser.add_argument("--first-call", action="store_true",
                        help="the first selection in a fresh process vs the second, numba cache in place and empty")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2,
                        help="--contended: busy processes to start (default: one per CPU)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    repeats, slow_repeats = args.repeats, args.slow_repeats
    if args.quick:
        repeats, slow_repeats = min(repeats, 3), 1
    if args.contended:
        return contended_main(args, repeats, slow_repeats, load_at_start)
    if args.first_call:
        return first_call_main(repeats)
    if args.scaling:
        if min(args.layers) < 1:
            parser.error("--layers must be >= 1")
        return scaling_main(args, repeats, slow_repeats, load_at_start)

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
    report_load(load_at_start, watched)

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
