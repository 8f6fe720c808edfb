"""Benchmark: what keeping a fixed mask costs per training step, ours vs torch's two mechanisms.

In one process, for two models,

* the demo CNN (``small_resnet`` width 8, 1-D, MNIST-1D-shaped input 1x40, batch 64, 10 classes);
* ResNet-50 (torchvision layout, 1000 classes, a CPU-sized batch of 8 x 3x224x224 by default);

each pruned once to sparsity 0.9 with global magnitude masks (``sparsetrain.prune(model, 0.9,
method="gp")``), it times one full training step -- ``zero_grad``, forward, cross-entropy,
backward, SGD step (lr 0.01, momentum 0.9, weight decay 1e-4) -- plus each method's masking:

1. **dense** -- no masking at all (the reference);
2. **ours** -- ``Sparsifier.step(optimizer)`` right after ``optimizer.step()``: an in-place
   ``torch._foreach_mul_`` of the weights by the bool masks, and of the same-shaped optimizer
   state (the momentum buffers) by the masks;
3. **torch prune** -- ``torch.nn.utils.prune.custom_from_mask(module, "weight", mask)`` on every
   pruned module: a forward pre-hook recomputes ``weight = weight_orig * weight_mask`` (a float32
   mask buffer) on every forward, and autograd carries the product backwards;
4. **torch.ao.pruning** -- ``BaseSparsifier.prepare`` (a subclass whose ``update_mask`` does
   nothing, i.e. a fixed mask) registers ``torch.ao.pruning.sparsifier.utils.FakeSparsity`` with
   ``torch.nn.utils.parametrize`` on every pruned weight; its float32 mask (``ones_like(weight)``,
   as ``prepare`` makes it) is then set to our mask. Every access of ``module.weight`` computes
   ``mask * original``. ``sparsifier.step()`` is not called: it would only run the no-op
   ``update_mask``; a fixed mask needs nothing after ``prepare``.

Fairness: the four models are deep copies of one pruned model (same weights, same masks), and
every method sees the same batches in the same order. Measurements are interleaved: each round
times one step of every method, in an order rotated from round to round, so a slow drift of the
machine affects all methods alike; the garbage collector runs between timed calls, outside them
(``bench/_measure.py``). Every round also times ``Sparsifier.step`` alone (and its two halves,
``MaskSet.apply_`` and ``MaskSet.mask_optimizer_state_``) on ours' model and optimizer.

Overheads are reported two ways: from the medians (median method step / median dense step - 1)
and as the median of the per-round paired differences (method step - dense step of the same round,
divided by the median dense step), with a bootstrap 95 % interval of that median; the latter is the
noise level the targets are judged against. ``Sparsifier.step`` alone, as a fraction of a dense
step, measures our overhead directly (it is the only difference between ours and dense).

Checks, after the warm-up rounds and again at the end: for every masked method the effective
weights (ours: the parameter; torch prune: ``module.weight``; torch.ao: the parametrized
``module.weight``) are exactly zero wherever our masks are False, and the three masked methods'
effective weights agree with each other (they see identical batches and do the same arithmetic);
for dense, the number of pruned positions that training has revived is printed. A failed check
makes the script exit with status 1.

Targets (the issue "baselines and benchmarks"): our fixed-mask overhead at most 3 % of a dense
step, and below both peers' overhead.

Usage: ``.venv/bin/python bench/overhead.py [--quick] [--repeats N] [--demo-repeats N]``
(``--repeats``: timed rounds for ResNet-50, default 7; ``--demo-repeats``: for the demo CNN,
default 200; ``--quick``: 30 demo rounds, 3 ResNet-50 rounds at batch 4 and 112x112).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.ao.pruning import BaseSparsifier
from torch.nn.utils import parametrize, prune

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, median_time  # noqa: E402

import sparsetrain  # noqa: E402
from sparsetrain.models.registry import build_model  # noqa: E402
from sparsetrain.sparsity import MaskSet, Sparsifier, select_targets  # noqa: E402

METHODS = ("dense", "ours", "torch prune", "torch.ao.pruning")
PEERS = ("torch prune", "torch.ao.pruning")
PARTS = ("Sparsifier.step alone", "MaskSet.apply_", "MaskSet.mask_optimizer_state_")
TARGET_OVERHEAD = 0.03
N_BATCHES = 4


class FixedMaskSparsifier(BaseSparsifier):
    """torch.ao's sparsifier with a mask that never changes: ``prepare`` does all the work."""

    def update_mask(self, module: nn.Module, tensor_name: str, **kwargs) -> None:
        pass


