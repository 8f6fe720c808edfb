"""Benchmark: S-GaP and P-GaP vs prune-from-dense, GMP and RigL at equal epochs and FLOPs; GaP ablations.

Usage: ``.venv/bin/python bench/quality.py --quick`` (about 15 minutes on 2 cores with the default
``--jobs 2``: 3 seeds, sparsity 0.9, every ablation but T = 4) prints markdown tables and writes
``docs/quality.png``; without ``--quick`` (sparsities 0.8, 0.9, 0.95, every ablation, 3 seeds) it
takes about 40 minutes and says so before starting. ``--only comparisons`` or ``--only ablations``
runs one part, ``--factors kappa,T`` a subset of the ablations, ``--seeds 5`` (or ``--seeds 0,3,4``)
other seeds, ``--markdown PATH`` also writes the tables to a file, and ``--dry-run`` prints the runs
and the time estimate without training. Every run lives in ``--out`` (default runs/bench_quality)
under a name that hashes its whole config; a run whose summary.json exists is reused, so an
interrupted bench resumes, and a run two parts share (GP at E epochs, the ablations' base) trains once.

Setting (the demo's, ``src/sparsetrain/configs/demo``): MNIST-1D (4,000 train / 1,000 test
signals), ``small_resnet`` width 8, batch 64, SGD lr 0.1 Nesterov, weight decay 5e-4, one cosine LR
schedule per iteration per training stage, ``threads: 1`` (one torch thread per run; results depend
on the thread count), and ``targets: {dense_first: true, dense_last: true}`` in every run: the stem
conv and the classifier stay dense for every method (the fairness rule of issue 11).

Methods at the equal-epoch budget E (default 34; E = 34 gives exactly the demo's configs):
* dense: E epochs;
* GP and GPMT (prune from dense): round(26E/34) dense epochs, one-shot global magnitude prune (GPMT
  with the per-layer floor MT below), then the rest in the fine-tuning stage every sparse row of the
  demo shares (a fresh optimizer and cosine from lr 0.1; 26 + 8 at E = 34);
* GMP: one gmp stage of E epochs (cubic, pruning ends at 75% of it);
* RigL: one rigl stage of E epochs from ERK random masks, drop-and-grow every 50 steps;
* S-GaP (uniform, kappa 4 ``layers``, R = 3, ``reset_optimizer: false``: one cosine from lr 0.05 over
  the steps): 13 steps of T = max(1, round(2E/34)) epochs, then the shared fine-tuning stage of
  F = E - 13T epochs (2 and 8 at 34);
* P-GaP (uniform, kappa 4 ``layers``, R = 3, workers at lr 0.05): 4 workers x 3 rounds x T epochs,
  counted one by one, then the shared fine-tuning stage of F = E - 12T epochs (2 and 10 at 34).
Optional (``--methods``): random and magnitude (one-shot, like GP), SET, S-GaP non-uniform and ERK.
GPMT's MT is 1% (the demo's) where the floors fit in the budget (8 target layers x floor <= weights
kept), else the MT whose floor is half the average number of weights a layer keeps (0.95: 0.31%).

Equal training FLOPs (the second table): each method's epochs are scaled so that its training FLOPs
match GP's at the same sparsity trained E epochs: epochs = round(E * F_GP / F_method), where F is
summary.json ``train_flops`` (dense-equivalent FLOPs of the targets, sparse phases counted at their
density, P-GaP's workers summed; ``sparsetrain.runner.flops``) averaged over the seeds of the
method's own E-epoch runs, and the method keeps its stage proportions at the new length (the
formulas above). GP itself (and GPMT where its FLOPs equal GP's) keeps its E-epoch runs; dense is
trained round(E * F_GP / F_dense) epochs, a dense row per sparsity; sparse-from-scratch methods
train longer. The FLOPs column shows how closely the scaled runs match (integer epochs).

Ablations (S-GaP uniform at 0.9, one factor at a time from the base config, which is the demo's
S-GaP: kappa 4 ``layers``, T = 2, R = 3, F = 8, cyclic order, no optimizer reset, random init;
34 epochs): kappa 2, 4 and the ``blocks`` scheme (kappa 3: one residual block per partition on this
model), T = 1, 2, 4 with F = 4T, R = 1, 3, grow order cyclic vs random, reset_optimizer false vs
true, init random vs magnitude. The epochs change with kappa, T and R (the table says how many).

For every row: mean ± sample std of the final test top-1 over the seeds, the per-seed values, the
gap to dense (E epochs), the training FLOPs relative to dense at E epochs (ablations: relative to
the base), and the mean wall time per run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/bench_quality")
DEFAULT_EPOCHS = 34  # E: the demo's budget
FULL_SPARSITIES = (0.8, 0.9, 0.95)
QUICK_SPARSITIES = (0.9,)
DEFAULT_SEEDS = 3
COMPARED = ("dense", "gp", "gpmt", "gmp", "rigl", "sgap", "pgap")
OPTIONAL = ("random", "magnitude", "set", "sgap-nu", "sgap-erk")
METHODS = ("dense", "random", "magnitude", "gp", "gpmt", "gmp", "set", "rigl", "sgap", "sgap-nu", "sgap-erk", "pgap")
LABELS = {"dense": "dense", "random": "random (one-shot)", "magnitude": "layer-wise magnitude (one-shot)",
          "gp": "GP", "gpmt": "GPMT", "gmp": "GMP", "set": "SET", "rigl": "RigL", "sgap": "S-GaP uniform",
          "sgap-nu": "S-GaP non-uniform", "sgap-erk": "S-GaP ERK", "pgap": "P-GaP uniform"}
SGAP_DISTRIBUTIONS = {"sgap": "uniform", "sgap-nu": "non-uniform", "sgap-erk": "erk"}
ONESHOT = {"random": "random", "magnitude": "uniform", "gp": "gp", "gpmt": "gpmt"}

# The demo's regime at E = 34 (src/sparsetrain/configs/demo/*.yaml).
BASE_EPOCHS = 34
ONESHOT_DENSE = 26  # then 8 epochs of the shared fine-tuning stage
GAP_LR = 0.05  # peak LR of the GaP steps (the fine-tuning stage after them uses the run's 0.1)
GAP_KAPPA, GAP_ROUNDS, GAP_STEP = 4, 3, 2  # S-GaP: 13 steps x 2 + F 8; P-GaP: 12 worker-steps x 2 + F 10
DST_UPDATE_EVERY = 50
TARGET_WEIGHTS = 6_784  # small_resnet width 8 on MNIST-1D, stem and classifier dense: 8 target tensors
TARGET_LAYERS = 8
GPMT_MT = 1.0

ABLATION_SPARSITY = 0.9
ABLATION_BASE = {"scheme": "layers", "kappa": 4, "T": 2, "R": 3, "F": 8, "order": "cyclic", "reset": False,
                 "init": "random"}
FACTORS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    # factor: (column title, [(value shown, change from the base)]); the base is the entry with no change
    "kappa": ("kappa (partitions)", [("2 (layers)", {"kappa": 2}), ("4 (layers)", {}),
                                     ("3 (blocks: one residual block each)", {"scheme": "blocks", "kappa": 3})]),
    "T": ("T (epochs per step), F = 4T", [("1", {"T": 1, "F": 4}), ("2", {}), ("4", {"T": 4, "F": 16})]),
    "R": ("R (rounds)", [("1", {"R": 1}), ("3", {})]),
    "order": ("grow order", [("cyclic", {}), ("random", {"order": "random"})]),
    "reset": ("optimizer reset at every step", [("false", {}), ("true", {"reset": True})]),
    "init": ("initial masks", [("random", {}), ("magnitude", {"init": "magnitude"})]),
}
QUICK_SKIP = {("T", "4")}  # the 68-epoch run: left out of --quick to fit its 15 minutes

# For the up-front estimate only (the runs use the measured values): training FLOPs at E = 34 epochs
# relative to dense, measured on seed 0 (a method or sparsity not listed: 0.3), and the seconds per
# epoch (63 steps) and per run of one single-threaded run with another run on the other core
# (the demo's 34-epoch runs took 14-23 s each with 2 in parallel).
FLOPS_RATIO = {
    "gp": {0.8: 0.826, 0.9: 0.80, 0.95: 0.784}, "gpmt": {0.8: 0.826, 0.9: 0.80, 0.95: 0.784},
    "random": {0.8: 0.81, 0.9: 0.79, 0.95: 0.78}, "magnitude": {0.8: 0.81, 0.9: 0.79, 0.95: 0.78},
    "gmp": {0.8: 0.359, 0.9: 0.279, 0.95: 0.239}, "rigl": {0.8: 0.248, 0.9: 0.124, 0.95: 0.062},
    "set": {0.8: 0.248, 0.9: 0.124, 0.95: 0.062}, "sgap": {0.8: 0.349, 0.9: 0.268, 0.95: 0.227},
    "sgap-nu": {0.8: 0.352, 0.9: 0.271, 0.95: 0.23}, "pgap": {0.8: 0.341, 0.9: 0.259, 0.95: 0.218},
}
SECONDS_PER_EPOCH = 0.55
SECONDS_PER_RUN = 3.0
SMOKE_SAMPLES = 500  # --smoke: 400 train / 100 test signals instead of 5,000


# ---- configs -------------------------------------------------------------------------------------


def gpmt_min_threshold(sparsity: float) -> float:
    """MT (percent of target weights): 1% where the floors fit, else a floor of half a layer's average keep."""
    kept = round((1 - sparsity) * TARGET_WEIGHTS)
    if TARGET_LAYERS * math.floor(TARGET_WEIGHTS * GPMT_MT / 100) <= kept:
        return GPMT_MT
    floor = max(1, math.floor(kept / (2 * TARGET_LAYERS)))
    return round(100 * floor / TARGET_WEIGHTS + 1e-9, 6)


