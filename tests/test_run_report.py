"""Run reports: table rows, markdown, PNGs, stage and GaP phase spans, missing and damaged files.

Most tests read run directories written by real tiny runs (the ``real_runs`` fixture, run once per
module). The hand-written ones (``make_dense_run``, ``make_gpmt_run``) are kept only for what a real
run of this version cannot produce: the files of earlier versions (legacy metric keys, no
``timeline.json``, no primary metric) and damaged or missing files.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml
from tiny_config import tiny_config

from sparsetrain.config import parse_config
from sparsetrain.reports import load_run as _load_run
from sparsetrain.reports import markdown_table, method_row, render_markdown, result_columns
from sparsetrain.reports import write_report as _write_report
from sparsetrain.reports.run_report import plot_metrics, stage_phases, stage_spans
from sparsetrain.runner.train import run
from sparsetrain.tasks import ClassificationTask

# The hand-written runs below are in the format of earlier versions (metric keys test_top1, test_loss,
# train_loss; no primary metric in summary.json; no timeline.json): the caller says which task they ran,
# as the CLI does. They serve only the legacy-format and damaged-file tests; the others use real runs.
PRIMARY = ClassificationTask.primary()


def load_run(run_dir, primary=PRIMARY):
    return _load_run(run_dir, primary)


def write_report(run_dir, primary=PRIMARY):
    return _write_report(run_dir, primary)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metric(stage, kind, epoch, stage_epoch, top1, sparsity, **extra):
    return {
        "stage": stage, "stage_kind": kind, "epoch": epoch, "stage_epoch": stage_epoch, "step": epoch * 10,
        "lr": 0.05, "train_loss": 2.0 / epoch, "test_loss": 2.2 / epoch, "test_top1": top1,
        "sparsity": sparsity, "sparsity_all": sparsity * 0.95, "time_s": 1.5 * epoch, **extra,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config(name: str, stages: list[dict]) -> dict:
    return {
        "name": name,
        "task": {"model": {"name": "small_resnet", "options": {"width": 16}}, "dataset": {"name": "digits"}},
        "stages": stages,
    }


def make_dense_run(root: Path) -> Path:
    run = root / "dense"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_config("dense-run", [{"kind": "dense", "epochs": 3}])))
    metrics = [_metric(0, "dense", e, e, top1, 0.0) for e, top1 in [(1, 80.0), (2, 91.25), (3, 90.5)]]
    _write_jsonl(run / "metrics.jsonl", metrics)
    summary = {"final": metrics[-1], "best": metrics[1], "model_numel": 5000, "target_numel": 4800,
               "sparsity": 0.0, "wall_time_s": 4.5}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def make_gpmt_run(root: Path) -> Path:
    run = root / "gpmt"
    run.mkdir()
    stages = [
        {"kind": "dense", "epochs": 2},
        {"kind": "prune", "method": "gpmt", "sparsity": 0.9, "min_threshold": 0.5},
        {"kind": "finetune", "epochs": 2},
    ]
    (run / "config.yaml").write_text(yaml.safe_dump(_config("gpmt-run", stages)))
    metrics = [
        _metric(0, "dense", 1, 1, 85.0, 0.0),
        _metric(0, "dense", 2, 2, 93.0, 0.0, extra_key="ignored"),
        _metric(2, "finetune", 3, 1, 90.125, 0.9),
        _metric(2, "finetune", 4, 2, 92.3456, 0.9),
    ]
    _write_jsonl(run / "metrics.jsonl", metrics)
    (run / "sparsity").mkdir()
    (run / "sparsity" / "event_000_step20.csv").write_text(
        "layer,shape,numel,kept,sparsity,target\n"
        "stem.conv.weight,16x1x3x3,144,72,0.5,\n"
        "layer1.0.conv1.weight,16x16x3x3,2304,200,0.913194,0.9\n"
        "fc.weight,10x64,640,50,0.921875,0.9\n"
    )
    _write_jsonl(run / "events.jsonl", [{
        "step": 20, "epoch": 2, "stage": 1, "kind": "prune", "label": "gpmt 0.9 (MT 0.5%)",
        "sparsity": 0.8988, "csv": "sparsity/event_000_step20.csv",
    }])
    summary = {"final": metrics[-1], "best": metrics[1], "model_numel": 3200, "target_numel": 3088,
               "sparsity": 0.8988, "wall_time_s": 125.0}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_SIGNATURE)


# --------------------------------------------------------------------------- real runs

SGAP = {"kind": "sgap", "sparsity": 0.5, "partitions": {"scheme": "layers", "kappa": 3}, "epochs_per_step": 1,
        "rounds": 1, "finetune_epochs": 1, "grow_order": "random"}
PGAP = {"kind": "pgap", "sparsity": 0.5, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1,
        "rounds": 2, "finetune_epochs": 1}
MLP_3_TARGETS = {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [16, 16]}}}
REAL_RUNS = {
    # dense 1 epoch, then S-GaP over the 3 targets of an MLP 64-16-16-10: 4 grow steps + 1 fine-tuning epoch
    "sgap": {"task": MLP_3_TARGETS, "stages": [{"kind": "dense", "epochs": 1}, SGAP]},
    # P-GaP in one process (the workers one after another): 2 rounds + 1 fine-tuning epoch
    "pgap": {"stages": [PGAP]},
    "gp": {},  # tiny_config's own: dense 1 epoch, GP 0.5, fine-tune 1 epoch
    "dense": {"stages": [{"kind": "dense", "epochs": 2}]},
}


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories of real tiny runs (about 2 s in all); read-only: copy one with ``real_run``."""
    root = tmp_path_factory.mktemp("real_runs")
    return {name: Path(run(parse_config(tiny_config(name=name, output_dir=str(root / name), **overrides)),
                           log=lambda line: None).run_dir)
            for name, overrides in REAL_RUNS.items()}


