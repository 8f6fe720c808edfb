"""``sparsetrain demo``: every config of ``configs/demo/`` through the runner, one results table.

Each config is a whole, self-contained run on the embedded MNIST-1D data with the same epoch
budget (20 epochs of training): the dense baseline trains 20 dense epochs; GP and GPMT at 0.8 and
0.9 train 10 dense epochs (identical across rows: same seed and settings), prune once, and
fine-tune 10 epochs with the masks fixed; S-GaP (kappa 4, uniform and non-uniform) runs 5 steps of
2 epochs from a random init and fine-tunes 10; P-GaP (kappa 4) runs one round of 4 workers x 2
epochs and fine-tunes 12. Every run can also be started alone with ``sparsetrain run``.

Why MNIST-1D with a width-8 ResNet: the dense model reaches about 98% test top-1, below 100%, and
the pruned rows land visibly lower (about 90% at 0.9), so methods can be told apart; digits at
this size is too easy (about 98-99% for everything). Why MT 1% for GPMT: the model has 7,128
target weights, so the floor is 71 weights per layer; it keeps the 24-weight stem dense, and at
0.9 (close to the 90.7% that MT 1% allows on this model) every other layer but the classifier is
held at the floor, where GP keeps 44-104 weights per layer. At the reference default (0.05%) the
floor would be 3 weights and GPMT would equal GP here.

Outputs: ``<out>/<config name>/`` run directories (each with its report) and ``<out>/results.md``.
A second demo picks up where the first stopped: a run finished under the same config (same
fingerprint in its ``run.json``) is kept, a stopped one is resumed from its checkpoint, and one
made under another config is run again; ``fresh=True`` (``--fresh``) reruns everything. Only run
directories (with sparsetrain's ``run.json``) are ever replaced; any other directory is refused.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write
from .config import GaPStage, PartitionConfig, RunConfig, load_config
from .errors import UserError
from .reports import load_run, markdown_table, method_row, write_report
from .runner.run_dir import MARKER, read_marker, run_status
from .runner.train import RunResult, run
from .tasks import get_task

DEMO_CONFIGS = Path(__file__).parent / "configs" / "demo"
RESULTS_TITLE = "# sparsetrain demo"


@dataclass
class DemoResult:
    """``results`` holds the runs trained (or resumed) by this call; ``kept`` names the finished runs reused."""

    table: str
    results: dict[str, RunResult]
    results_file: Path
    kept: list[str] = field(default_factory=list)


def _kappa(partitions: PartitionConfig) -> int | None:
    """The number of partitions when the config alone tells it (not for ``stages`` without kappa)."""
    from .sparsity.partitions import PRESETS

    if partitions.kappa is not None:
        return partitions.kappa
    if isinstance(partitions.scheme, list):
        return len(partitions.scheme)
    return len(PRESETS[partitions.scheme]) if partitions.scheme in PRESETS else None


def training_epochs(config: RunConfig) -> int | None:
    """Epochs of training in ``config``, P-GaP workers counted one by one; None if a kappa depends on the model.

    S-GaP trains (1 + rounds * kappa) steps of ``epochs_per_step`` epochs, then ``finetune_epochs``;
    P-GaP trains kappa workers for ``rounds * epochs_per_step`` epochs each, then ``finetune_epochs``.
    """
    total = 0
    for stage in config.stages:
        if isinstance(stage, GaPStage):
            kappa = _kappa(stage.partitions)
            if kappa is None:
                return None
            steps = 1 + stage.rounds * kappa if stage.kind == "sgap" else stage.rounds
            workers = kappa if stage.kind == "pgap" else 1
            total += workers * steps * stage.epochs_per_step + stage.finetune_epochs
        else:
            total += getattr(stage, "epochs", 0)  # a prune stage trains nothing
    return total


def _what_to_do(config: RunConfig, fresh: bool) -> tuple[str, str]:
    """(action, why) for one demo run: action is ``run``, ``keep``, ``resume`` or ``rerun``."""
    run_dir = config.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"demo output {str(run_dir)!r} is a file, not a run directory; choose another --out")
    entries = sorted(run_dir.iterdir()) if run_dir.is_dir() else []
    if not entries:
        return "run", ""
    marker = read_marker(run_dir)
    if marker is None:
        raise UserError(f"demo output {str(run_dir)!r} holds files sparsetrain did not write (e.g. "
                        f"{entries[0].name!r}; no {MARKER}); choose another --out")
    if fresh:
        return "rerun", "--fresh"
    if marker.get("fingerprint") != config.fingerprint():
        return "rerun", (f"its run was made under another config (fingerprint {marker.get('fingerprint')}, now "
                         f"{config.fingerprint()})")
    status = run_status(run_dir)
    if status == "finished":
        return "keep", ""
    if status == "stopped":
        return "resume", ""
    return "rerun", "its run stopped before its first checkpoint"


def _check_results_file(path: Path) -> None:
    if path.exists() and not (path.is_file() and path.read_text(errors="replace").startswith(RESULTS_TITLE)):
        raise UserError(f"demo output {str(path)!r} exists and was not written by the demo; choose another --out")


def run_demo(
    out_dir: str | Path = "runs/demo",
    config_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    fresh: bool = False,
) -> DemoResult:
    """Run every ``*.yaml`` of ``config_dir`` (default: the packaged demo) in name order.

    Every output is checked before anything trains: a directory or ``results.md`` that the demo
    did not write raises ``UserError`` and nothing is written.
    """
    config_dir = Path(config_dir) if config_dir is not None else DEMO_CONFIGS
    paths = sorted(config_dir.glob("*.yaml"))
    if not paths:
        raise UserError(f"demo config directory {str(config_dir)!r} holds no *.yaml file")
    out = Path(out_dir)
    configs = {p.stem: load_config(p, [*overrides, f"output_dir={out / p.stem}"]) for p in paths}
    results_file = out / "results.md"
    _check_results_file(results_file)
    plans = {stem: _what_to_do(config, fresh) for stem, config in configs.items()}
    results: dict[str, RunResult] = {}
    kept: list[str] = []
    rows, layer_tables = [], []

    def sub_log(line: str) -> None:
        log(f"   {line}")

    for stem, config in configs.items():
        epochs = training_epochs(config)
        log(f"== {stem}: {len(config.stages)} stage(s), "
            f"{'see `sparsetrain plan` for the' if epochs is None else epochs} epochs of training")
        action, why = plans[stem]
        run_dir = config.run_dir()
        if action == "keep":
            sub_log(f"finished earlier under the same config: kept {run_dir} (--fresh reruns it)")
            kept.append(stem)
        elif action == "resume":
            sub_log(f"stopped earlier under the same config: resuming {run_dir}")
            results[stem] = run(config, resume=True, log=sub_log)
        else:
            if action == "rerun":
                sub_log(f"running again ({why}): replacing the run in {run_dir}")
            results[stem] = run(config, log=sub_log, overwrite=action == "rerun")
        primary = get_task(config.task.kind).primary()  # for runs of earlier versions, which did not record it
        if action != "keep" or not (run_dir / "report.md").is_file():
            write_report(run_dir, primary)
        rows.append(method_row(load_run(run_dir, primary)))
        if "0.9" in stem and (run_dir / "sparsity" / "final.csv").is_file():
            layer_tables.append(f"{stem} {_layer_table(run_dir)}")
    table = markdown_table(rows)
    layers = "\n\n".join(layer_tables)
    links = "\n".join(f"- [{stem}]({stem}/report.md)" for stem in configs)
    atomic_write(results_file, (
        f"{RESULTS_TITLE}\n\nEqual epoch budget per row; accuracies are test top-1 on MNIST-1D "
        "(final epoch, and best epoch under the final masks).\n\n"
        f"{table}\n\nPer-layer sparsity of the 0.9 rows:\n\n```\n{layers}\n```\n\n{links}\n"))
    log("")
    log(table)
    log("")
    log(layers)
    log(f"\nresults: {results_file}")
    return DemoResult(table, results, results_file, kept)


def _layer_table(run_dir: Path) -> str:
    """``(sparsity S):`` and the final per-layer table of a finished run, from ``sparsity/final.csv`` and
    ``summary.json``: the layout of ``MaskSet.format_table``, read from files so kept runs show it too."""
    with open(run_dir / "sparsity" / "final.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    width = max(len("layer"), *(len(r["layer"]) for r in rows))
    total, kept = sum(int(r["numel"]) for r in rows), sum(int(r["kept"]) for r in rows)
    lines = [f"(sparsity {1 - kept / total:.4f}):",
             f"{'layer':<{width}}  {'shape':<18} {'numel':>11} {'kept':>11} {'sparsity':>9} {'target':>9}"]
    for r in rows:
        target = f"{float(r['target']):.2%}" if r["target"] else ""
        lines.append(f"{r['layer']:<{width}}  {r['shape']:<18} {int(r['numel']):>11,} {int(r['kept']):>11,} "
                     f"{float(r['sparsity']):>9.2%} {target:>9}")
    lines.append(f"{'targets':<{width}}  {'':<18} {total:>11,} {kept:>11,} {1 - kept / total:>9.2%}")
    model_numel = summary.get("model_numel")
    if model_numel:
        lines.append(f"sparsity over all {model_numel:,} parameters: {(total - kept) / model_numel:.2%}")
    return "\n".join(lines)