def gap_step_epochs(epochs: int, steps: int) -> tuple[int, int]:
    """(T, F) for ``steps`` GaP steps in ``epochs`` epochs: T = max(1, round(2E/34)), F = E - steps*T >= 0."""
    step = max(1, round(epochs * GAP_STEP / BASE_EPOCHS))
    while step > 1 and steps * step > epochs:
        step -= 1
    if steps * step > epochs:
        raise ValueError(f"{epochs} epochs cannot hold {steps} GaP steps of one epoch")
    return step, epochs - steps * step


def finetune_stage(epochs: int) -> dict:
    """The fine-tuning stage every sparse row shares: masks fixed, a fresh optimizer and cosine at the run's LR."""
    return {"kind": "finetune", "epochs": epochs}


def sgap_stages(sparsity: float, distribution: str = "uniform", *, scheme: str = "layers", kappa: int = GAP_KAPPA,
                T: int, R: int = GAP_ROUNDS, F: int, order: str = "cyclic", reset: bool = False,
                init: str = "random") -> list[dict]:
    """One S-GaP stage and the shared fine-tuning stage of F epochs; the comparisons and the ablations both
    build theirs here (so their shared run is one)."""
    return [{"kind": "sgap", "sparsity": sparsity, "partitions": {"scheme": scheme, "kappa": kappa},
             "distribution": distribution, "epochs_per_step": T, "rounds": R, "finetune_epochs": 0,
             "grow_order": order, "reset_optimizer": reset, "init": init, "optimizer": {"lr": GAP_LR}},
            finetune_stage(F)]


