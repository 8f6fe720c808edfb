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
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .reports import load_run, markdown_table, method_row, write_report
from .runner.train import RunResult, run
from .errors import UserError

DEMO_CONFIGS = Path(__file__).parent / "configs" / "demo"


@dataclass
class DemoResult:
    table: str
    results: dict[str, RunResult]
    results_file: Path


def _clear_previous_run(run_dir: Path) -> None:
    """Remove a run directory the demo wrote before (it holds a config.yaml); refuse anything else."""
    if not run_dir.exists():
        return
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"demo output {str(run_dir)!r} exists and is not a sparsetrain run; choose another --out")
    shutil.rmtree(run_dir)


def run_demo(
    out_dir: str | Path = "runs/demo",
    config_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run every ``*.yaml`` of ``config_dir`` (default: the packaged demo) in name order."""
    config_dir = Path(config_dir) if config_dir is not None else DEMO_CONFIGS
    paths = sorted(config_dir.glob("*.yaml"))
    if not paths:
        raise UserError(f"demo config directory {str(config_dir)!r} holds no *.yaml file")
    out = Path(out_dir)
    configs = {p.stem: load_config(p, [*overrides, f"output_dir={out / p.stem}"]) for p in paths}
    results: dict[str, RunResult] = {}
    rows = []
    for stem, config in configs.items():
        log(f"== {stem}: {len(config.stages)} stage(s), {sum(getattr(s, 'epochs', 0) for s in config.stages)} epochs")
        _clear_previous_run(config.run_dir())
        results[stem] = run(config, log=lambda line: log(f"   {line}"))
        write_report(config.run_dir())
        rows.append(method_row(load_run(config.run_dir())))
    table = markdown_table(rows)
    layer_tables = "\n\n".join(
        f"{stem} (sparsity {result.masks.sparsity():.4f}):\n{result.masks.format_table()}"
        for stem, result in results.items() if result.masks is not None and "0.9" in stem
    )
    results_file = out / "results.md"
    results_file.write_text(
        "# sparsetrain demo\n\nEqual epoch budget per row; accuracies are test top-1 on MNIST-1D "
        "(final epoch, and best epoch under the final masks).\n\n"
        f"{table}\n\nPer-layer sparsity of the 0.9 rows:\n\n```\n{layer_tables}\n```\n\n"
        + "\n".join(f"- [{stem}]({stem}/report.md)" for stem in results) + "\n"
    )
    log("")
    log(table)
    log("")
    log(layer_tables)
    log(f"\nresults: {results_file}")
    return DemoResult(table, results, results_file)

