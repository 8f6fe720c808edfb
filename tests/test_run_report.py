"""Run reports from hand-written run directories: table rows, markdown, PNGs, missing files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sparsetrain.reports import load_run as _load_run
from sparsetrain.reports import markdown_table, method_row, result_columns
from sparsetrain.reports import write_report as _write_report
from sparsetrain.tasks import ClassificationTask

# The hand-written runs below are in the format of earlier versions (metric keys test_top1, test_loss,
# train_loss; no primary metric in summary.json): the caller says which task they ran, as the CLI does.
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


def test_dense_method_row(tmp_path):
    record = load_run(make_dense_run(tmp_path))
    row = method_row(record)
    assert row == {
        "Model": "small_resnet (width 16)",
        "Method": "Dense",
        "Partition": "-",
        "Sparsity Ratio": "0",
        "Sparsity Distribution": "Dense",
        "Top-1 Accuracy": "90.50%",
        "Best Top-1": "91.25%",
        "Measured Sparsity": "0.0000",
    }
    assert tuple(row) == result_columns(record.primary)


def test_gpmt_method_row(tmp_path):
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


def test_write_report_gpmt(tmp_path):
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
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_write_report_dense(tmp_path):
    run = make_dense_run(tmp_path)
    text = write_report(run).read_text()
    _assert_png(run / "plot_metrics.png")
    _assert_png(run / "plot_layer_sparsity.png")
    assert "90.50%" in text
    assert "No mask events" in text and "No per-layer sparsity recorded" in text


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