def stages(method: str, s: float, epochs: int) -> list[dict]:
    """The stage list of ``method`` at sparsity ``s`` trained ``epochs`` epochs (the demo's proportions)."""
    if method == "dense":
        return [{"kind": "dense", "epochs": epochs}]
    if method in ONESHOT:
        dense = round(epochs * ONESHOT_DENSE / BASE_EPOCHS)
        if not 1 <= dense < epochs:
            raise ValueError(f"{method}: {epochs} epochs leave no dense or no fine-tuning epoch")
        prune = {"kind": "prune", "sparsity": s, "method": ONESHOT[method]}
        if method == "gpmt":
            prune["min_threshold"] = gpmt_min_threshold(s)
        return [{"kind": "dense", "epochs": dense}, prune, finetune_stage(epochs - dense)]
    if method == "gmp":
        return [{"kind": "gmp", "sparsity": s, "epochs": epochs}]
    if method in ("set", "rigl"):
        return [{"kind": method, "sparsity": s, "epochs": epochs, "update_every": DST_UPDATE_EVERY}]
    if method in SGAP_DISTRIBUTIONS:
        T, F = gap_step_epochs(epochs, 1 + GAP_KAPPA * GAP_ROUNDS)
        return sgap_stages(s, SGAP_DISTRIBUTIONS[method], T=T, F=F)
    if method == "pgap":
        T, F = gap_step_epochs(epochs, GAP_KAPPA * GAP_ROUNDS)
        return [{"kind": "pgap", "sparsity": s, "partitions": {"scheme": "layers", "kappa": GAP_KAPPA},
                 "distribution": "uniform", "epochs_per_step": T, "rounds": GAP_ROUNDS, "finetune_epochs": 0,
                 "optimizer": {"lr": GAP_LR}}, finetune_stage(F)]
    raise ValueError(f"unknown method {method!r}")