@dataclass
class Setup:
    """One method's model, optimizer, what runs after ``optimizer.step()``, and its effective weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: Callable[[torch.optim.Optimizer], None] | None
    effective: Callable[[], list[torch.Tensor]]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def module_of(model: nn.Module, target_name: str) -> tuple[nn.Module, str]:
    module_name, _, tensor_name = target_name.rpartition(".")
    return model.get_submodule(module_name), tensor_name


def make_setups(base: nn.Module, masks: MaskSet) -> dict[str, Setup]:
    names = masks.names
    setups = {}

    model = copy.deepcopy(base)
    targets = select_targets(model)
    setups["dense"] = Setup(model, sgd(model), None, lambda targets=targets: [t.param.detach() for t in targets])

    model = copy.deepcopy(base)
    targets = select_targets(model)
    sparsifier = Sparsifier(model, MaskSet(targets, [m.clone() for m in masks.masks]))
    setups["ours"] = Setup(model, sgd(model), sparsifier.step,
                           lambda targets=targets: [t.param.detach() for t in targets])
    setups["ours"].sparsifier = sparsifier  # type: ignore[attr-defined]

    model = copy.deepcopy(base)
    modules = [module_of(model, name) for name in names]
    for (module, tensor_name), mask in zip(modules, masks.masks):
        prune.custom_from_mask(module, tensor_name, mask.clone())
    setups["torch prune"] = Setup(model, sgd(model), None,
                                  lambda modules=modules: [getattr(m, n).detach() for m, n in modules])
    # ``module.weight`` is what the last forward used (set by the pre-hook before the last optimizer
    # step); ``weight_orig * weight_mask`` is what the next forward will use. Both are checked.
    setups["torch prune (next forward)"] = Setup(
        model, setups["torch prune"].optimizer, None,
        lambda modules=modules: [(getattr(m, n + "_orig") * getattr(m, n + "_mask")).detach() for m, n in modules])

    model = copy.deepcopy(base)
    ao = FixedMaskSparsifier(defaults={})
    ao.prepare(model, [{"tensor_fqn": name} for name in names])
    modules = [module_of(model, name) for name in names]
    with torch.no_grad():
        for (module, tensor_name), mask in zip(modules, masks.masks):
            fake = getattr(module.parametrizations, tensor_name)[0]
            fake.mask.copy_(mask)  # same tensor object as ao.state[fqn]["mask"]
    assert all(parametrize.is_parametrized(m, n) for m, n in modules)
    setups["torch.ao.pruning"] = Setup(model, sgd(model), None,
                                       lambda modules=modules: [getattr(m, n).detach() for m, n in modules])
    return setups


def training_step(setup: Setup, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    setup.optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(setup.model(inputs), labels).backward()
    setup.optimizer.step()
    if setup.after_step is not None:
        setup.after_step(setup.optimizer)


def check(setups: dict[str, Setup], masks: MaskSet, when: str) -> list[str]:
    """Print the mask checks; return the failures."""
    failures = []
    pruned = [~m for m in masks.masks]
    reference = setups["ours"].effective()
    for method, setup in setups.items():
        with torch.no_grad():
            weights = setup.effective()
            nonzero_pruned = sum(int((w[p] != 0).sum()) for w, p in zip(weights, pruned))
            differ = max(float((w - r).abs().max()) for w, r in zip(weights, reference))
        if method == "dense":
            print(f"- {when}, dense: {nonzero_pruned:,} of {masks.pruned_count():,} pruned positions are non-zero "
                  "(no masking)")
            continue
        ok = nonzero_pruned == 0
        what = "module.weight (as its last forward used it)" if method == "torch prune" else "effective weights"
        agree = "" if method in ("ours", "torch prune") else f"; max |difference| from ours: {differ:.2e}"
        print(f"- {when}, {method}: {what} zero wherever the masks are False: {'yes' if ok else 'NO'} "
              f"({nonzero_pruned:,} non-zero){agree}")
        if not ok:
            failures.append(f"{method} ({when})")
    return failures


def median_ci(values: Sequence[float], rng: np.random.Generator, resamples: int = 2000) -> tuple[float, float]:
    """Bootstrap 95 % interval of the median."""
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


@dataclass
class Result:
    label: str
    rounds: int
    times: dict[str, list[float]]
    failures: list[str]


def bench_model(label: str, model: nn.Module, input_shape: tuple[int, ...], batch: int, classes: int,
                sparsity: float, rounds: int, warmup: int) -> Result:
    torch.manual_seed(0)
    masks = sparsetrain.prune(model, sparsity, method="gp")
    setups = make_setups(model, masks)
    batches = [(torch.randn(batch, *input_shape), torch.randint(0, classes, (batch,))) for _ in range(N_BATCHES)]
    ours = setups["ours"]
    parts = {
        "Sparsifier.step alone": lambda: ours.sparsifier.step(ours.optimizer),  # type: ignore[attr-defined]
        "MaskSet.apply_": ours.sparsifier.masks.apply_,  # type: ignore[attr-defined]
        "MaskSet.mask_optimizer_state_": lambda: ours.sparsifier.masks.mask_optimizer_state_(ours.optimizer),  # type: ignore[attr-defined]
    }
    entries: list[tuple[str, Callable[[int], None]]] = [
        (m, lambda r, m=m: training_step(setups[m], *batches[r % N_BATCHES])) for m in METHODS
    ] + [(p, lambda r, fn=fn: fn()) for p, fn in parts.items()]

    print(f"\n### {label}\n")
    print(f"{len(masks)} target tensors, {masks.numel():,} weights, {masks.pruned_count():,} pruned "
          f"(GP, sparsity {masks.sparsity():.4f}); input {batch}x{'x'.join(map(str, input_shape))}; "
          f"{warmup} warm-up + {rounds} timed rounds, each one call of every entry in rotated order\n")
    times: dict[str, list[float]] = {name: [] for name, _ in entries}
    failures = []
    for r in range(warmup + rounds):
        if r == warmup:
            failures += check(setups, masks, f"after {warmup} warm-up steps")
        shift = r % len(entries)
        for name, fn in entries[shift:] + entries[:shift]:
            timing = median_time(fn, 1, 0, lambda r=r: (r,))
            if r >= warmup:
                times[name].append(timing.median_s)
    failures += check(setups, masks, f"after {warmup + rounds} steps")
    return Result(label, rounds, times, failures)


def report(result: Result, rng: np.random.Generator) -> list[tuple[str, bool | None, str]]:
    times = result.times
    dense = times["dense"]
    dense_median = statistics.median(dense)
    d_q1, d_q3 = quartiles(dense)
    overhead = {}
    paired = {}
    paired_ci = {}
    for method in METHODS:
        overhead[method] = statistics.median(times[method]) / dense_median - 1
        diffs = [(t - d) / dense_median for t, d in zip(times[method], dense)]
        paired[method] = statistics.median(diffs)
        paired_ci[method] = median_ci(diffs, rng)
    ours_alone = [t / dense_median for t in times["Sparsifier.step alone"]]
    alone = statistics.median(ours_alone)
    alone_ci = median_ci(ours_alone, rng)

    print("\n| method | median step (ms) | quartiles (ms) | overhead vs dense (medians) "
          "| paired overhead, median [95% CI] | our overhead ÷ this one's |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in METHODS:
        q1, q3 = quartiles(times[method])
        if method == "dense":
            row = "(reference) | — | —"
        else:
            lo, hi = paired_ci[method]
            ratio = "—" if method == "ours" else (
                f"{overhead['ours'] / overhead[method]:.3f}" if overhead[method] > 0 else "n/a (peer ≤ 0)")
            row = f"{overhead[method]:+.2%} | {paired[method]:+.2%} [{lo:+.2%}, {hi:+.2%}] | {ratio}"
        print(f"| {method} | {statistics.median(times[method]) * 1e3:.2f} | {q1 * 1e3:.2f}–{q3 * 1e3:.2f} | {row} |")
    print("\n| ours, timed alone | median (ms) | × median dense step |")
    print("|---|---:|---:|")
    for part in PARTS:
        print(f"| {part} | {statistics.median(times[part]) * 1e3:.3f} | {statistics.median(times[part]) / dense_median:.2%} |")
    print(f"\nNoise: dense steps' interquartile range {d_q1 * 1e3:.2f}–{d_q3 * 1e3:.2f} ms "
          f"= {(d_q3 - d_q1) / dense_median:.2%} of the median; Sparsifier.step alone "
          f"{alone:.2%} of a dense step [95% CI {alone_ci[0]:.2%}, {alone_ci[1]:.2%}].")
    if overhead["ours"] > 0:
        print("Our overhead ÷ peers' (Sparsifier.step alone as ours): "
              + ", ".join(f"{p} {alone / overhead[p]:.3f}" for p in PEERS if overhead[p] > 0))

    verdicts = []
    lo, hi = paired_ci["ours"]
    if alone <= TARGET_OVERHEAD and hi <= TARGET_OVERHEAD:
        verdict, how = True, "met"
    elif alone > TARGET_OVERHEAD and lo > TARGET_OVERHEAD:
        verdict, how = False, "NOT met"
    else:
        verdict, how = None, "undecided within timing noise"
    verdicts.append((f"our fixed-mask overhead <= 3% of a dense step ({result.label})", verdict,
                     f"{how}: Sparsifier.step alone {alone:.2%} [{alone_ci[0]:.2%}, {alone_ci[1]:.2%}]; "
                     f"end to end {paired['ours']:+.2%} [{lo:+.2%}, {hi:+.2%}] (dense IQR "
                     f"{(d_q3 - d_q1) / dense_median:.2%})"))
    for peer in PEERS:
        diffs = [(o - p) / dense_median for o, p in zip(times["ours"], times[peer])]
        d_lo, d_hi = median_ci(diffs, rng)
        med = statistics.median(diffs)
        if d_hi < 0:
            verdict, how = True, "met"
        elif d_lo > 0:
            verdict, how = False, "NOT met"
        else:
            verdict, how = None, "undecided within timing noise"
        verdicts.append((f"below {peer} ({result.label})", verdict,
                         f"{how}: ours − {peer}, paired per round, {med:+.2%} of a dense step "
                         f"[95% CI {d_lo:+.2%}, {d_hi:+.2%}]; overheads {overhead['ours']:+.2%} vs {overhead[peer]:+.2%}"))
    return verdicts


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch.get_num_threads()={torch.get_num_threads()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds for ResNet-50 (default 7)")
    parser.add_argument("--demo-repeats", type=int, default=200, help="timed rounds for the demo CNN (default 200)")
    parser.add_argument("--resnet50-batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="30 demo rounds; ResNet-50: 3 rounds at batch 4 and 112x112")
    args = parser.parse_args(argv)
    demo_rounds = 30 if args.quick else args.demo_repeats
    resnet_rounds = 3 if args.quick else args.repeats
    side = 112 if args.quick else 224
    batch = 4 if args.quick else args.resnet50_batch
    rng = np.random.default_rng(0)

    print(machine_line())
    print(f"Load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    verdicts = []
    failures = []
    shares = []
    with OtherProcesses() as others:
        small = build_model("small_resnet", input_shape=(1, 40), num_classes=10, width=8)
        result = bench_model("Demo CNN (small_resnet width 8, MNIST-1D)", small, (1, 40), 64, 10,
                             args.sparsity, demo_rounds, warmup=10)
    shares.append(others.share)
    verdicts += report(result, rng)
    failures += result.failures
    print(f"\nOther processes used {'unknown' if others.share is None else f'{others.share:.1%}'} of the CPUs "
          "during the demo CNN's measurements.")
    with OtherProcesses() as others:
        resnet = build_model("resnet50", input_shape=(3, side, side), num_classes=1000)
        result = bench_model(f"ResNet-50 ({batch}x3x{side}x{side})", resnet, (3, side, side), batch, 1000,
                             args.sparsity, resnet_rounds, warmup=2)
    shares.append(others.share)
    verdicts += report(result, rng)
    failures += result.failures
    print(f"\nOther processes used {'unknown' if others.share is None else f'{others.share:.1%}'} of the CPUs "
          "during ResNet-50's measurements.")

    print("\n### Targets\n")
    for name, verdict, detail in verdicts:
        mark = {True: "met", False: "NOT met", None: "within noise"}[verdict]
        print(f"- {name}: **{mark}** — {detail}")
    if any(s is not None and s > 0.05 for s in shares):
        print("\nWARNING: other processes used more than 5% of the CPUs; rerun on an idle machine.")
    if failures:
        print("\nMASK CHECK FAILED: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
