"""training.loggers: TensorBoard event files and an offline W&B run hold the run's metrics, per-layer sparsity
and report plots."""

from __future__ import annotations

import json

import pytest
import yaml

from sparsetrain.cli import main
from sparsetrain.config import parse_config
from tiny_config import tiny_config


def _run(tmp_path, loggers, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = tiny_config(output_dir=str(tmp_path / "run"), training={"progress": False, "loggers": loggers})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    return tmp_path / "run", [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_metrics_layer_sparsity_and_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records = _run(tmp_path, ["tensorboard"], monkeypatch, capsys)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"test/top1", "train/loss", "lr", "sparsity"} <= set(tags["scalars"])
    top1 = [(e.step, e.value) for e in events.Scalars("test/top1")]
    assert top1 == [(r["step"], pytest.approx(r["test/top1"])) for r in records]  # every evaluation, at its step
    layers = [t for t in tags["scalars"] if t.startswith("layer_sparsity/")]
    assert sorted(layers) == ["layer_sparsity/1.weight", "layer_sparsity/3.weight"]
    assert sum(e.value for t in layers for e in events.Scalars(t)) > 0  # the GP prune's per-layer sparsity
    assert {"report/plot_metrics", "report/plot_layer_sparsity"} <= set(tags["images"])


def _wandb_history(path) -> list[dict]:
    """The ``history`` records of an offline W&B run file, read independently of wandb's writer: the file is a
    7-byte header (``:W&B``, magic, version) then 32 KiB blocks of records framed as in LevelDB's log (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last), each a ``wandb_internal_pb2.Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, chunks, pending = 7, 32768, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        payload, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 0:
            break
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            chunks.append(pending)
    history = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


def test_wandb_offline_run_holds_every_evaluation_and_the_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    run_dir, records = _run(tmp_path, ["wandb"], monkeypatch, capsys)
    files = sorted((run_dir / "wandb").rglob("run-*.wandb"))
    assert len(files) == 2  # the training run, then the same run id resumed for the report's plots
    assert len({f.stem for f in files}) == 1 and json.loads((run_dir / "wandb_run.json").read_text())["id"] in files[0].stem
    history = _wandb_history(files[0])
    evaluations = [h for h in history if "test/top1" in h]
    assert [(h["step"], h["test/top1"]) for h in evaluations] == [(r["step"], pytest.approx(r["test/top1"]))
                                                                  for r in records]
    assert any("layer_sparsity/1.weight" in h for h in history)
    images = [key for h in _wandb_history(files[1]) for key in h if key.startswith("report/")]
    assert {"report/plot_metrics/_type", "report/plot_layer_sparsity/_type"} <= set(images)


def test_loggers_do_not_change_the_fingerprint_and_jsonl_is_always_on():
    base = parse_config(tiny_config())
    with_tb = parse_config(tiny_config(training={"progress": False, "loggers": ["tensorboard"]}))
    assert with_tb.training.loggers == ["jsonl", "tensorboard"] and with_tb.fingerprint() == base.fingerprint()


def test_the_logging_example_runs_in_smoke_mode(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "logging_example", Path(__file__).parents[1] / "examples" / "logging_tensorboard.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--out", str(tmp_path), "--smoke"]) == 0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
