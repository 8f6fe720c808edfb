"""``sparsetrain demo``: a task's demo configs through the runner, one results table.

A task declares its demo (:attr:`sparsetrain.tasks.Task.DEMO`, a directory of configs, and
``DEMO_DESCRIPTION``, the line that says what the table's metric is, on what data); ``classification``
declares the packaged ``configs/demo/`` (dense, GP, GPMT, S-GaP and P-GaP on embedded MNIST-1D; see
:class:`sparsetrain.tasks.ClassificationTask`). :func:`run_demo` runs one directory of configs in name
order; :func:`run_demos` runs the demo of one task (``--task KIND``) or of every registered task that
has one (``--task all``). Every run can also be started alone with ``sparsetrain run``.

Outputs: ``<out>/<config name>/`` run directories (each with its report) and ``<out>/results.md``,
where ``<out>`` is ``--out`` itself for the default task (:data:`DEFAULT_TASK`, so ``make demo`` and
``sparsetrain demo`` write ``runs/demo/<config>/`` as always) and ``--out``/``<task kind>`` for any other
task, with ``--task KIND`` and ``--task all`` alike (so each reuses the other's runs). The table's rows
with the highest configured target sparsity also get their final per-layer sparsity tables.

A second demo picks up where the first stopped: a run finished under the same config (same
fingerprint in its ``run.json``) is kept, a stopped one is resumed from its checkpoint, and one
made under another config is run again; ``fresh=True`` (``--fresh``) reruns everything. Only run
directories (with sparsetrain's ``run.json``) are ever replaced; any other directory is refused.
Every output (of every task, for ``--task all``) is checked before anything trains.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write
from .config import RunConfig, import_modules, load_config
from .errors import UserError
from .methods import method_for
from .reports import load_run, markdown_table, method_row, write_report
from .runner.run_dir import MARKER, read_marker, run_status
from .runner.train import RunResult, run
from .tasks import Task, get_task, task_kinds

DEFAULT_TASK = "classification"
"""The task of a plain ``sparsetrain demo`` (``make demo``); its demo writes into ``--out`` itself."""
ALL_TASKS = "all"
RESULTS_TITLE = "# sparsetrain demo"


def demo_config_dir(task: type[Task]) -> Path | None:
    """The directory of the ``DEMO`` that ``task`` itself declares (a relative one is taken from the directory
    of the module that defines the task), or None: no demo (a subclass does not inherit its parent's)."""
    declared = vars(task).get("DEMO")
    if declared is None:
        return None
    path = Path(declared)
    if not path.is_absolute():
        path = Path(sys.modules[task.__module__].__file__ or ".").parent / path
    return Path(os.path.normpath(path))


DEMO_CONFIGS = demo_config_dir(get_task(DEFAULT_TASK))
"""The packaged demo (``configs/demo/``): the default task's."""


def demo_description(task: type[Task]) -> str:
    """The line under the title of ``results.md``: the ``DEMO_DESCRIPTION`` that ``task`` itself declares, or
    one built from its metric."""
    declared = vars(task).get("DEMO_DESCRIPTION")
    if declared:
        return " ".join(str(declared).split())
    better = "higher" if task.PRIMARY[1] == "max" else "lower"
    return (f"{task.METRIC_LABEL['title']} ({better} is better) on each run's evaluation data "
            "(final epoch, and best epoch under the final masks).")


def demo_tasks() -> list[str]:
    """The registered task kinds that declare a demo, in name order."""
    return [kind for kind in task_kinds() if demo_config_dir(get_task(kind)) is not None]


def task_out_dir(out_dir: str | Path, kind: str) -> Path:
    """Where the demo of task ``kind`` writes: ``out_dir`` for :data:`DEFAULT_TASK`, else ``out_dir/kind``."""
    return Path(out_dir) if kind == DEFAULT_TASK else Path(out_dir) / kind


def training_epochs(config: RunConfig) -> int | None:
    """Epochs of training in ``config``, parallel workers counted one by one; None if a stage's count
    depends on the model (each stage's method module counts its own, ``training_epochs(stage)``)."""
    total = 0
    for stage in config.stages:
        epochs = method_for(stage.kind).training_epochs(stage)
        if epochs is None:
            return None
        total += epochs
    return total


def target_sparsity(config: RunConfig) -> float | None:
    """The fraction pruned that ``config`` aims at: the ``sparsity`` of its last stage that sets one, when
    that is a single number (a per-layer mapping, or no such stage: None)."""
    for stage in reversed(config.stages):
        value = getattr(stage, "sparsity", None)
        if value is not None:
            return float(value) if isinstance(value, (int, float)) else None
    return None


@dataclass
class DemoResult:
    """``results`` holds the runs trained (or resumed) by this call; ``kept`` names the finished runs reused."""

    table: str
    results: dict[str, RunResult]
    results_file: Path
    kept: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    """One demo, checked and planned, nothing trained yet: ``plans[stem]`` is (action, why);
    ``sources[stem]`` the config file and overrides ``configs[stem]`` was loaded from."""

    task: type[Task]
    configs: dict[str, RunConfig]
    plans: dict[str, tuple[str, str]]
    results_file: Path
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


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


def _prepare(task: type[Task], out_dir: str | Path, config_dir: str | Path | None, overrides: Sequence[str],
             fresh: bool) -> _Prepared:
    """Load every config of the demo and decide what to do with each; raises ``UserError`` (nothing
    written) on an output the demo did not write or a config of another task."""
    if config_dir is None:
        config_dir = demo_config_dir(task)
        if config_dir is None:
            raise UserError(f"task {task.kind!r} declares no demo; give --configs DIR")
    config_dir = Path(config_dir)
    paths = sorted(config_dir.glob("*.yaml"))
    if not paths:
        raise UserError(f"demo config directory {str(config_dir)!r} holds no *.yaml file")
    out = Path(out_dir)
    sources = {p.stem: (str(p), [*overrides, f"output_dir={out / p.stem}"]) for p in paths}
    configs = {stem: load_config(path, given) for stem, (path, given) in sources.items()}
    for path in paths:
        kind = configs[path.stem].task.kind
        if kind != task.kind:
            raise UserError(f"demo config {str(path)!r} runs task.kind={kind!r}, not the demo's task "
                            f"{task.kind!r}; give --task {kind}")
    results_file = out / "results.md"
    _check_results_file(results_file)
    plans = {stem: _what_to_do(config, fresh) for stem, config in configs.items()}
    return _Prepared(task, configs, plans, results_file, sources)


def _train_in_child(path: str, overrides: list[str], action: str, prefix: str) -> None:
    """One demo run in a worker process of ``--jobs`` (log lines prefixed with the run's name)."""
    config = load_config(path, overrides)

    def log(line: str) -> None:
        print(f"{prefix}{line}", flush=True)

    run(config, resume=action == "resume", log=log, overwrite=action == "rerun")


def _train_in_parallel(demos: Sequence[_Prepared], jobs: int, log: Callable[[str], None]) -> None:
    """Every run of ``demos`` that is not kept, ``jobs`` at a time in worker processes (spawned: a fork
    of a process that has run torch can deadlock). Each run pins its own thread count."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pending = [(demo, stem) for demo in demos for stem in demo.configs if demo.plans[stem][0] != "keep"]
    log(f"== {len(pending)} run(s), {jobs} at a time")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_in_child, *demo.sources[stem], demo.plans[stem][0],
                               f"   [{demo.configs[stem].run_dir()}] ") for demo, stem in pending]
        for future in futures:
            future.result()  # a failed run raises here, after the others have finished
    for demo in demos:  # what was trained is now a finished run to read, like a kept one
        demo.plans = {stem: ("trained", "") if action != "keep" else (action, why)
                      for stem, (action, why) in demo.plans.items()}


def _run_prepared(demo: _Prepared, log: Callable[[str], None]) -> DemoResult:
    """Train (or keep, or resume) every run of ``demo`` in name order, then write ``results.md``."""
    configs, results_file = demo.configs, demo.results_file
    results: dict[str, RunResult] = {}
    kept: list[str] = []
    rows = []
    targets = {stem: target_sparsity(config) for stem, config in configs.items()}
    highest = max((t for t in targets.values() if t is not None), default=None)
    layer_tables = []

    def sub_log(line: str) -> None:
        log(f"   {line}")

    for stem, config in configs.items():
        epochs = training_epochs(config)
        log(f"== {stem}: {len(config.stages)} stage(s), "
            f"{'see `sparsetrain plan` for the' if epochs is None else epochs} epochs of training")
        action, why = demo.plans[stem]
        run_dir = config.run_dir()
        if action == "keep":
            sub_log(f"finished earlier under the same config: kept {run_dir} (--fresh reruns it)")
            kept.append(stem)
        elif action == "trained":
            sub_log(f"trained by a worker process: {run_dir}")
        elif action == "resume":
            sub_log(f"stopped earlier under the same config: resuming {run_dir}")
            results[stem] = run(config, resume=True, log=sub_log)
        else:
            if action == "rerun":
                sub_log(f"running again ({why}): replacing the run in {run_dir}")
            results[stem] = run(config, log=sub_log, overwrite=action == "rerun")
        primary = demo.task.primary()  # for runs of earlier versions, which did not record it
        if action != "keep" or not (run_dir / "report.md").is_file():
            write_report(run_dir, primary)
        rows.append(method_row(load_run(run_dir, primary)))
        if highest is not None and targets[stem] == highest and (run_dir / "sparsity" / "final.csv").is_file():
            layer_tables.append(f"{stem} {_layer_table(run_dir)}")
    table = markdown_table(rows)
    layers = "\n\n".join(layer_tables)
    links = "\n".join(f"- [{stem}]({stem}/report.md)" for stem in configs)
    per_layer = "" if highest is None else f"Per-layer sparsity of the {highest:.4g} rows:\n\n```\n{layers}\n```\n\n"
    atomic_write(results_file, f"{RESULTS_TITLE}\n\n{demo_description(demo.task)}\n\n{table}\n\n{per_layer}{links}\n")
    log("")
    log(table)
    log("")
    log(layers)
    log(f"\nresults: {results_file}")
    return DemoResult(table, results, results_file, kept)


def run_demo(
    out_dir: str | Path = "runs/demo",
    config_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    fresh: bool = False,
    task: str = DEFAULT_TASK,
) -> DemoResult:
    """Run every ``*.yaml`` of ``config_dir`` (default: the demo of ``task``) into ``out_dir``, in name order.

    Every config must name ``task`` (its ``task.kind``), whose description heads ``results.md``.
    Every output is checked before anything trains: a directory or ``results.md`` that the demo
    did not write raises ``UserError`` and nothing is written.
    """
    return _run_prepared(_prepare(get_task(task), out_dir, config_dir, overrides, fresh), log)


def run_demos(
    task: str = DEFAULT_TASK,
    out_dir: str | Path = "runs/demo",
    config_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
    fresh: bool = False,
    imports: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    jobs: int = 1,
) -> dict[str, DemoResult]:
    """The demo of task ``task``, or of every registered task with a demo for ``task="all"``, each into
    :func:`task_out_dir` (``out_dir`` for the default task, ``out_dir/<kind>`` for the others).

    ``seeds``: run every config once per seed (``seed=S`` override) into ``seed<S>/`` under the task's
    directory, and write the table of mean ± std over the seeds to its ``results.md``
    (:func:`seed_table`); None runs each config once with its own seed. ``jobs`` runs that many
    runs at a time in worker processes (each pins its own ``threads``).
    ``imports`` are modules imported first (a task of your own registers itself on import).
    ``config_dir`` replaces the demo's configs of one task (not with ``all``). A task that is not
    registered or has no demo raises a one-line ``UserError`` naming the valid ones. Every demo's
    outputs are checked before any of them trains. Returns the results by task kind, in run order.
    """
    import_modules(list(imports) or None)
    with_demo = demo_tasks()
    valid = ", ".join([*with_demo, ALL_TASKS])
    if task == ALL_TASKS:
        if config_dir is not None:
            raise UserError("--configs runs one task's configs; give --task KIND with it, not --task all")
        kinds = with_demo
    elif task not in task_kinds():
        raise UserError(f"--task {task!r} is not a registered task; valid: {valid} (a task of your own: "
                        "--import its module)")
    elif task not in with_demo and config_dir is None:
        raise UserError(f"--task {task!r} declares no demo (Task.DEMO); valid: {valid}, or give --configs DIR")
    else:
        kinds = [task]
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be at least 1")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0):
        raise UserError(f"--seeds {','.join(map(str, seeds))} must be distinct integers >= 0, e.g. 0,1,2")
    per_seed: dict[str, list[tuple[int | None, _Prepared]]] = {}
    for kind in kinds:
        out = task_out_dir(out_dir, kind)
        if seeds is None:
            per_seed[kind] = [(None, _prepare(get_task(kind), out, config_dir, overrides, fresh))]
        else:
            _check_results_file(out / "results.md")
            per_seed[kind] = [(seed, _prepare(get_task(kind), out / f"seed{seed}", config_dir,
                                              [*overrides, f"seed={seed}"], fresh)) for seed in seeds]
    if jobs > 1:
        _train_in_parallel([demo for demos in per_seed.values() for _, demo in demos], jobs, log)
    results = {}
    for kind, demos in per_seed.items():
        if len(per_seed) > 1:
            log(f"### task {kind}: {task_out_dir(out_dir, kind)}")
        for seed, demo in demos:
            if seed is not None:
                log(f"## seed {seed}")
            results[kind] = _run_prepared(demo, log)
        if seeds is not None:
            table = seed_table(get_task(kind), [demo for _, demo in demos], seeds)
            results_file = task_out_dir(out_dir, kind) / "results.md"
            atomic_write(results_file, f"{RESULTS_TITLE}\n\n{demo_description(get_task(kind))}\n\n"
                         f"Mean ± sample std over seeds {', '.join(map(str, seeds))}; per-seed tables and runs "
                         f"in seed<S>/.\n\n{table}\n")
            log(f"\n{table}\n\nresults over {len(seeds)} seeds: {results_file}")
            results[kind] = DemoResult(table, results[kind].results, results_file, results[kind].kept)
    return results


def seed_table(task: type[Task], demos: Sequence[_Prepared], seeds: Sequence[int]) -> str:
    """The demo table with each row's final and best primary metric as mean ± sample std over ``seeds``
    (``demos[i]`` ran seed ``seeds[i]``), the per-seed final values, and the mean measured sparsity."""
    import statistics

    primary = task.primary()
    key, percent = primary["key"], primary.get("percent")
    digits = 2 if percent else 4

    def stat(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"

    rows = []
    for stem in demos[0].configs:
        records = [load_run(demo.configs[stem].run_dir(), primary) for demo in demos]
        summaries = [r.summary or {} for r in records]
        final = [float(s["final"][key]) for s in summaries]
        best = [float(s["best"][key]) for s in summaries]
        row = method_row(records[0])
        measured = [float(s["sparsity"]) for s in summaries]
        rows.append({
            **{column: row[column] for column in ("Model", "Method", "Partition", "Sparsity Ratio",
                                                  "Sparsity Distribution")},
            f"{primary['title']} (mean ± std, {len(seeds)} seeds)": stat(final),
            f"Best {primary['short']} (mean ± std)": stat(best),
            f"per seed ({', '.join(map(str, seeds))})": ", ".join(f"{v:.{digits - 1}f}" for v in final),
            "Measured Sparsity": f"{statistics.fmean(measured):.4f}",
        })
    return markdown_table(rows, list(rows[0]))


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
