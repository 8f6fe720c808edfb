"""Markdown + PNG report for one finished (or stopped) training run directory.

Reads only the files the runner writes; never imports torch or other sparsetrain modules (but the
exception types and the standard-library-only ``atomic_write``)::

    config.yaml         resolved run config (mapping)
    timeline.json       the resolved layout: per stage start_epoch, epochs, labels, phases (S-GaP grow
                        steps, P-GaP rounds, fine-tuning) and partitions; runs of earlier versions
                        have none or no phases, and their stage spans come from ``config.yaml``
    metrics.jsonl       one evaluation per line (epoch, the task's test/<metric> values, train/loss,
                        sparsity as a fraction, ...); files of earlier versions (test_<metric>,
                        train_loss) are converted on reading
    summary.json        also ``primary``: the task's primary metric (key, mode max|min, labels)
    events.jsonl        one mask event per line (step, epoch, stage, kind, label, sparsity, csv)
    sparsity/*.csv      per-layer table at each mask event: layer,shape,numel,kept,sparsity,target
    summary.json        {"final": record, "best": record, "model_numel", "target_numel", "sparsity", "wall_time_s"},
                        and ``figures``: [{"file", "caption"}] pictures the task wrote (detection's predictions)

Everything but ``config.yaml`` may be missing or empty; the report says what is missing.
The headline columns show the task's primary metric: ``summary.json``'s ``primary``, else the one
the caller passes (``load_run(run_dir, primary)``; the CLI and the demo ask the task registry).
Units: sparsity values are fractions in [0, 1], accuracies are percents (0-100), times are seconds,
``epoch`` is the global number of epochs completed; stage and phase spans are ``[start, end)`` in
0-based global epochs, which on the plots' axis of completed epochs run from ``start`` to ``end``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from ..atomic import atomic_write
from ..errors import UserError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

UNKNOWN_PRIMARY: dict[str, Any] = {"key": None, "mode": "max", "title": "Primary Metric", "short": "Primary",
                                   "log": "primary metric", "percent": False}


def result_columns(primary: dict[str, Any]) -> tuple[str, ...]:
    """The results table's columns; the two metric columns are named by the task's primary metric."""
    return ("Model", "Method", "Partition", "Sparsity Ratio", "Sparsity Distribution", primary["title"],
            f"Best {primary['short']}", "Measured Sparsity")

TRAIN_KINDS = frozenset({"dense", "finetune"})
STAGE_KIND_LABELS = {"sgap": "S-GaP", "pgap": "P-GaP"}
PRUNE_METHOD_LABELS = {
    "gp": "GP",
    "gpmt": "GPMT",
    "uniform": "Uniform magnitude",
    "erk": "ERK magnitude",
    "profile": "Profile",
}
DISTRIBUTION_LABELS = {"gp": "Global", "gpmt": "Global", "uniform": "Uniform", "erk": "ERK", "profile": "Profile"}
PARTITION_KEYS = ("partitions", "kappa")
REPORT_NAME = "report.md"
TIMELINE_NAME = "timeline.json"
LAYER_PLOT_NAME = "plot_layer_sparsity.png"
METRICS_PLOT_NAME = "plot_metrics.png"
_STAGE_COLORS = {"dense": "tab:blue", "finetune": "tab:green", "prune": "tab:red", "sgap": "tab:purple",
                 "pgap": "tab:brown"}


@dataclass
class RunRecord:
    """Everything parsed from one run directory.

    ``layers`` holds the rows of the last per-layer sparsity CSV (``numel``/``kept`` as ints,
    ``sparsity``/``target`` as fractions, ``target`` None when empty); ``missing`` lists one
    human-readable line per absent, empty or damaged file. ``timeline`` is ``timeline.json`` when
    it is readable and has one well-formed stage entry per config stage, else None (a run of an
    earlier version has none; that is not noted as missing).
    """

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    layers_csv: Path | None = None
    missing: list[str] = field(default_factory=list)
    primary: dict[str, Any] = field(default_factory=lambda: dict(UNKNOWN_PRIMARY))
    timeline: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The run name from the config, else the directory name."""
        return str(self.config.get("name") or self.run_dir.name)

    @property
    def stages(self) -> list[dict[str, Any]]:
        """The config's stage mappings (empty list if absent)."""
        return [s for s in self.config.get("stages") or [] if isinstance(s, dict)]