def ablation_stages(change: dict[str, Any]) -> tuple[list[dict], int]:
    """The ablation base with ``change`` applied, and its epochs ((1 + kappa R) T + F)."""
    c = ABLATION_BASE | change
    stage_list = sgap_stages(ABLATION_SPARSITY, scheme=c["scheme"], kappa=c["kappa"], T=c["T"], R=c["R"], F=c["F"],
                             order=c["order"], reset=c["reset"], init=c["init"])
    return stage_list, (1 + c["kappa"] * c["R"]) * c["T"] + c["F"]


def base_config(smoke: bool) -> dict:
    dataset: dict[str, Any] = {"name": "mnist1d"}
    if smoke:
        dataset["options"] = {"num_samples": SMOKE_SAMPLES}
    return {
        "threads": 1,
        "task": {"dataset": dataset, "model": {"name": "small_resnet", "options": {"width": 8}}},
        "data": {"batch_size": 64},
        "targets": {"dense_first": True, "dense_last": True},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "lr_schedule": {"kind": "cosine", "unit": "iteration"},
        "training": {"progress": False, "checkpoint_every": 1000, "eval_every": 1000},
    }


# ---- runs and where they are used ----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run: ``key`` is its directory under the output folder."""

    key: str
    config: dict = field(hash=False, compare=False)
    epochs: int = 0


@dataclass(frozen=True)
class Entry:
    """A run's place in a table: ``part`` is equal-epochs, equal-flops or ablation:<factor>."""

    part: str
    method: str
    sparsity: float
    seed: int
    run: Run
    value: str = ""  # the ablation value


def make_run(common: dict, method: str, sparsity: float, stage_list: list[dict], seed: int, epochs: int,
             out: Path) -> Run:
    """The run of ``stage_list``; its directory name hashes the whole config but the seed (and shows the seed)."""
    body = common | {"stages": stage_list}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    tag = f"{method}_{sparsity:g}_{epochs}ep_{digest}_seed{seed}"
    config = body | {"name": tag, "seed": seed, "output_dir": str(out / tag)}
    return Run(tag, config, epochs)


def run_job(run: Run) -> dict:
    """Train ``run`` in this (worker) process, unless its summary exists, and return its result."""
    import torch

    from sparsetrain.config import parse_config
    from sparsetrain.runner.train import run as train

    torch.set_num_threads(1)
    run_dir = Path(run.config["output_dir"])
    if not (run_dir / "summary.json").is_file():
        if run_dir.exists():  # an interrupted run: start it again
            shutil.rmtree(run_dir)
        train(parse_config(run.config), log=lambda line: None)
    return read_result(run)


def read_result(run: Run) -> dict:
    summary = json.loads((Path(run.config["output_dir"]) / "summary.json").read_text())
    final = summary["final"]
    return {"top1": final.get("test/top1", final.get("test_top1")), "sparsity": summary["sparsity"],
            "flops": summary["train_flops"], "seconds": summary["wall_time_s"], "epochs": run.epochs,
            "target_numel": summary.get("target_numel")}


def finished(run: Run) -> bool:
    return (Path(run.config["output_dir"]) / "summary.json").is_file()


def execute(entries: list[Entry], parallel: int, follow_up: Callable[[dict[str, dict]], list[Entry]],
            log: Callable[[str], None]) -> tuple[dict[str, dict], list[str]]:
    """Run every entry's run once (finished ones are read, not rerun) in ``parallel`` worker processes.

    ``follow_up(results)`` returns further entries once the results they depend on exist (the
    equal-FLOPs runs); it is asked again after every finished run. Next to start: equal-epoch runs
    (they unlock the rest), then equal-FLOPs, then ablations, longest first within each.
    """
    results: dict[str, dict] = {}
    failures: list[str] = []
    known: set[str] = set()
    queue: list[tuple[int, Entry]] = []
    order = {"equal-epochs": 0, "equal-flops": 1}

    def add(new: list[Entry]) -> None:
        for entry in new:
            if entry.run.key not in known:
                known.add(entry.run.key)
                queue.append((order.get(entry.part, 2), entry))

    add(entries)
    total = 0
    with ProcessPoolExecutor(max_workers=parallel) as pool:
        running: dict[Any, Run] = {}
        while True:
            progressed = True
            while progressed:  # read finished runs from disk and unlock what they unlock
                progressed = False
                for item in [q for q in queue if finished(q[1].run)]:
                    queue.remove(item)
                    results[item[1].run.key] = read_result(item[1].run)
                    progressed = True
                before = len(known)
                add(follow_up(results))
                progressed = progressed or len(known) > before
            queue.sort(key=lambda q: (q[0], -q[1].run.epochs))
            while len(running) < parallel and queue:
                _, entry = queue.pop(0)
                running[pool.submit(run_job, entry.run)] = entry.run
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                total += 1
                try:
                    results[run.key] = future.result()
                    log(f"[{total}] {run.key}: top-1 {results[run.key]['top1']:.1f}, "
                        f"{results[run.key]['seconds']:.0f} s")
                except Exception as exc:  # noqa: BLE001 - reported at the end; the other runs go on
                    failures.append(f"{run.key}: {type(exc).__name__}: {exc}")
                    log(f"[{total}] {run.key}: FAILED ({type(exc).__name__}: {exc})")
    return results, failures


