"""Mixup (``training.mixup_alpha``) in classification training: the loss of a step equals a hand
computation with the same RNG draws, with label smoothing on both terms; off, nothing changes (no
RNG draw, the fingerprint of earlier configs); a run resumed mid-epoch equals an uninterrupted one;
a bad alpha, or a task that cannot mix, is a one-line error before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_config import tiny_config

from sparsetrain.config import ConfigError, load_config, parse_config
from sparsetrain.errors import UserError
from sparsetrain.runner.components import seed_everything
from sparsetrain.runner.train import run
from sparsetrain.tasks import ClassificationTask, build_task

LR = 0.5
ALPHA = 1.0  # the one-step test: Beta(1, 1), so lam is not pressed against 0 or 1 as with the recipe's 0.2
SMOOTHING = 0.1
TESTS = Path(__file__).parent


def _config_file(tmp_path: Path, name: str, **top_level) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_config(name=name, output_dir=str(tmp_path / name), **top_level)))
    return path


def _one_step(tmp_path: Path, name: str, **training):
    """One plain SGD step on the whole digits training split (1,258 examples) in one batch."""
    return load_config(_config_file(
        tmp_path, name, data={"batch_size": 4096}, optimizer={"name": "sgd", "lr": LR, "momentum": 0.0},
        lr_schedule={"kind": "constant"}, training={"progress": False, **training},
        stages=[{"kind": "dense", "epochs": 1}]))


def _train_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["train/loss"]


def test_one_step_loss_equals_the_hand_computation_with_the_same_draws(tmp_path):
    config = _one_step(tmp_path, "mixed", mixup_alpha=ALPHA, label_smoothing=SMOOTHING)
    # The run's RNG at its first step: seeded, then the task and the model built (nothing else draws).
    seed_everything(config.seed)
    task = build_task(config)
    model = task.build_model()
    (batch,), _ = task.epoch_batches(0)  # the run's one batch, in the run's (shuffled) order
    inputs = torch.stack([task.train_set[i][0] for i in batch])
    labels = torch.stack([task.train_set[i][1] for i in batch])
    alpha = torch.tensor(ALPHA, dtype=torch.float64)
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    perm = torch.randperm(labels.numel())
    assert 0.1 < lam < 0.9 and not torch.equal(perm, torch.arange(labels.numel()))  # a real mix
    with torch.no_grad():
        logits = model(lam * inputs + (1 - lam) * inputs[perm])
        expected = (lam * F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
                    + (1 - lam) * F.cross_entropy(logits, labels[perm], label_smoothing=SMOOTHING)).item()
        # the same loss as cross-entropy against the mixed smoothed soft targets
        smooth = F.one_hot(labels, logits.shape[1]).double() * (1 - SMOOTHING) + SMOOTHING / logits.shape[1]
        soft = lam * smooth + (1 - lam) * smooth[perm]
        assert abs(-(soft * logits.double().log_softmax(1)).sum(1).mean().item() - expected) < 1e-5
        # what a loss without mixup, or smoothing only the first term, would record
        unmixed = F.cross_entropy(model(inputs), labels, label_smoothing=SMOOTHING).item()
        half_smoothed = (lam * F.cross_entropy(logits, labels, label_smoothing=SMOOTHING)
                         + (1 - lam) * F.cross_entropy(logits, labels[perm])).item()
    run(config, log=lambda line: None)
    recorded = _train_loss(tmp_path / "mixed")
    assert abs(recorded - expected) < 1e-5
    assert abs(recorded - unmixed) > 1e-2 and abs(recorded - half_smoothed) > 1e-3


def test_mixup_off_draws_nothing_and_keeps_the_fingerprint(tmp_path):
    # The tiny config's fingerprint before mixup_alpha existed (and so of every run directory written
    # then): null or 0 leaves it alone, a value changes it.
    assert parse_config(tiny_config()).fingerprint() == "ec872b2226c4432b"
    for off in (None, 0, 0.0):
        config = parse_config(tiny_config(training={"progress": False, "mixup_alpha": off}))
        assert config.training.mixup_alpha is None and config.fingerprint() == "ec872b2226c4432b"
    assert parse_config(tiny_config(training={"mixup_alpha": 0.2})).fingerprint() != "ec872b2226c4432b"
    # Off, the loss draws nothing from the training RNG and is the plain (smoothed) cross-entropy.
    config = _one_step(tmp_path, "plain", label_smoothing=SMOOTHING)
    task = build_task(config)
    model = task.build_model()
    inputs = torch.stack([task.train_set[i][0] for i in range(8)])
    labels = torch.stack([task.train_set[i][1] for i in range(8)])
    state = torch.get_rng_state()
    loss, count = task.loss(model, (inputs, labels))
    assert torch.equal(torch.get_rng_state(), state) and count == 8
    assert torch.equal(loss, F.cross_entropy(model(inputs), labels, label_smoothing=SMOOTHING))


def test_evaluation_does_not_mix(tmp_path):
    mixed = build_task(_one_step(tmp_path, "mixed", mixup_alpha=0.2))
    plain = build_task(_one_step(tmp_path, "plain"))
    torch.manual_seed(0)
    model = mixed.build_model()
    state = torch.get_rng_state()  # (iterating a DataLoader draws its base seed from the global RNG)
    with_mixup = mixed.evaluate(model, mixed.eval_loader(512), torch.device("cpu"))
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    assert with_mixup == plain.evaluate(model, plain.eval_loader(512), torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), after)  # evaluation with mixup set draws nothing more


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def _counting_loss(monkeypatch, crash_at: int) -> None:
    """Raise inside the ``crash_at``-th training loss (1-based), i.e. after ``crash_at - 1`` steps."""
    original = ClassificationTask.loss
    calls = {"n": 0}

    def counted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise RuntimeError("simulated crash")
        return original(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", counted)


def test_a_run_with_mixup_resumed_mid_epoch_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    top = {"data": {"batch_size": 100}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
           "stages": [{"kind": "dense", "epochs": 2}]}  # 13 steps per epoch
    training = {"progress": False, "mixup_alpha": 0.2, "label_smoothing": SMOOTHING}
    reference = run(load_config(_config_file(tmp_path, "reference", training=training, **top)), log=lambda s: None)
    crashed = load_config(_config_file(tmp_path, "crashed", training={**training, "checkpoint_every_steps": 4}, **top))
    _counting_loss(monkeypatch, 20)  # 19 steps done: the last checkpoint is at step 16, in the second epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, log=lambda s: None)
    assert torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=False)["position"]["step"] == 16
    monkeypatch.undo()
    resumed = run(crashed, resume=True, log=lambda s: None)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert _metrics(tmp_path / "reference") == _metrics(tmp_path / "crashed")  # train/loss included
    # and mixup acted: the same run without it ends elsewhere
    plain = run(load_config(_config_file(tmp_path, "plain", training={**training, "mixup_alpha": None}, **top)),
                log=lambda s: None)
    assert not torch.equal(plain.model.state_dict()["1.weight"], reference.model.state_dict()["1.weight"])


@pytest.mark.parametrize("alpha", ["-0.2", ".inf", ".nan", "-.inf"])
def test_a_bad_alpha_is_a_one_line_error_naming_the_key_and_range(tmp_path, alpha):
    path = _config_file(tmp_path, "bad")
    with pytest.raises(ConfigError) as error:
        load_config(path, [f"training.mixup_alpha={alpha}"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("training.mixup_alpha=")
    assert "must be a finite number > 0 (null or 0: off)" in message


def test_a_task_that_cannot_mix_refuses_mixup_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    config = {"name": "toy", "output_dir": str(tmp_path / "toy"), "imports": ["toy_regression_task"],
              "task": {"kind": "toy_regression", "dataset": {"name": "digits"}, "model": {"name": "mlp"}},
              "training": {"progress": False, "mixup_alpha": 0.2}, "stages": [{"kind": "dense", "epochs": 1}]}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as error:
        run(load_config(path), log=lambda s: None)
    message = str(error.value)
    assert "\n" not in message and message.startswith("training.mixup_alpha=0.2: task 'toy_regression' cannot mix")
    assert not (tmp_path / "toy" / "metrics.jsonl").exists()