@pytest.fixture
def real_run(real_runs, tmp_path):
    """A fresh copy of one of the real run directories, free to change."""
    return lambda name: Path(shutil.copytree(real_runs[name], tmp_path / name))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _timeline(run_dir: Path) -> dict:
    return json.loads((run_dir / "timeline.json").read_text())


@pytest.mark.parametrize("name", list(REAL_RUNS))
def test_stage_spans_are_the_recorded_timeline(real_runs, name):
    record = load_run(real_runs[name])
    assert record.timeline is not None and record.missing == ([] if name != "dense" else
                                                              ["events.jsonl: empty (no mask events recorded)",
                                                               "sparsity/*.csv: no per-layer sparsity table"])
    stages = _timeline(real_runs[name])["stages"]
    assert stage_spans(record) == [(s["start_epoch"], s["start_epoch"] + s["epochs"], s["kind"]) for s in stages]
    assert stage_spans(record)[-1][1] == record.metrics[-1]["epoch"]  # the spans cover every epoch trained
    for stage in stages:  # the phases of each stage cover it, in order
        position = stage["start_epoch"]
        for phase in stage["phases"]:
            assert phase["start_epoch"] == position and phase["epochs"] >= 1
            position += phase["epochs"]
        assert position == stage["start_epoch"] + stage["epochs"]


def test_sgap_phases_are_the_grow_steps_the_run_applied(real_runs):
    run_dir = real_runs["sgap"]
    record = load_run(run_dir)
    events = [e for e in _jsonl(run_dir / "events.jsonl") if e["stage"] == 1]
    grown = [int(re.search(r"grow P(\d+)$", e["label"]).group(1)) for e in events if e["kind"] != "gap_final"]
    assert len(grown) == 4 and len(set(grown)) == 3  # the first step and one round over kappa = 3
    final = events[-1]
    assert final["kind"] == "gap_final"
    expected = [(e["epoch"], e["epoch"] + 1, f"grow P{p}") for e, p in zip(events, grown)]
    expected.append((final["epoch"], record.metrics[-1]["epoch"], "finetune"))
    assert stage_phases(record) == {1: expected}
    recorded = _timeline(run_dir)["stages"][1]
    assert [p["grow"] for p in recorded["phases"]] == [[g - 1] for g in grown] + [[]]
    # the partitions name the run's targets (the rows of its per-layer tables), in target order
    layers = [row["layer"] for row in csv.DictReader((run_dir / final["csv"]).open())]
    assert [t for p in recorded["partitions"] for t in p["targets"]] == layers == ["1.weight", "3.weight", "5.weight"]
    assert [p["index"] for p in recorded["partitions"]] == [0, 1, 2]


def test_pgap_phases_are_the_rounds_the_run_applied(real_runs):
    run_dir = real_runs["pgap"]
    events = _jsonl(run_dir / "events.jsonl")
    starts = [e["epoch"] for e in events if e["kind"] == "pgap_round"]
    ends = [e["epoch"] for e in events if e["kind"] == "pgap_merge"]
    expected = [(a, b, f"round {r + 1}: 2 workers") for r, (a, b) in enumerate(zip(starts, ends))]
    expected.append((ends[-1], load_run(run_dir).metrics[-1]["epoch"], "finetune"))
    assert stage_phases(load_run(run_dir)) == {0: expected} and len(expected) == 3