# ---- the plan --------------------------------------------------------------------------------------


@dataclass
class Plan:
    common: dict
    out: Path
    seeds: list[int]
    sparsities: tuple[float, ...]
    methods: tuple[str, ...]
    epochs: int
    comparisons: bool
    ablations: list[tuple[str, str, dict]]  # (factor, value, change)

    def comparison_entries(self) -> list[Entry]:
        if not self.comparisons:
            return []
        # GP (the equal-FLOPs reference) first, then the methods whose equal-FLOPs runs are longest, all
        # seeds of one before the next: their equal-FLOPs runs can start early, and the bench ends on short runs.
        groups = [("dense", 0.0)] + [(m, s) for s in self.sparsities for m in self.methods if m != "dense"]
        groups.sort(key=lambda g: (g[0] != "gp", FLOPS_RATIO.get(g[0], {}).get(g[1], 0.3 if g[1] else 1.0)))
        entries = []
        for method, s in groups:
            for seed in self.seeds:
                run = make_run(self.common, method, s, stages(method, s, self.epochs), seed, self.epochs, self.out)
                entries.append(Entry("equal-epochs", method, s, seed, run))
        return entries

    def ablation_entries(self) -> list[Entry]:
        entries = []
        for factor, value, change in self.ablations:
            stage_list, epochs = ablation_stages(change)
            for seed in self.seeds:
                run = make_run(self.common, "sgap", ABLATION_SPARSITY, stage_list, seed, epochs, self.out)
                entries.append(Entry(f"ablation:{factor}", "sgap", ABLATION_SPARSITY, seed, run, value))
        return entries

    def flops_epochs(self, method: str, s: float, flops: Callable[[str, float], float | None]) -> int | None:
        """round(E * F_GP(s) / F_method(s)) from the E-epoch runs' mean FLOPs; None until all of them ran."""
        reference, own = flops("gp", s), flops(method, 0.0 if method == "dense" else s)
        if reference is None or own is None:
            return None
        return max(1, round(self.epochs * reference / own))

    def equal_flops_entries(self, flops: Callable[[str, float], float | None]) -> list[Entry]:
        entries = []
        if not self.comparisons:
            return entries
        for s in self.sparsities:
            for method in self.methods:
                epochs = self.flops_epochs(method, s, flops)
                if epochs is None:
                    continue
                for seed in self.seeds:
                    run = make_run(self.common, method, s, stages(method, s, epochs), seed, epochs, self.out)
                    entries.append(Entry("equal-flops", method, s, seed, run))
        return entries

    def mean_flops(self, results: dict[str, dict]) -> Callable[[str, float], float | None]:
        """F(method, s): mean train_flops of the method's E-epoch runs over the seeds (None if one is missing)."""
        by_group: dict[tuple[str, float], list[Entry]] = {}
        for entry in self.comparison_entries():
            by_group.setdefault((entry.method, entry.sparsity), []).append(entry)

        def flops(method: str, s: float) -> float | None:
            group = by_group.get((method, s), [])
            if not group or any(e.run.key not in results for e in group):
                return None
            return statistics.mean(results[e.run.key]["flops"] for e in group)

        return flops

    def predicted_equal_flops(self) -> list[Entry]:
        """The equal-FLOPs entries: from the E-epoch runs if they all finished, else from FLOPS_RATIO."""
        done = {e.run.key: read_result(e.run) for e in self.comparison_entries() if finished(e.run)}
        if len(done) == len({e.run.key for e in self.comparison_entries()}):
            return self.equal_flops_entries(self.mean_flops(done))

        def predicted(method: str, s: float) -> float:
            return 1.0 if method == "dense" else FLOPS_RATIO.get(method, {}).get(s, 0.3)

        return self.equal_flops_entries(predicted)

    def estimate(self) -> tuple[int, int, int, float]:
        """(runs, of which finished, epochs to train, seconds of one slot) for everything this plan trains."""
        entries = self.comparison_entries() + self.ablation_entries() + self.predicted_equal_flops()
        unique = {e.run.key: e.run for e in entries}
        todo = [r for r in unique.values() if not finished(r)]
        scale = (SMOKE_SAMPLES / 5000) if "options" in self.common["task"]["dataset"] else 1.0
        seconds = sum(r.epochs * SECONDS_PER_EPOCH * scale + SECONDS_PER_RUN for r in todo)
        return len(unique), len(unique) - len(todo), sum(r.epochs for r in todo), seconds


