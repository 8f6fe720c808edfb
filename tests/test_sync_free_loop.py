"""No host sync per step: on an accelerator the training loss is summed on the device and read every
``training.stop_check_every`` steps (the CPU reads every step, where it costs nothing). These tests
force the accelerator's interval on the CPU: the run must be the same, read the loss only at the
intervals, and still stop on a non-finite loss, naming the window it happened in."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_config import tiny_config

from sparsetrain.config import load_config
from sparsetrain.runner import train
from sparsetrain.runner.train import TrainingDiverged, run
from sparsetrain.tasks import ClassificationTask

STEPS_PER_EPOCH = 13  # digits: 1,258 training examples in batches of 100
INTERVAL = 5


def _config(tmp_path, name, stages, **training):
    config = tiny_config(name=name, output_dir=str(tmp_path / name), data={"batch_size": 100},
                         training={"progress": False, **training}, stages=stages)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


@pytest.fixture
def accelerator_interval(monkeypatch):
    monkeypatch.setattr(train, "loss_read_interval", lambda device, every: INTERVAL)


def test_reading_the_loss_at_intervals_changes_nothing(tmp_path, monkeypatch):
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
              {"kind": "finetune", "epochs": 2}]
    every_step = run(_config(tmp_path, "every_step", stages), log=lambda line: None)
    monkeypatch.setattr(train, "loss_read_interval", lambda device, every: INTERVAL)
    at_intervals = run(_config(tmp_path, "intervals", stages), log=lambda line: None)
    assert _metrics(tmp_path / "intervals") == _metrics(tmp_path / "every_step")  # train/loss included, exactly
    for key, value in every_step.model.state_dict().items():
        assert torch.equal(at_intervals.model.state_dict()[key], value), key


def test_the_loss_is_read_only_at_the_intervals_and_the_epoch_end(tmp_path, monkeypatch, accelerator_interval):
    reads = {"inside": False, "n": 0}
    to_float, train_epoch = torch.Tensor.__float__, train._Run.train_epoch

    def counted_float(self):
        reads["n"] += reads["inside"]
        return to_float(self)

    def counted_epoch(self, *args, **kwargs):
        reads["inside"] = True
        try:
            return train_epoch(self, *args, **kwargs)
        finally:
            reads["inside"] = False

    monkeypatch.setattr(torch.Tensor, "__float__", counted_float)
    monkeypatch.setattr(train._Run, "train_epoch", counted_epoch)
    run(_config(tmp_path, "count", [{"kind": "dense", "epochs": 2}]), log=lambda line: None)
    steps = range(1, 2 * STEPS_PER_EPOCH + 1)  # global step counts after each update
    windows = [s for s in steps if s % INTERVAL == 0 or s % STEPS_PER_EPOCH == 0]  # 5, 10, 13, 15, 20, 25, 26
    assert reads["n"] == len(windows) + 2  # + each epoch's mean: 9 reads, not one per step (26)


def _poison_fifth_call(monkeypatch):
    original, calls = ClassificationTask.cross_entropy, {"n": 0}

    def poisoned(logits, labels, label_smoothing=0.0):
        calls["n"] += 1
        loss = original(logits, labels, label_smoothing)
        return loss * float("nan") if calls["n"] == 7 else loss  # step 6

    monkeypatch.setattr(ClassificationTask, "cross_entropy", staticmethod(poisoned))


def test_a_nonfinite_loss_still_stops_the_run_naming_its_window(tmp_path, monkeypatch, accelerator_interval):
    _poison_fifth_call(monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"training loss became nan between steps 5 and 9 \(stage 0 dense, "
                       r"epoch 1; read every 5 steps\); first non-finite tensor now: parameter '1.weight'"):
        run(_config(tmp_path, "diverges", [{"kind": "dense", "epochs": 2}]), log=lambda line: None)
    assert not (tmp_path / "diverges" / "model_final.pt").exists()


def test_skip_still_decides_each_update(tmp_path, monkeypatch, accelerator_interval):
    _poison_fifth_call(monkeypatch)
    lines: list[str] = []
    result = run(_config(tmp_path, "skips", [{"kind": "dense", "epochs": 1}], on_nonfinite="skip"), log=lines.append)
    assert all(bool(torch.isfinite(p).all()) for p in result.model.parameters())
    assert any("training loss nan at step 6 (stage 0 dense, epoch 1): update skipped (1 so far)" in line
               for line in lines)
