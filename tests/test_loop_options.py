"""Gradient clipping, label smoothing and bf16 autocast really act in the training loop.

Each test runs one optimizer step (the whole digits training split in one batch, plain SGD) and
compares what the run did with the same step computed here by hand: the tests fail if the loop
drops the option.
"""

from __future__ import annotations

import json

import torch
import yaml
from tiny_config import tiny_config

from sparsetrain.config import load_config
from sparsetrain.runner.components import seed_everything
from sparsetrain.runner.train import run
from sparsetrain.tasks import build_task

LR = 0.5


def _one_step_config(tmp_path, name, **training):
    config = tiny_config(name=name, output_dir=str(tmp_path / name), data={"batch_size": 4096},
                         optimizer={"name": "sgd", "lr": LR, "momentum": 0.0},
                         lr_schedule={"kind": "constant"},
                         training={"progress": False, **training}, stages=[{"kind": "dense", "epochs": 1}])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def _initial_model_and_batch(config):
    """The model exactly as the run initialises it, and the run's single training batch."""
    seed_everything(config.seed)
    task = build_task(config)
    model = task.build_model()
    inputs = torch.stack([task.train_set[i][0] for i in range(len(task.train_set))])
    labels = torch.stack([task.train_set[i][1] for i in range(len(task.train_set))])
    return model, inputs, labels


def _train_loss(run_dir) -> float:
    entry = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return entry.get("train/loss", entry.get("train_loss"))


def test_grad_clip_bounds_the_update(tmp_path):
    clip = 1e-3
    config = _one_step_config(tmp_path, "clipped", grad_clip=clip)
    before, _, _ = _initial_model_and_batch(config)
    after = run(config, log=lambda line: None).model
    delta = torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(after.parameters(), before.parameters())])
    # One plain SGD step moves the weights by lr x the clipped gradient, whose norm is exactly clip.
    torch.testing.assert_close(delta.norm().item(), LR * clip, rtol=1e-3, atol=0)


def test_label_smoothing_is_in_the_training_loss(tmp_path):
    config = _one_step_config(tmp_path, "smoothed", label_smoothing=0.3)
    model, inputs, labels = _initial_model_and_batch(config)
    with torch.no_grad():
        logits = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.3).item()
    plain = torch.nn.functional.cross_entropy(logits, labels).item()
    run(config, log=lambda line: None)
    recorded = _train_loss(tmp_path / "smoothed")
    assert abs(recorded - expected) < 1e-5 and abs(recorded - plain) > 1e-2


def test_bf16_autocast_is_in_the_forward_pass(tmp_path):
    config = _one_step_config(tmp_path, "bf16", amp="bf16")
    model, inputs, labels = _initial_model_and_batch(config)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(inputs)
        full = model(inputs)
    expected = torch.nn.functional.cross_entropy(low.float(), labels).item()
    fp32 = torch.nn.functional.cross_entropy(full, labels).item()
    assert expected != fp32
    run(config, log=lambda line: None)
    recorded = _train_loss(tmp_path / "bf16")
    assert abs(recorded - expected) < 1e-6 < abs(recorded - fp32)


def test_update_freq_splits_the_global_batch_without_changing_the_update(tmp_path):
    """Classification: update_freq 4 accumulates 4 micro-batches of the same global batch; the weights equal
    those of update_freq 1 up to float summation order, and both differ from no training."""
    from sparsetrain.config import parse_config
    from sparsetrain.runner.train import run
    from tiny_config import tiny_config

    def train(name: str, update_freq: int):
        raw = tiny_config(output_dir=str(tmp_path / name), training={"progress": False, "update_freq": update_freq})
        return run(parse_config(raw), log=lambda line: None).model.state_dict()

    whole, split = train("whole", 1), train("split", 4)
    for key, value in whole.items():
        torch.testing.assert_close(split[key], value, rtol=1e-4, atol=1e-6)
        assert torch.equal(split[key] == 0, value == 0), key  # the same GP masks


def test_bn_momentum_decays_by_epochs_of_each_segment(tmp_path, monkeypatch):
    """training.bn_momentum: max(initial * decay ** (epoch // every), minimum), restarting with each stage."""
    from torch import nn

    from sparsetrain.config import parse_config
    from sparsetrain.runner.train import run
    from tiny_config import tiny_config

    seen = []
    original = nn.modules.batchnorm._BatchNorm.forward

    def forward(self, x):
        if self.training:
            seen.append(self.momentum)
        return original(self, x)

    monkeypatch.setattr(nn.modules.batchnorm._BatchNorm, "forward", forward)
    raw = tiny_config(output_dir=str(tmp_path / "bn"), task={"dataset": {"name": "digits"}, "model": {
        "name": "small_resnet", "options": {"width": 4}}}, data={"batch_size": 1258},
        training={"progress": False, "bn_momentum": {"initial": 0.1, "decay": 0.5, "every": 2, "minimum": 0.03}},
        stages=[{"kind": "dense", "epochs": 5}, {"kind": "finetune", "epochs": 1}])
    run(parse_config(raw), log=lambda line: None)
    per_step = [seen[i] for i in range(0, len(seen), len(seen) // 6)]  # one step per epoch, every BN alike
    assert per_step == [0.1, 0.1, 0.05, 0.05, 0.03, 0.1]  # 0.025 is floored at 0.03; the finetune stage restarts
