"""Benchmark: accuracy of every method at several sparsities, several seeds, on the embedded data.

Methods (all through the same runner and configs): dense; one-shot random pruning (the sanity
floor) and one-shot layer-wise magnitude pruning, GP and GPMT, each after dense training and
followed by fine-tuning; GMP (gradual, cubic); SET and RigL (sparse from a random init, ERK);
S-GaP (kappa 4, non-uniform) and P-GaP (kappa 4, uniform).

Budgets:
* ``equal``: every method trains the same number of epochs E (P-GaP's workers count one by one,
  so kappa workers x T epochs cost kappa * T);
* ``recommended`` (full mode only): each method's own kind of schedule, about twice as long: the
  one-shot methods fine-tune as long as they trained dense (as the GPMT recipe does), GMP prunes
  over 75% of 2E, RigL and SET train 2E (RigL's paper finds longer training helps most), S-GaP
  runs 9 steps (R = 2) and P-GaP 2 rounds, each with a fine-tune of E.

For each (method, sparsity) it reports the mean ± std of the final test top-1 over the seeds, the
gap to dense, the training cost in dense-equivalent FLOPs relative to the dense run (targets only,
sparse phases counted at their density: see ``sparsetrain.runner.flops``), and the mean wall
time. GPMT's MT is chosen per sparsity so that the floor is feasible on this 7k-weight model: the
floor is half the average number of weights a layer keeps (MT 1% at 0.8 and 0.9 would make 0.95
and 0.98 unreachable). It writes the markdown table to stdout and a PNG of accuracy vs sparsity.

``--quick`` (equal budget, E = 10, 3 seeds, 4 sparsities) takes about 10 minutes on 2 cores;
the full mode (both budgets, E = 20, 5 seeds) takes a few hours and says so before starting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path("runs/bench_quality")
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
METHODS = ("dense", "random", "magnitude", "gmp", "set", "rigl", "gp", "gpmt", "sgap", "pgap")
TARGET_WEIGHTS = 7_128  # small_resnet width 8 on MNIST-1D: 10 target tensors
TARGET_LAYERS = 10


@dataclass(frozen=True)
class Job:
    method: str
    sparsity: float
    seed: int
    budget: str
    epochs: int
    out: str


def gpmt_min_threshold(sparsity: float) -> float:
    """MT (percent) whose floor is half the average number of weights a layer keeps at ``sparsity``."""
    floor = max(1, math.floor((1 - sparsity) * TARGET_WEIGHTS / (2 * TARGET_LAYERS)))
    return round(100 * floor / TARGET_WEIGHTS + 1e-9, 6)


def stages(method: str, s: float, epochs: int, budget: str) -> list[dict]:
    """The stage list of one method under one budget (``epochs`` = E)."""
    half = epochs // 2
    long = budget == "recommended"
    if method == "dense":
        return [{"kind": "dense", "epochs": epochs * (2 if long else 1)}]
    if method in ("random", "magnitude", "gp", "gpmt"):
        prune = {"kind": "prune", "sparsity": s,
                 "method": {"random": "random", "magnitude": "uniform", "gp": "gp", "gpmt": "gpmt"}[method]}
        if method == "gpmt":
            prune["min_threshold"] = gpmt_min_threshold(s)
        dense, finetune = (epochs, epochs) if long else (half, epochs - half)
        return [{"kind": "dense", "epochs": dense}, prune,
                {"kind": "finetune", "epochs": finetune, "optimizer": {"lr": 0.02}}]
    if method == "gmp":
        return [{"kind": "gmp", "sparsity": s, "epochs": epochs * (2 if long else 1)}]
    if method in ("set", "rigl"):
        return [{"kind": method, "sparsity": s, "epochs": epochs * (2 if long else 1), "update_every": 50}]
    partitions = {"scheme": "layers", "kappa": 4}
    if method == "sgap":  # (1 + 4R) T + F
        rounds, step, finetune = (2, 2, epochs) if long else (1, max(1, half // 5), epochs - 5 * max(1, half // 5))
        return [{"kind": "sgap", "sparsity": s, "partitions": partitions, "distribution": "non-uniform",
                 "epochs_per_step": step, "rounds": rounds, "finetune_epochs": finetune}]
    if method == "pgap":  # 4 R T + F worker-epochs
        rounds, step, finetune = (2, 2, epochs) if long else (1, max(1, half // 4), epochs - 4 * max(1, half // 4))
        return [{"kind": "pgap", "sparsity": s, "partitions": partitions, "distribution": "uniform",
                 "epochs_per_step": step, "rounds": rounds, "finetune_epochs": finetune}]
    raise ValueError(f"unknown method {method!r}")


def run_job(job: Job) -> dict:
    """Run one configuration in this (worker) process and return its summary."""
    import torch

    from sparsetrain.config import parse_config
    from sparsetrain.runner.train import run

    torch.set_num_threads(1)
    name = f"{job.budget}_E{job.epochs}_{job.method}_{job.sparsity}_seed{job.seed}"
    run_dir = Path(job.out) / name
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():  # a rerun reuses finished runs
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        config = parse_config({
            "name": name, "seed": job.seed, "threads": 1, "output_dir": str(run_dir),
            "task": {"dataset": {"name": "mnist1d"}, "model": {"name": "small_resnet", "options": {"width": 8}}},
            "data": {"batch_size": 64},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "training": {"progress": False, "checkpoint_every": 1000, "eval_every": 1000},
            "stages": stages(job.method, job.sparsity, job.epochs, job.budget),
        })
        run(config, log=lambda line: None)
    summary = json.loads(summary_file.read_text())
    final = summary["final"]  # test/top1 since the task protocol; test_top1 in runs of earlier versions
    return {"job": job, "top1": final.get("test/top1", final.get("test_top1")), "sparsity": summary["sparsity"],
            "flops": summary["train_flops"], "seconds": summary["wall_time_s"]}


def aggregate(results: list[dict], budget: str, sparsities: tuple[float, ...]) -> list[dict]:
    dense = {r["job"].seed: r for r in results if r["job"].method == "dense" and r["job"].budget == budget}
    dense_top1 = statistics.mean(r["top1"] for r in dense.values())
    dense_flops = statistics.mean(r["flops"] for r in dense.values())
    rows = []
    for method in METHODS:
        for s in ([0.0] if method == "dense" else sparsities):
            group = [r for r in results if r["job"].method == method and r["job"].budget == budget
                     and (method == "dense" or r["job"].sparsity == s)]
            if not group:
                continue
            top1 = [r["top1"] for r in group]
            mean = statistics.mean(top1)
            rows.append({
                "method": method, "sparsity": s, "seeds": len(group), "mean": mean,
                "std": statistics.stdev(top1) if len(top1) > 1 else 0.0, "gap": mean - dense_top1,
                "flops": statistics.mean(r["flops"] for r in group) / dense_flops,
                "seconds": statistics.mean(r["seconds"] for r in group),
                "measured": statistics.mean(r["sparsity"] for r in group),
            })
    return rows


def markdown(rows: list[dict], budget: str, epochs: int) -> str:
    lines = [f"Budget `{budget}` (E = {epochs}):", "",
             "| method | sparsity | seeds | top-1 mean ± std (%) | gap to dense (points) | training FLOPs (× dense) | wall time per run (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["sparsity"], METHODS.index(r["method"]))):
        lines.append(f"| {r['method']} | {r['sparsity']:g} | {r['seeds']} | {r['mean']:.2f} ± {r['std']:.2f} | "
                     f"{r['gap']:+.2f} | {r['flops']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def plot(rows_by_budget: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_budget), figsize=(7 * len(rows_by_budget), 5), squeeze=False)
    for ax, (budget, rows) in zip(axes[0], rows_by_budget.items()):
        dense = next(r for r in rows if r["method"] == "dense")
        ax.axhline(dense["mean"], color="black", linestyle="--", label="dense")
        for method in METHODS[1:]:
            points = sorted((r["sparsity"], r["mean"], r["std"]) for r in rows if r["method"] == method)
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"MNIST-1D, small_resnet width 8, budget: {budget}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="equal budget, E=10, 3 seeds (about 10 minutes)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot", type=Path, default=Path("docs/quality.png"))
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.quick else 5)
    epochs = args.epochs or (10 if args.quick else 20)
    if epochs < 10:
        parser.error(f"--epochs={epochs} must be >= 10 (S-GaP needs 5 steps and a fine-tune within the budget)")
    sparsities = tuple(args.sparsities)
    budgets = ["equal"] if args.quick else ["equal", "recommended"]
    jobs = [Job(m, s, seed, b, epochs, str(args.out)) for b in budgets for seed in range(seeds) for m in METHODS
            for s in ([0.0] if m == "dense" else sparsities)]
    estimate = len(jobs) * epochs * 0.45 * (1.6 if len(budgets) > 1 else 1) / max(1, args.jobs)
    print(f"{len(jobs)} runs of about {epochs} epochs; expect about {estimate / 60:.0f} minutes "
          f"with {args.jobs} parallel run(s)" + ("" if args.quick else " (full mode: this takes a while)"),
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_job, jobs))
    rows_by_budget = {b: aggregate(results, b, sparsities) for b in budgets}
    print(f"torch threads per run: 1; {args.jobs} runs in parallel; {os.cpu_count()} CPUs; "
          f"total wall time {time.perf_counter() - started:.0f} s\n")
    for budget, rows in rows_by_budget.items():
        print(markdown(rows, budget, epochs))
        print()
    plot(rows_by_budget, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