# --------------------------------------------------------------------------- loading


def load_run(run_dir: str | os.PathLike[str], primary: dict[str, Any] | None = None) -> RunRecord:
    """Parse a run directory; raise a one-line ValueError if it has no readable ``config.yaml``.

    ``primary`` describes the task's primary metric (``Task.primary()``) for a run whose
    ``summary.json`` does not record it (a stopped run, or one written by an earlier version).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{config_path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a YAML mapping, got {type(config).__name__}")

    record = RunRecord(run_dir=run_dir, config=config)
    record.metrics = _read_jsonl(run_dir / "metrics.jsonl", record.missing, "no evaluations recorded")
    record.events = _read_jsonl(run_dir / "events.jsonl", record.missing, "no mask events recorded")
    record.summary = _read_summary(run_dir / "summary.json", record.missing)
    for row in record.metrics:
        _convert_legacy_keys(row)
    for key in ("final", "best"):
        if record.summary and isinstance(record.summary.get(key), dict):
            _convert_legacy_keys(record.summary[key])
    record.primary = _primary(record, primary)
    record.timeline = _read_timeline(run_dir / TIMELINE_NAME, len(record.stages), record.missing)
    record.layers_csv = _last_layer_csv(run_dir, record.events)
    if record.layers_csv is None:
        record.missing.append("sparsity/*.csv: no per-layer sparsity table")
    else:
        record.layers = _read_layer_csv(record.layers_csv)
    return record


def _convert_legacy_keys(row: dict[str, Any]) -> None:
    """Metric keys of runs written before the task protocol (``test_<m>``, ``train_loss``) as ``test/<m>``,
    ``train/loss``, in place and in the same position."""
    if not any(k == "train_loss" or k.startswith("test_") for k in row):
        return
    items = list(row.items())
    row.clear()
    for key, value in items:
        if key == "train_loss":
            key = "train/loss"
        elif key.startswith("test_"):
            key = "test/" + key.removeprefix("test_")
        row.setdefault(key, value)


def _primary(record: RunRecord, given: dict[str, Any] | None) -> dict[str, Any]:
    """The task's primary metric as the run recorded it, else as the caller gave it, else unknown."""
    recorded = (record.summary or {}).get("primary")
    if isinstance(recorded, dict) and isinstance(recorded.get("key"), str):
        return {**UNKNOWN_PRIMARY, **recorded}
    return {**UNKNOWN_PRIMARY, **(given or {})}


def _read_jsonl(path: Path, missing: list[str], what: str) -> list[dict[str, Any]]:
    """JSON objects of a JSONL file, skipping blank and unparsable lines (noted in ``missing``)."""
    if not path.is_file():
        missing.append(f"{path.name}: missing ({what})")
        return []
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    if bad:
        missing.append(f"{path.name}: {bad} unreadable line(s) skipped")
    if not rows:
        missing.append(f"{path.name}: empty ({what})")
    return rows


def _read_summary(path: Path, missing: list[str]) -> dict[str, Any] | None:
    """The summary mapping, or None (noted in ``missing``) if absent or unreadable."""
    if not path.is_file():
        missing.append("summary.json: missing (run did not finish)")
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        missing.append("summary.json: unreadable")
        return None
    if not isinstance(summary, dict):
        missing.append("summary.json: not a JSON object")
        return None
    return summary


def _read_timeline(path: Path, n_stages: int, missing: list[str]) -> dict[str, Any] | None:
    """``timeline.json`` if it has ``n_stages`` stage entries with integer ``start_epoch``/``epochs``,
    contiguous from epoch 0; else None (a damaged file is noted in ``missing``; an absent one is not).

    Phases that do not lie inside their stage, in order, are dropped (the stage keeps its span)."""
    if not path.is_file():
        return None
    try:
        timeline = json.loads(path.read_text())
        stages = timeline["stages"]
        epoch = 0
        for stage in stages:
            start, epochs = stage["start_epoch"], stage["epochs"]
            if not (type(start) is int and type(epochs) is int and start == epoch and epochs >= 0):
                raise ValueError("stage spans")
            epoch += epochs
        if len(stages) != n_stages:
            raise ValueError("stage count")
    except (OSError, ValueError, KeyError, TypeError):
        missing.append(f"{path.name}: unreadable (stage spans taken from config.yaml)")
        return None
    for stage in stages:
        if not _phases_fit(stage):
            stage["phases"] = []
    return timeline