# ---- tables and the plot -----------------------------------------------------------------------------


def summarize(group: list[Entry], results: dict[str, dict]) -> dict | None:
    done = sorted((e for e in group if e.run.key in results), key=lambda e: e.seed)
    if not done:
        return None
    top1 = [results[e.run.key]["top1"] for e in done]
    return {"seeds": len(done), "mean": statistics.mean(top1),
            "std": statistics.stdev(top1) if len(top1) > 1 else None,
            "per_seed": ", ".join(f"{t:.1f}" for t in top1),
            "flops": statistics.mean(results[e.run.key]["flops"] for e in done),
            "seconds": statistics.mean(results[e.run.key]["seconds"] for e in done),
            "epochs": sorted({results[e.run.key]["epochs"] for e in done}),
            "measured": statistics.mean(results[e.run.key]["sparsity"] for e in done)}


def mean_std(row: dict) -> str:
    return f"{row['mean']:.2f} ± {row['std']:.2f}" if row["std"] is not None else f"{row['mean']:.2f} (1 seed)"


def comparison_rows(entries: list[Entry], results: dict[str, dict], part: str) -> list[dict]:
    groups: dict[tuple[str, float], list[Entry]] = {}
    for entry in entries:
        if entry.part == part:
            groups.setdefault((entry.method, entry.sparsity), []).append(entry)
    rows = []
    for (method, s), group in groups.items():
        row = summarize(group, results)
        if row:
            rows.append(row | {"method": method, "sparsity": s})
    return sorted(rows, key=lambda r: (r["sparsity"], METHODS.index(r["method"])))