def test_report_of_real_gap_runs_lists_and_shades_the_phases(real_run):
    for name, title in [("sgap", "stage 1 (S-GaP)"), ("pgap", "stage 0 (P-GaP)")]:
        run_dir = real_run(name)
        text = write_report(run_dir).read_text()
        _assert_png(run_dir / "plot_metrics.png")
        _assert_png(run_dir / "plot_layer_sparsity.png")
        assert "Missing" not in text
        record = load_run(run_dir)
        stage = _timeline(run_dir)["stages"][int(title.split()[1])]
        phases = ", ".join(f"{p['label']} (epochs {p['start_epoch']}-{p['start_epoch'] + p['epochs']})"
                           for p in stage["phases"])
        assert f"- Phases of {title}: {phases}." in text
        assert f"- Partitions of {title}: " in text
        start, end = stage["start_epoch"], stage["start_epoch"] + stage["epochs"]
        assert f"| {stage['index']} | {name} | {start}-{end} |" in text
        figure = plot_metrics(record)
        try:
            top = figure.axes[0]
            assert [t.get_text() for t in top.texts if t.get_rotation() == 90] == [p["label"] for p in stage["phases"]]
            shaded = [(p.get_x(), p.get_x() + p.get_width()) for p in top.patches]
            assert all((p["start_epoch"], p["start_epoch"] + p["epochs"]) in shaded for p in stage["phases"])
        finally:
            plt.close(figure)
    assert "- Partitions of stage 1 (S-GaP): P1: 1 layer (1.weight); P2: 1 layer (3.weight); " \
           "P3: 1 layer (5.weight)." in (run_dir.parent / "sgap" / "report.md").read_text()


@pytest.mark.parametrize("name", ["sgap", "gp"])
def test_a_run_without_timeline_json_still_reports(real_run, name):
    """Runs of earlier versions have no timeline.json: spans come from the config (GaP: zero width)."""
    run_dir = real_run(name)
    spans = stage_spans(load_run(run_dir))
    (run_dir / "timeline.json").unlink()
    record = load_run(run_dir)
    assert record.timeline is None and record.missing == []
    if name == "gp":
        assert stage_spans(record) == spans == [(0, 1, "dense"), (1, 1, "prune"), (1, 2, "finetune")]
    else:  # S-GaP's length is only in the layout
        assert stage_spans(record) == [(0, 1, "dense"), (1, 1, "sgap")] != spans
    assert stage_phases(record) == {}
    text = write_report(run_dir).read_text()
    _assert_png(run_dir / "plot_metrics.png")
    assert "Phases" not in text and "| Epochs |" not in text and "Missing" not in text
    assert method_row(record)["Method"] == {"gp": "GP", "sgap": "S-GaP"}[name]


@pytest.mark.parametrize("damage", ["{not json", "[]", '{"stages": []}', "stage_gap"])
def test_a_damaged_timeline_json_is_noted_and_the_config_used(real_run, damage):
    run_dir = real_run("gp")
    if damage == "stage_gap":  # stages that do not follow one another
        timeline = _timeline(run_dir)
        timeline["stages"][2]["start_epoch"] = 3
        damage = json.dumps(timeline)
    (run_dir / "timeline.json").write_text(damage)
    record = load_run(run_dir)
    assert record.timeline is None
    assert record.missing == ["timeline.json: unreadable (stage spans taken from config.yaml)"]
    assert stage_spans(record) == [(0, 1, "dense"), (1, 1, "prune"), (1, 2, "finetune")]
    assert "timeline.json: unreadable" in render_markdown(record)


@pytest.mark.parametrize("damage", ["past the end", "no phases"])
def test_stage_spans_without_usable_phases(real_run, damage):
    """Phases past their stage are ignored; a timeline.json without phases (written before they were
    recorded) still gives the stage spans."""
    run_dir = real_run("sgap")
    timeline = _timeline(run_dir)
    if damage == "past the end":
        timeline["stages"][1]["phases"][-1]["epochs"] += 1
    else:
        for stage in timeline["stages"]:
            del stage["phases"], stage["partitions"]
    (run_dir / "timeline.json").write_text(json.dumps(timeline))
    record = load_run(run_dir)
    assert stage_phases(record) == {} and stage_spans(record)[1] == (1, 6, "sgap") and record.missing == []