def _phases_fit(stage: dict[str, Any]) -> bool:
    """True if ``stage["phases"]`` is a list of phases in order, inside the stage, each at least 1 epoch."""
    phases = stage.get("phases")
    if not isinstance(phases, list):
        return False
    position, end = stage["start_epoch"], stage["start_epoch"] + stage["epochs"]
    for phase in phases:
        if not isinstance(phase, dict):
            return False
        start, epochs = phase.get("start_epoch"), phase.get("epochs")
        if not (type(start) is int and type(epochs) is int and epochs >= 1 and position <= start
                and start + epochs <= end):
            return False
        position = start + epochs
    return True


def _natural_key(path: Path) -> list[Any]:
    """Sort key that orders ``step_9.csv`` before ``step_10.csv``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _last_layer_csv(run_dir: Path, events: list[dict[str, Any]]) -> Path | None:
    """The CSV of the last event that names an existing one, else the last ``sparsity/*.csv``."""
    for event in reversed(events):
        rel = event.get("csv")
        if rel and (run_dir / rel).is_file():
            return run_dir / rel
    found = sorted((run_dir / "sparsity").glob("*.csv"), key=_natural_key)
    return found[-1] if found else None


def _read_layer_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a per-layer CSV with typed values (ints for counts, float fractions, target None if empty)."""
    rows = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            target = (raw.get("target") or "").strip()
            rows.append(
                {
                    "layer": raw["layer"],
                    "shape": raw.get("shape", ""),
                    "numel": int(raw["numel"]),
                    "kept": int(raw["kept"]),
                    "sparsity": float(raw["sparsity"]),
                    "target": float(target) if target else None,
                }
            )
    return rows


# --------------------------------------------------------------------------- derived values


def final_metrics(record: RunRecord) -> dict[str, Any] | None:
    """The last evaluation record: ``summary["final"]`` if present, else the last metrics line."""
    if record.summary and isinstance(record.summary.get("final"), dict):
        return record.summary["final"]
    return record.metrics[-1] if record.metrics else None


def best_metrics(record: RunRecord) -> dict[str, Any] | None:
    """The evaluation with the best primary metric: ``summary["best"]`` if present, else from metrics."""
    if record.summary and isinstance(record.summary.get("best"), dict):
        return record.summary["best"]
    key = record.primary["key"]
    scored = [m for m in record.metrics if isinstance(m.get(key), (int, float))]
    pick = min if record.primary["mode"] == "min" else max
    return pick(scored, key=lambda m: m[key]) if scored else None


def measured_sparsity(record: RunRecord) -> float | None:
    """Final sparsity over prunable targets (fraction), from summary, metrics, events or the CSV."""
    if record.summary and isinstance(record.summary.get("sparsity"), (int, float)):
        return float(record.summary["sparsity"])
    final = final_metrics(record)
    if final and isinstance(final.get("sparsity"), (int, float)):
        return float(final["sparsity"])
    if record.events and isinstance(record.events[-1].get("sparsity"), (int, float)):
        return float(record.events[-1]["sparsity"])
    if record.layers:
        return layer_totals(record.layers)["sparsity"]
    return None


def wall_time(record: RunRecord) -> tuple[float | None, str]:
    """Run wall time in seconds and where it came from (summary, or the last evaluation's time_s)."""
    if record.summary and isinstance(record.summary.get("wall_time_s"), (int, float)):
        return float(record.summary["wall_time_s"]), "summary.json"
    if record.metrics and isinstance(record.metrics[-1].get("time_s"), (int, float)):
        return float(record.metrics[-1]["time_s"]), "the last evaluation's time_s (no summary.json)"
    return None, "unknown"


def layer_totals(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Summed ``numel``/``kept`` over layers and the overall sparsity fraction 1 - kept/numel."""
    numel = sum(row["numel"] for row in layers)
    kept = sum(row["kept"] for row in layers)
    return {"numel": numel, "kept": kept, "sparsity": 1.0 - kept / numel if numel else 0.0}


def stage_spans(record: RunRecord) -> list[tuple[float, float, str]]:
    """``(start_epoch, end_epoch, kind)`` per stage, in 0-based global epochs, end exclusive.

    From ``timeline.json`` (the layout the run followed, GaP stages included) when the run has one;
    else (a run of an earlier version) derived from the config's ``stages[*].epochs``, where stages
    without ``epochs`` (prune, and GaP, whose length only the layout knows) have zero width.
    """
    if record.timeline is not None:
        return [(float(s["start_epoch"]), float(s["start_epoch"] + s["epochs"]), str(s.get("kind", "?")))
                for s in record.timeline["stages"]]
    spans, start = [], 0.0
    for stage in record.stages:
        epochs = stage.get("epochs")
        end = start + (epochs if isinstance(epochs, (int, float)) else 0)
        spans.append((start, end, str(stage.get("kind", "?"))))
        start = end
    return spans


def stage_phases(record: RunRecord) -> dict[int, list[tuple[float, float, str]]]:
    """``(start_epoch, end_epoch, label)`` of each phase, by stage index, for stages with more than one
    phase in ``timeline.json`` (S-GaP grow steps / P-GaP rounds and their fine-tuning); 0-based
    global epochs, end exclusive. Empty without a timeline (runs of earlier versions)."""
    if record.timeline is None:
        return {}
    phases = {}
    for i, stage in enumerate(record.timeline["stages"]):
        if len(stage["phases"]) > 1:
            phases[i] = [(float(p["start_epoch"]), float(p["start_epoch"] + p["epochs"]), str(p.get("label", "")))
                         for p in stage["phases"]]
    return phases


def _sparsifying_stage(record: RunRecord) -> dict[str, Any] | None:
    """The last stage that changes masks (any kind other than dense/finetune), or None."""
    stages = [s for s in record.stages if s.get("kind") not in TRAIN_KINDS]
    return stages[-1] if stages else None


def _method_label(stage: dict[str, Any]) -> str:
    """Table 'Method' for a sparsifying stage: prune method label, S-GaP/P-GaP, or the kind upper-cased."""
    kind = str(stage.get("kind"))
    if kind == "prune":
        method = str(stage.get("method", "gp"))
        return PRUNE_METHOD_LABELS.get(method, method.upper())
    return STAGE_KIND_LABELS.get(kind, kind.upper())


def _distribution_label(stage: dict[str, Any]) -> str:
    """Table 'Sparsity Distribution': Global / Global + MT x% / Uniform / ERK / Profile, or '-'."""
    method = stage.get("method")
    if method is None:
        distribution = stage.get("distribution")
        return str(distribution).capitalize() if distribution else "-"
    label = DISTRIBUTION_LABELS.get(str(method), str(method).upper())
    if method == "gpmt":
        mt = stage.get("min_threshold")
        label += f" + MT {mt:g}%" if isinstance(mt, (int, float)) else " + MT"
    return label


def _stage_labels(record: RunRecord, stage: dict[str, Any]) -> tuple[str, str]:
    """'Method' and 'Sparsity Distribution' of a sparsifying stage: as its method module labelled it in
    the run's ``timeline.json`` (written by the runner from the method registry), else (a run of an
    earlier version) from the tables above."""
    if record.timeline is not None:
        recorded = record.timeline["stages"][record.stages.index(stage)]
        if isinstance(recorded.get("label"), str) and isinstance(recorded.get("distribution"), str):
            return recorded["label"], recorded["distribution"]
    return _method_label(stage), _distribution_label(stage)


def _partition(record: RunRecord) -> str:
    """The number of partitions kappa of the first stage that has partitions, else '-'.

    A GaP stage's ``partitions`` is ``{scheme, kappa}``: kappa when given, else the length of a
    regex list, else the scheme name (a preset or ``stages``, resolved against the model).
    """
    for stage in record.stages:
        for key in PARTITION_KEYS:
            value = stage.get(key)
            if value is None:
                continue
            if isinstance(value, dict):
                scheme = value.get("scheme")
                if value.get("kappa") is not None:
                    return str(value["kappa"])
                return str(len(scheme)) if isinstance(scheme, list) else str(scheme)
            return str(value)
    return "-"


def _model_label(config: dict[str, Any]) -> str:
    """``task.model.name`` plus ``(width N)`` when the model options set a width."""
    model = (config.get("task") or {}).get("model") or {}
    name = str(model.get("name", "?"))
    width = (model.get("options") or {}).get("width")
    return f"{name} (width {width})" if width is not None else name


def _ratio(value: float | None) -> str:
    """A sparsity fraction as a short number like ``0.9``; 'n/a' for None."""
    return "n/a" if value is None else f"{value:.4g}"


def _primary_value(primary: dict[str, Any], record: dict[str, Any] | None) -> str:
    """A metrics record's primary metric as ``xx.xx%`` (percent metrics) or ``x.xxxx``; 'n/a' if absent."""
    value = (record or {}).get(primary["key"]) if primary["key"] else None
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.2f}%" if primary.get("percent") else f"{value:.4f}"


def method_row(record: RunRecord) -> dict[str, str]:
    """One row of the GaP seeds' results table for this run (keys in ``COLUMNS`` order, all strings).

    ``Sparsity Ratio`` is the target of the last sparsifying stage when it is a single number,
    else the measured final sparsity; ``Measured Sparsity`` is the measured fraction to 4 decimals.
    """
    stage = _sparsifying_stage(record)
    measured = measured_sparsity(record)
    if stage is None:
        method, distribution, target = "Dense", "Dense", measured if measured is not None else 0.0
    else:
        method, distribution = _stage_labels(record, stage)
        sparsity = stage.get("sparsity")
        target = float(sparsity) if isinstance(sparsity, (int, float)) else measured
    return {
        "Model": _model_label(record.config),
        "Method": method,
        "Partition": _partition(record),
        "Sparsity Ratio": _ratio(target),
        "Sparsity Distribution": distribution,
        record.primary["title"]: _primary_value(record.primary, final_metrics(record)),
        f"Best {record.primary['short']}": _primary_value(record.primary, best_metrics(record)),
        "Measured Sparsity": "n/a" if measured is None else f"{measured:.4f}",
    }


# --------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    """A table cell: str(value) with pipes escaped and newlines flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str] | None = None) -> str:
    """Render rows as a markdown table.

    Columns default to the rows' keys in first-seen order (a :func:`method_row` is in
    :func:`result_columns` order); a row lacking a column gets an empty cell. Returns '' for no rows.
    """
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _stage_detail(stage: dict[str, Any]) -> str:
    """Short description of a stage: epochs for training, method/sparsity for prune, scalars otherwise."""
    kind = stage.get("kind")
    if kind in TRAIN_KINDS:
        return f"{stage.get('epochs', '?')} epochs"
    if kind == "prune":
        sparsity = stage.get("sparsity")
        if isinstance(sparsity, dict):
            target = ", ".join(f"{k}: {v:g}" for k, v in sparsity.items())
        else:
            target = _ratio(sparsity) if isinstance(sparsity, (int, float)) else str(sparsity)
        text = f"{stage.get('method', 'gp')} sparsity {target}"
        mt = stage.get("min_threshold")
        return text + (f", MT {mt:g}%" if isinstance(mt, (int, float)) else "")
    scalars = {k: v for k, v in stage.items() if k != "kind" and not isinstance(v, (dict, list))}
    return ", ".join(f"{k}={v}" for k, v in scalars.items()) or "-"


def _epoch_range(start: float, end: float) -> str:
    """A span of 0-based global epochs ``[start, end)`` as ``start-end``, or ``@start`` when empty."""
    return f"{start:g}-{end:g}" if end > start else f"@{start:g}"


def _stages_table(record: RunRecord) -> str:
    """Markdown table of stages with the last primary metric seen in each, then the phases of each
    stage that has several (:func:`_phase_lines`).

    The ``Epochs`` column (0-based, end exclusive) is shown when the run recorded ``timeline.json``;
    a run of an earlier version only has the config, which does not give a GaP stage's length."""
    last: dict[int, dict[str, Any]] = {}
    for m in record.metrics:
        if isinstance(m.get("stage"), int):
            last[m["stage"]] = m
    column = f"Last {record.primary['short']}"
    spans = stage_spans(record) if record.timeline is not None else None
    rows = []
    for i, s in enumerate(record.stages):
        row = {"#": i, "Kind": s.get("kind", "?")}
        if spans is not None:
            row["Epochs"] = _epoch_range(*spans[i][:2])
        rows.append({**row, "Details": _stage_detail(s), column: _primary_value(record.primary, last.get(i))})
    table = markdown_table(rows) or "_No stages in config._\n"
    if spans is not None and rows:
        table += "\nEpochs are 0-based and end-exclusive (`1-3` is epochs 1 and 2), as in `sparsetrain plan`.\n"
    lines = _phase_lines(record)
    return table + ("\n" + "\n".join(lines) + "\n" if lines else "")


def _partition_text(partition: dict[str, Any]) -> str:
    """``P2: 3 layers (layer2.0.conv1.weight … fc.weight)``: 1-based name, target count, first and last target."""
    raw = partition.get("targets")
    targets = [str(t) for t in raw] if isinstance(raw, list) else []
    name = f"P{partition.get('index', 0) + 1}" if isinstance(partition.get("index"), int) else "P?"
    text = f"{name}: {len(targets)} layer{'' if len(targets) == 1 else 's'}"
    if len(targets) == 1:
        text += f" ({targets[0]})"
    elif targets:
        text += f" ({targets[0]} … {targets[-1]})"
    return text


def _phase_lines(record: RunRecord) -> list[str]:
    """One ``Phases`` line per stage with several phases (epochs 0-based, end exclusive), each grow
    step naming its partition, and a ``Partitions`` line with the layer count of each partition."""
    if record.timeline is None:
        return []
    lines = []
    phases = stage_phases(record)
    for i, stage in enumerate(record.timeline["stages"]):
        name = f"stage {i} ({stage.get('label') or stage.get('kind', '?')})"
        if i in phases:
            text = ", ".join(f"{label} (epochs {_epoch_range(start, end)})" for start, end, label in phases[i])
            lines.append(f"- Phases of {name}: {text}.")
        partitions = [p for p in stage.get("partitions") or [] if isinstance(p, dict)]
        if partitions:
            lines.append(f"- Partitions of {name}: " + "; ".join(_partition_text(p) for p in partitions) + ".")
    return lines


def _events_list(record: RunRecord) -> str:
    """Markdown bullet list of mask events with links to their per-layer CSVs."""
    if not record.events:
        return "_No mask events._\n"
    lines = []
    for e in record.events:
        sparsity = e.get("sparsity")
        text = (
            f"- epoch {e.get('epoch', '?')}, step {e.get('step', '?')} (stage {e.get('stage', '?')}, "
            f"{e.get('kind', '?')}): {e.get('label', '')}"
        )
        if isinstance(sparsity, (int, float)):
            text += f" → sparsity {sparsity:.4f}"
        if e.get("csv"):
            text += f" ([csv]({e['csv']}))"
        lines.append(text)
    return "\n".join(lines) + "\n"


def _layers_table(record: RunRecord) -> str:
    """Markdown table of the last per-layer CSV plus a totals row."""
    if not record.layers:
        return "_No per-layer sparsity recorded._\n"
    rows = [
        {
            "Layer": r["layer"],
            "Shape": r["shape"],
            "Numel": r["numel"],
            "Kept": r["kept"],
            "Sparsity": f"{r['sparsity']:.4f}",
            "Target": "" if r["target"] is None else f"{r['target']:.4f}",
        }
        for r in record.layers
    ]
    totals = layer_totals(record.layers)
    rows.append(
        {
            "Layer": "**total**",
            "Numel": totals["numel"],
            "Kept": totals["kept"],
            "Sparsity": f"{totals['sparsity']:.4f}",
        }
    )
    source = record.layers_csv.relative_to(record.run_dir).as_posix() if record.layers_csv else "?"
    return f"From `{source}`.\n\n" + markdown_table(rows, ["Layer", "Shape", "Numel", "Kept", "Sparsity", "Target"])


def _format_seconds(seconds: float | None) -> str:
    """Seconds as ``123.4 s (2m 03s)``; 'unknown' for None."""
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f} s ({clock})"


def render_markdown(record: RunRecord) -> str:
    """The full report.md text for a run (images referenced by relative file name)."""
    best = best_metrics(record)
    seconds, source = wall_time(record)
    parts = [f"# Run report: {record.name}\n"]
    if record.missing:
        parts.append("**Missing or incomplete:**\n\n" + "\n".join(f"- {m}" for m in record.missing) + "\n")
    parts.append("## Result\n\n" + markdown_table([method_row(record)]))
    if best:
        where = f"epoch {best.get('epoch', '?')} (stage {best.get('stage', '?')})"
        parts.append(f"Best test {record.primary['log']} {_primary_value(record.primary, best)} at {where}.\n")
    if record.summary and "model_numel" in record.summary:
        parts.append(
            f"Parameters: {record.summary['model_numel']} in the model, "
            f"{record.summary.get('target_numel', '?')} prunable targets.\n"
        )
    parts.append(f"Wall time: {_format_seconds(seconds)} — from {source}.\n")
    parts.append("## Stages\n\n" + _stages_table(record))
    parts.append("## Mask events\n\n" + _events_list(record))
    parts.append("## Final per-layer sparsity\n\n" + _layers_table(record))
    parts.append(
        "## Plots\n\n"
        f"![test {record.primary['log']}, losses and sparsity vs epoch]({METRICS_PLOT_NAME})\n\n"
        f"![final per-layer sparsity]({LAYER_PLOT_NAME})\n"
        + "".join(f"\n![{caption}]({file})\n" for file, caption in _task_figures(record))
    )
    return "\n".join(parts)


def _task_figures(record: RunRecord) -> list[tuple[str, str]]:
    """``(file, caption)`` of the pictures the task wrote (``summary.json``'s ``figures``) that exist."""
    figures = (record.summary or {}).get("figures")
    if not isinstance(figures, list):
        return []
    return [(str(f["file"]), str(f.get("caption", f["file"]))) for f in figures
            if isinstance(f, dict) and "file" in f and (record.run_dir / str(f["file"])).is_file()]


# --------------------------------------------------------------------------- plots


def _placeholder(ax: Any, text: str) -> None:
    """Blank axes showing a centred message (used when there is no data to plot)."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="gray")


PHASE_LABEL_MAX = 8
"""Phases of one stage are named on the plot only when the stage has at most this many ..."""
PHASE_LABEL_MIN_WIDTH = 0.04
"""... and each is at least this fraction of the plotted epoch range wide."""
_PHASE_ALPHAS = (0.05, 0.14)


def _mark_stages(ax: Any, spans: list[tuple[float, float, str]], label: bool,
                 phases: dict[int, list[tuple[float, float, str]]] | None = None) -> None:
    """Shade each training stage, draw a vertical line at each stage start, optionally name the kind.

    Labels of stages starting at the same epoch (e.g. a prune stage and the finetune after it) stack.
    A stage with ``phases[i]`` (see :func:`stage_phases`) is shaded phase by phase instead, in
    alternating light shades of its colour (a ``finetune`` phase in the fine-tuning colour); with
    ``label``, each phase is named inside its span when there is room (:data:`PHASE_LABEL_MAX`,
    :data:`PHASE_LABEL_MIN_WIDTH`).
    """
    phases = phases or {}
    stacked: dict[float, int] = {}
    total = max((end for _, end, _ in spans), default=0.0) - min((start for start, _, _ in spans), default=0.0)
    for i, (start, end, kind) in enumerate(spans):
        color = _STAGE_COLORS.get(kind, f"C{(i + 3) % 10}")
        if i in phases:
            parts = phases[i]
            named = label and len(parts) <= PHASE_LABEL_MAX and total > 0 and \
                all(b - a >= PHASE_LABEL_MIN_WIDTH * total for a, b, _ in parts)
            for k, (a, b, text) in enumerate(parts):
                shade = _STAGE_COLORS["finetune"] if text == "finetune" else color
                ax.axvspan(a, b, color=shade, alpha=_PHASE_ALPHAS[k % 2], lw=0)
                if named:
                    ax.text((a + b) / 2, 0.03, text, transform=ax.get_xaxis_transform(), ha="center",
                            va="bottom", rotation=90, fontsize=7, color=shade, alpha=0.9)
        elif end > start:
            ax.axvspan(start, end, color=color, alpha=0.07, lw=0)
        ax.axvline(start, color=color, ls="--" if end > start else "-", lw=1, alpha=0.8)
        if label:
            row = stacked[start] = stacked.get(start, -1) + 1
            ax.text(
                start, 1.01 + 0.07 * row, f" {i}:{kind}", transform=ax.get_xaxis_transform(),
                ha="left", va="bottom", fontsize=8, color=color,
            )


def _sparsity_series(record: RunRecord) -> tuple[list[float], list[float]]:
    """Sparsity (fraction) vs epoch from evaluations and mask events, in time order.

    An event sorts after the evaluations of earlier stages at the same epoch and before those of its own.
    """
    points = [
        (m["epoch"], m.get("stage", 0), 1, m["sparsity"])
        for m in record.metrics
        if m.get("epoch") is not None and m.get("sparsity") is not None
    ]
    points += [
        (e["epoch"], e.get("stage", 0), 0, e["sparsity"])
        for e in record.events
        if e.get("epoch") is not None and e.get("sparsity") is not None
    ]
    points.sort(key=lambda p: p[:3])
    return [p[0] for p in points], [p[3] for p in points]


def plot_metrics(record: RunRecord) -> Any:
    """Figure: the test primary metric and sparsity (fraction, right axis) on top; train/test loss below."""
    fig, (ax_acc, ax_loss) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    fig.suptitle(f"{record.name}: metrics vs epoch")
    if not record.metrics:
        _placeholder(ax_acc, "no metrics recorded (metrics.jsonl missing or empty)")
        ax_loss.set_axis_off()
        return fig
    spans, phases = stage_spans(record), stage_phases(record)
    epochs = [m.get("epoch") for m in record.metrics]

    def series(key: str) -> tuple[list[Any], list[Any]]:
        pairs = [(e, m[key]) for e, m in zip(epochs, record.metrics) if e is not None and m.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    primary = record.primary
    ax_acc.plot(*series(primary["key"] or ""), "o-", ms=3, color="tab:blue", label=f"test {primary['log']}")
    ax_acc.set_ylabel(f"test {primary['log']}" + (" (%)" if primary.get("percent") else ""))
    ax_sp = ax_acc.twinx()
    ax_sp.step(*_sparsity_series(record), where="post", color="tab:red", alpha=0.8, label="sparsity")
    ev = [(e["epoch"], e["sparsity"]) for e in record.events if None not in (e.get("epoch"), e.get("sparsity"))]
    if ev:
        ax_sp.plot(*zip(*ev), "v", color="tab:red", ms=7, label="mask event")
    ax_sp.set_ylabel("sparsity (fraction)", color="tab:red")
    ax_sp.set_ylim(-0.02, 1.02)
    handles = ax_acc.get_legend_handles_labels()[0] + ax_sp.get_legend_handles_labels()[0]
    ax_acc.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8)

    ax_loss.plot(*series("train/loss"), "o-", ms=3, label="train loss")
    ax_loss.plot(*series("test/loss"), "s-", ms=3, label="test loss")
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("epoch (completed)")
    ax_loss.legend(loc="upper left", bbox_to_anchor=(1.1, 1.0), fontsize=8)
    _mark_stages(ax_acc, spans, label=True, phases=phases)
    _mark_stages(ax_loss, spans, label=False, phases=phases)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_layer_sparsity(record: RunRecord) -> Any:
    """Figure: horizontal bar per layer of its final sparsity (fraction), target as a black marker."""
    n = len(record.layers)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * n + 1.5)))
    if not n:
        _placeholder(ax, "no per-layer sparsity recorded (no mask events)")
        return fig
    names = [r["layer"] for r in record.layers]
    ys = range(n)
    ax.barh(ys, [r["sparsity"] for r in record.layers], color="tab:red", alpha=0.75, label="final sparsity")
    targets = [(y, r["target"]) for y, r in zip(ys, record.layers) if r["target"] is not None]
    if targets:
        ax.plot([t for _, t in targets], [y for y, _ in targets], "|", color="black", ms=14, mew=2, label="target")
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    totals = layer_totals(record.layers)
    ax.set_title(f"{record.name}: final per-layer sparsity (overall {totals['sparsity']:.4f})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- writing


def _save_figure(fig: Any, path: Path) -> None:
    """Render a figure to PNG bytes, write them atomically, and close the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_report(run_dir: str | os.PathLike[str], primary: dict[str, Any] | None = None) -> Path:
    """Write ``report.md``, ``plot_metrics.png`` and ``plot_layer_sparsity.png`` into the run dir.

    Returns the path of report.md. Plots with no data show a 'no data' message instead.
    """
    record = load_run(run_dir, primary)
    _save_figure(plot_metrics(record), record.run_dir / METRICS_PLOT_NAME)
    _save_figure(plot_layer_sparsity(record), record.run_dir / LAYER_PLOT_NAME)
    report = record.run_dir / REPORT_NAME
    atomic_write(report, render_markdown(record))
    return report