def comparison_markdown(rows: list[dict], part: str, epochs: int, dense: dict | None) -> str:
    if part == "equal-epochs":
        title = (f"Equal epochs: every row trains E = {epochs} epochs (P-GaP's workers counted one by one); "
                 "stem and classifier dense in every row.")
    else:
        title = (f"Equal training FLOPs: each row's epochs are scaled so that its training FLOPs (summary.json "
                 f"`train_flops`, dense-equivalent, targets only) match GP's at the same sparsity and E = {epochs} "
                 f"epochs: epochs = round({epochs} x F_GP / F_method), F the mean over the seeds of the method's own "
                 f"{epochs}-epoch runs, stage proportions kept; dense gets GP's FLOPs too.")
    lines = [title, "",
             ("| method | sparsity | epochs | seeds | top-1 mean ± std (%) | top-1 per seed | gap to dense "
              f"{epochs} ep (points) | training FLOPs (× dense {epochs} ep) | wall time per run (s) |"),
             "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        gap = f"{r['mean'] - dense['mean']:+.2f}" if dense else "—"
        flops = f"{r['flops'] / dense['flops']:.3f}" if dense else "—"
        lines.append(f"| {LABELS[r['method']]} | {r['sparsity']:g} | {'/'.join(map(str, r['epochs']))} | "
                     f"{r['seeds']} | {mean_std(r)} | {r['per_seed']} | {gap} | {flops} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def ablation_markdown(factor: str, entries: list[Entry], results: dict[str, dict]) -> str | None:
    title, values = FACTORS[factor]
    part = f"ablation:{factor}"
    rows = []
    for value, change in values:
        row = summarize([e for e in entries if e.part == part and e.value == value], results)
        if row:
            rows.append((value + (" (base)" if not change else ""), row, not change))
    if not rows:
        return None
    base = next((row for _, row, is_base in rows if is_base), None)
    b = ABLATION_BASE
    lines = [(f"Ablation, {title}: S-GaP uniform at {ABLATION_SPARSITY}, base kappa {b['kappa']} {b['scheme']}, "
              f"T {b['T']}, R {b['R']}, F {b['F']}, {b['order']} order, reset_optimizer {str(b['reset']).lower()}, "
              f"{b['init']} init; one factor changed per row."), "",
             (f"| {title} | epochs | seeds | top-1 mean ± std (%) | top-1 per seed | training FLOPs (× base) | "
              "wall time per run (s) |"),
             "|---|---:|---:|---:|---|---:|---:|"]
    for value, row, _ in rows:
        flops = f"{row['flops'] / base['flops']:.3f}" if base else "—"
        lines.append(f"| {value} | {'/'.join(map(str, row['epochs']))} | {row['seeds']} | {mean_std(row)} | "
                     f"{row['per_seed']} | {flops} | {row['seconds']:.1f} |")
    return "\n".join(lines)


def plot(rows_by_part: dict[str, list[dict]], epochs: int, path: Path, smoke: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"equal-epochs": f"equal epochs (E = {epochs})",
              "equal-flops": f"equal training FLOPs (GP's at E = {epochs})"}
    parts = [p for p in titles if rows_by_part.get(p)]
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 5), squeeze=False)
    for ax, part in zip(axes[0], parts):
        rows = rows_by_part[part]
        dense = sorted((r["sparsity"], r["mean"]) for r in rows if r["method"] == "dense")
        if part == "equal-epochs" and dense:
            ax.axhline(dense[0][1], color="black", linestyle="--", label=f"dense, {epochs} epochs")
        elif dense:
            xs, ys = zip(*dense)
            ax.plot(xs, ys, color="black", linestyle="--", marker="s", label="dense at GP's FLOPs")
        for method in METHODS[1:]:
            points = sorted((r["sparsity"], r["mean"], r["std"] or 0.0) for r in rows if r["method"] == method)
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=LABELS[method])
        ax.set_xlabel("sparsity (of the targets; stem and classifier dense)")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        ax.set_title(f"MNIST-1D{' (smoke)' if smoke else ''}, small_resnet width 8: {titles[part]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- command line ------------------------------------------------------------------------------------


def parse_seeds(text: str | None, default: int) -> list[int]:
    """``N``: seeds 0..N-1; ``a,b,c``: those seeds."""
    if text is None:
        return list(range(default))
    try:
        if "," in text:
            seeds = sorted({int(part) for part in text.split(",") if part.strip()})
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise SystemExit(f"--seeds={text!r}: give a count (3) or a list (0,1,2)") from None
    if not seeds or min(seeds) < 0:
        raise SystemExit(f"--seeds={text!r}: give a count >= 1 or non-negative seeds")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[1])
    parser.add_argument("--quick", action="store_true",
                        help="sparsity 0.9, 3 seeds, ablations without T=4: about 15 minutes with --jobs 2")
    parser.add_argument("--only", choices=("comparisons", "ablations"), help="run one part only")
    parser.add_argument("--seeds", default=None,
                        help=f"a count (seeds 0..N-1) or a list 0,1,2 (default {DEFAULT_SEEDS})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"E, the equal-epoch budget of the comparisons (default {DEFAULT_EPOCHS}, the demo's); "
                        "the ablations keep their 34-epoch base")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None,
                        help="comparison sparsities (default 0.8 0.9 0.95; --quick: 0.9)")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS, metavar="METHOD",
                        help=f"compared methods (default {' '.join(COMPARED)}; dense and GP always run: they are "
                        f"the references; also available: {' '.join(OPTIONAL)})")
    parser.add_argument("--factors", default=None,
                        help=f"comma-separated ablation factors (default all: {','.join(FACTORS)})")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--out", type=Path, default=None, help=f"run directories (default {DEFAULT_OUT})")
    parser.add_argument("--plot", type=Path, default=None, help="accuracy vs sparsity PNG (default docs/quality.png)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and the estimate; train nothing")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # 500 signals: checks the code paths
    args = parser.parse_args()

    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    seeds = parse_seeds(args.seeds, DEFAULT_SEEDS)
    sparsities = tuple(args.sparsities or (QUICK_SPARSITIES if args.quick else FULL_SPARSITIES))
    if any(not 0 < s < 1 for s in sparsities):
        parser.error("--sparsities must lie in (0, 1)")
    methods = tuple(m for m in METHODS if m in set(args.methods or COMPARED) | {"dense", "gp"})
    factors = list(FACTORS) if args.factors is None else [f.strip() for f in args.factors.split(",") if f.strip()]
    unknown = [f for f in factors if f not in FACTORS]
    if unknown:
        parser.error(f"--factors: unknown {', '.join(unknown)}; choose from {', '.join(FACTORS)}")
    try:
        for method in methods:
            stages(method, sparsities[0], args.epochs)
    except ValueError as err:
        parser.error(f"--epochs={args.epochs}: {err}")
    out = args.out or (Path(f"{DEFAULT_OUT}_smoke") if args.smoke else DEFAULT_OUT)
    plot_path = args.plot or (out / "quality.png" if args.smoke else Path("docs/quality.png"))
    ablations = [] if args.only == "comparisons" else [
        (factor, value, change) for factor in factors for value, change in FACTORS[factor][1]
        if not (args.quick and (factor, value) in QUICK_SKIP)]
    plan = Plan(base_config(args.smoke), out, seeds, sparsities, methods, args.epochs,
                comparisons=args.only != "ablations", ablations=ablations)

    runs, done, epochs_left, slot_seconds = plan.estimate()
    measured = all(finished(e.run) for e in plan.comparison_entries())
    minutes = slot_seconds / min(args.jobs, max(1, runs - done)) / 60
    mode = ("quick mode" if args.quick else "full mode") + (": this takes a while" if minutes > 20 else "")
    print(f"{runs} runs ({done} already finished, reused); about {epochs_left} epochs to train: expect about "
          f"{minutes:.0f} minutes with {args.jobs} parallel run(s), one thread each ({mode}"
          f"{'' if measured else '; equal-FLOPs epochs estimated until the E-epoch runs are measured'}). "
          f"Seeds {','.join(map(str, seeds))}; comparisons "
          f"{'off' if not plan.comparisons else 'at ' + ', '.join(f'{s:g}' for s in sparsities)}; ablations: "
          f"{', '.join(sorted({f for f, _, _ in ablations}, key=list(FACTORS).index)) or 'off'}.",
          file=sys.stderr, flush=True)
    if args.dry_run:
        listed: dict[tuple[str, str, str], list[Entry]] = {}
        for entry in plan.comparison_entries() + plan.predicted_equal_flops() + plan.ablation_entries():
            name = entry.run.key.rsplit("_seed", 1)[0]
            listed.setdefault((entry.part, entry.value or entry.method, name), []).append(entry)
        for (part, what, name), group in listed.items():
            ready = sum(finished(e.run) for e in group)
            print(f"  {part:<17} {what:<36} {name}_seed*: {len(group)} seed(s), {ready} finished", file=sys.stderr)
        return

    started = time.perf_counter()
    initial = plan.comparison_entries() + plan.ablation_entries()
    equal_flops: dict[str, Entry] = {}

    def follow_up(results: dict[str, dict]) -> list[Entry]:
        new = plan.equal_flops_entries(plan.mean_flops(results))
        for entry in new:
            equal_flops[f"{entry.method}|{entry.sparsity}|{entry.seed}"] = entry
        return new

    results, failures = execute(initial, args.jobs, follow_up,
                                lambda line: print(line, file=sys.stderr, flush=True))
    entries = initial + list(equal_flops.values())

    sections = [(f"MNIST-1D{' (smoke: 500 signals)' if args.smoke else ''}, small_resnet width 8, batch 64; torch "
                 f"threads per run: 1; {args.jobs} run(s) in parallel; {os.cpu_count()} CPUs; seeds "
                 f"{','.join(map(str, seeds))}; wall time {time.perf_counter() - started:.0f} s.")]
    rows_by_part = {}
    if plan.comparisons:
        dense_rows = [r for r in comparison_rows(entries, results, "equal-epochs") if r["method"] == "dense"]
        dense = dense_rows[0] if dense_rows else None
        for part in ("equal-epochs", "equal-flops"):
            rows_by_part[part] = comparison_rows(entries, results, part)
            sections.append(comparison_markdown(rows_by_part[part], part, args.epochs, dense))
    for factor in dict.fromkeys(f for f, _, _ in ablations):
        table = ablation_markdown(factor, entries, results)
        if table:
            sections.append(table)
    numels = {r["target_numel"] for r in results.values() if r.get("target_numel") is not None}
    if numels - {TARGET_WEIGHTS}:
        sections.append(f"Note: target weights {sorted(numels)} differ from the {TARGET_WEIGHTS} that GPMT's MT "
                        "rule assumes.")
    if failures:
        sections.append("Failed runs (their rows are missing or have fewer seeds):\n"
                        + "\n".join(f"* {f}" for f in failures))
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"markdown: {args.markdown}")
    if any(rows_by_part.values()):
        plot(rows_by_part, args.epochs, plot_path, args.smoke)
        print(f"plot: {plot_path}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