def test_gp_report_of_a_real_run(real_run):
    run_dir = real_run("gp")
    report = write_report(run_dir)
    assert report == run_dir / "report.md"
    _assert_png(run_dir / "plot_metrics.png")
    _assert_png(run_dir / "plot_layer_sparsity.png")
    text = report.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    row = method_row(load_run(run_dir))
    assert tuple(row) == result_columns(PRIMARY)
    assert (row["Model"], row["Method"], row["Partition"], row["Sparsity Ratio"], row["Sparsity Distribution"]) == \
        ("mlp", "GP", "-", "0.5", "Global")
    assert row["Top-1 Accuracy"] == f"{summary['final']['test/top1']:.2f}%"
    assert row["Measured Sparsity"] == f"{summary['sparsity']:.4f}"
    assert "# Run report: gp" in text and "Missing" not in text and "Phases" not in text
    for layer in csv.DictReader((run_dir / "sparsity" / "final.csv").open()):
        assert f"| {layer['layer']} | {layer['shape']} | {layer['numel']} | {layer['kept']} |" in text
    assert "| 0 | dense | 0-1 |" in text and "| 1 | prune | @1 |" in text and "| 2 | finetune | 1-2 |" in text
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_dense_report_of_a_real_run(real_run):
    run_dir = real_run("dense")
    record = load_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    row = method_row(record)
    assert row == {
        "Model": "mlp",
        "Method": "Dense",
        "Partition": "-",
        "Sparsity Ratio": "0",
        "Sparsity Distribution": "Dense",
        "Top-1 Accuracy": f"{summary['final']['test/top1']:.2f}%",
        "Best Top-1": f"{summary['best']['test/top1']:.2f}%",
        "Measured Sparsity": "0.0000",
    }
    text = write_report(run_dir).read_text()
    _assert_png(run_dir / "plot_metrics.png")
    _assert_png(run_dir / "plot_layer_sparsity.png")
    assert "No mask events" in text and "No per-layer sparsity recorded" in text


# --------------------------------------------------------------------------- earlier versions, damaged files


def test_gpmt_method_row_of_an_earlier_version(tmp_path):
    """No timeline.json: the labels come from the report's own tables of the config."""
    record = load_run(make_gpmt_run(tmp_path))
    assert record.missing == []
    assert [r["layer"] for r in record.layers] == ["stem.conv.weight", "layer1.0.conv1.weight", "fc.weight"]
    assert record.layers[0]["target"] is None and record.layers[1]["target"] == 0.9
    row = method_row(record)
    assert row["Method"] == "GPMT"
    assert row["Sparsity Distribution"] == "Global + MT 0.5%"
    assert row["Sparsity Ratio"] == "0.9"
    assert row["Top-1 Accuracy"] == "92.35%"
    assert row["Best Top-1"] == "93.00%"
    assert row["Measured Sparsity"] == "0.8988"
    assert row["Partition"] == "-"


def test_later_stage_kinds_are_generic(tmp_path):
    run = tmp_path / "gap"
    run.mkdir()
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "pgap", "epochs": 4, "partitions": 4, "sparsity": 0.8},
              {"kind": "weird", "epochs": 1}]
    (run / "config.yaml").write_text(yaml.safe_dump(_config("gap", stages[:2])))
    row = method_row(load_run(run))
    assert (row["Method"], row["Partition"], row["Sparsity Ratio"]) == ("P-GaP", "4", "0.8")
    assert row["Top-1 Accuracy"] == "n/a"
    (run / "config.yaml").write_text(yaml.safe_dump(_config("gap", stages)))
    assert method_row(load_run(run))["Method"] == "WEIRD"


@pytest.mark.parametrize("partitions, shown", [({"scheme": "layers", "kappa": 4}, "4"),
                                               ({"scheme": ["^a", "^b", "^c"], "kappa": None}, "3"),
                                               ({"scheme": "resnet_stages", "kappa": None}, "resnet_stages")])
def test_gap_config_partitions_and_distribution(tmp_path, partitions, shown):
    run = tmp_path / "sgap"
    run.mkdir()
    stage = {"kind": "sgap", "sparsity": 0.9, "partitions": partitions, "distribution": "non-uniform",
             "epochs_per_step": 1, "finetune_epochs": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(_config("sgap", [stage])))
    row = method_row(load_run(run))
    assert (row["Method"], row["Partition"], row["Sparsity Distribution"]) == ("S-GaP", shown, "Non-uniform")


def test_markdown_table(tmp_path):
    rows = [method_row(load_run(make_dense_run(tmp_path))), method_row(load_run(make_gpmt_run(tmp_path)))]
    text = markdown_table(rows)
    lines = text.splitlines()
    assert lines[0] == (
        "| Model | Method | Partition | Sparsity Ratio | Sparsity Distribution | Top-1 Accuracy "
        "| Best Top-1 | Measured Sparsity |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| small_resnet (width 16) | Dense | - | 0 | Dense | 90.50% | 91.25% | 0.0000 |"
    assert lines[3] == (
        "| small_resnet (width 16) | GPMT | - | 0.9 | Global + MT 0.5% | 92.35% | 93.00% | 0.8988 |"
    )
    assert len(lines) == 4
    assert markdown_table([{"a": "x|y"}]).splitlines()[2] == "| x\\|y |"
    assert markdown_table([]) == ""


def test_write_report_of_an_earlier_version_gpmt_run(tmp_path):
    run = make_gpmt_run(tmp_path)
    report = write_report(run)
    assert report == run / "report.md"
    _assert_png(run / "plot_metrics.png")
    _assert_png(run / "plot_layer_sparsity.png")
    text = report.read_text()
    assert "# Run report: gpmt-run" in text
    assert "92.35%" in text
    assert "| layer1.0.conv1.weight | 16x16x3x3 | 2304 | 200 | 0.9132 | 0.9000 |" in text
    assert "| stem.conv.weight | 16x1x3x3 | 144 | 72 | 0.5000 |  |" in text
    assert "| **total** |  | 3088 | 322 | 0.8957 |  |" in text
    assert "gpmt 0.9 (MT 0.5%)" in text
    assert "gpmt sparsity 0.9, MT 0.5%" in text
    assert "](plot_metrics.png)" in text and "](plot_layer_sparsity.png)" in text
    assert "125.0 s (2m 05s)" in text
    assert "Missing" not in text
    assert "| Epochs |" not in text and "Phases" not in text  # no timeline.json: nothing to lay out
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_missing_metrics_still_reports(tmp_path):
    run = make_gpmt_run(tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "summary.json").unlink()
    (run / "events.jsonl").write_text("")
    text = write_report(run).read_text()
    _assert_png(run / "plot_metrics.png")
    _assert_png(run / "plot_layer_sparsity.png")
    assert "metrics.jsonl: missing" in text
    assert "summary.json: missing" in text
    assert "events.jsonl: empty" in text
    assert "Wall time: unknown" in text
    # the per-layer table still comes from the CSV on disk
    assert "| fc.weight | 10x64 | 640 | 50 | 0.9219 | 0.9000 |" in text
    row = method_row(load_run(run))
    assert row["Top-1 Accuracy"] == "n/a" and row["Measured Sparsity"] == "0.8957"


def test_truncated_metrics_line_is_skipped(tmp_path):
    run = make_dense_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": 0, "epo')
    (run / "summary.json").unlink()
    record = load_run(run)
    assert len(record.metrics) == 3
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in record.missing
    assert method_row(record)["Top-1 Accuracy"] == "90.50%"
    assert "4.5 s" in write_report(run).read_text()


def test_no_config_is_value_error(tmp_path):
    with pytest.raises(ValueError, match="config.yaml") as info:
        load_run(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing"))):
        write_report(tmp_path / "missing")


def test_module_reads_files_only():
    import ast

    import sparsetrain.reports.run_report as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert relative <= {"errors", "atomic"}  # the exception module and atomic_write: standard library only
    assert "torch" not in imported and "sparsetrain" not in imported


def test_legacy_keys_are_converted_and_recorded_primary_wins(tmp_path):
    run = make_dense_run(tmp_path)
    record = _load_run(run)  # no primary known: generic columns, values n/a
    assert record.metrics[0]["test/top1"] == 80.0 and record.metrics[0]["train/loss"] == 2.0
    assert "test_top1" not in record.metrics[0]
    assert method_row(record)["Primary Metric"] == "n/a"
    summary = json.loads((run / "summary.json").read_text())
    summary["primary"] = {"key": "test/loss", "mode": "min", "title": "Test Loss", "short": "Loss", "log": "loss",
                          "percent": False}
    (run / "summary.json").write_text(json.dumps(summary))
    row = method_row(_load_run(run, PRIMARY))  # what the run recorded wins over what the caller says
    assert row["Test Loss"] == f"{2.2 / 3:.4f}" and "Best Loss" in row
