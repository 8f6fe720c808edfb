"""The task protocol: a task of one's own (tests/toy_regression_task.py, registered through `imports:`)
goes through run, plan, eval, report and resume with no runner change; metric keys are test/<m>,
train/loss; runs of earlier versions (test_top1, test_loss, train_loss) stay readable."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from sparsetrain.cli import main
from sparsetrain.config import ConfigError, load_config, parse_config
from sparsetrain.demo import run_demo
from sparsetrain.runner.train import Preempted, run
from sparsetrain.tasks import ClassificationTask, build_task, get_task, task_kinds
from conftest import torchrun

TESTS = Path(__file__).parent


def _toy(tmp_path: Path, name: str, **extra) -> Path:
    config = {
        "name": name, "output_dir": str(tmp_path / name), "seed": 3, "threads": 1,
        "imports": ["toy_regression_task"],
        "task": {"kind": "toy_regression", "dataset": {"name": "digits"},
                 "model": {"name": "mlp", "options": {"hidden": [16]}}},
        "data": {"batch_size": 100, "eval_batch_size": 100},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "training": {"progress": False},
        "stages": [{"kind": "dense", "epochs": 2}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
                   {"kind": "finetune", "epochs": 2}],
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_task_kind_is_checked_against_the_registry():
    assert "classification" in task_kinds()
    with pytest.raises(ConfigError) as err:
        parse_config({"task": {"kind": "speech"}, "stages": [{"kind": "dense", "epochs": 1}]})
    message = str(err.value)
    assert "\n" not in message and "task.kind='speech'" in message and "registered: classification, " in message
    assert "translation" in message


def test_an_import_that_fails_is_one_line_naming_the_module():
    with pytest.raises(ConfigError, match=r"^imports: cannot import module 'no_such_module_xyz' \(ModuleNotFoundError"):
        parse_config({"imports": ["no_such_module_xyz"], "stages": [{"kind": "dense", "epochs": 1}]})
    with pytest.raises(ConfigError, match="must be a list of module names"):
        parse_config({"imports": "toy_regression_task", "stages": [{"kind": "dense", "epochs": 1}]})


def test_defaults_keep_the_fingerprint_of_earlier_runs():
    config = parse_config({"stages": [{"kind": "dense", "epochs": 1}]})
    payload = config.model_dump(mode="json")
    assert payload["imports"] == [] and payload["training"]["max_eval_batches"] is None
    changed = parse_config({"training": {"max_eval_batches": 2}, "stages": [{"kind": "dense", "epochs": 1}]})
    assert changed.fingerprint() != config.fingerprint()


def _digits_mlp():
    """(classification task on digits, an MLP 64-8-10, a loader of its evaluation split in batches of 50)."""
    config = parse_config({"task": {"model": {"name": "mlp", "options": {"hidden": [8]}}},
                           "stages": [{"kind": "dense", "epochs": 1}]})
    task = build_task(config)
    return task, task.build_model(), DataLoader(task.eval_set, batch_size=50)


def test_max_eval_batches_bounds_classification_evaluation():
    task, model, loader = _digits_mlp()
    full = task.evaluate(model, loader, torch.device("cpu"))
    first = task.evaluate(model, loader, torch.device("cpu"), max_batches=1)
    assert set(full) == {"loss", "top1"} and ClassificationTask.PRIMARY == ("top1", "max")
    batch = next(iter(loader))
    logits = model(batch[0])
    assert first["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == batch[1]).float().mean()))


def test_toy_task_through_run_plan_eval_report_and_resume(tmp_path, capsys, monkeypatch):
    path = _toy(tmp_path, "toy", training={"progress": False, "max_eval_batches": 2})
    assert main(["plan", str(path)]) == 0
    assert "compute:" in capsys.readouterr().out
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "toy"
    metrics = _jsonl(run_dir / "metrics.jsonl")
    assert {"train/loss", "test/loss", "test/mae"} <= set(metrics[0])
    assert all(m["test/seen"] == 200 for m in metrics)  # max_eval_batches=2 of 100 examples
    assert "mse" in out and "test_loss" not in json.dumps(metrics)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["primary"]["key"] == "test/loss" and summary["primary"]["mode"] == "min"
    final_masks = [m for m in metrics if m["events_applied"] == 1]
    assert summary["best"] == min(final_masks, key=lambda m: m["test/loss"])  # lower is better
    report = (run_dir / "report.md").read_text()
    assert "| Test MSE | Best MSE |" in report and f"{summary['best']['test/loss']:.4f}" in report

    assert main(["eval", str(run_dir / "model_final.pt"), "--config", str(path)]) == 0
    assert f"mse {summary['final']['test/loss']:.4f}" in capsys.readouterr().out
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report

    # Stopped by SIGTERM in the middle of the fine-tuning, resumed through the CLI: same weights.
    stopped = _toy(tmp_path, "stopped", training={"progress": False, "max_eval_batches": 2})
    task_class = get_task("toy_regression")
    original, calls = task_class.loss, {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 40:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch)

    monkeypatch.setattr(task_class, "loss", loss)
    with pytest.raises(Preempted):
        run(load_config(stopped), log=lambda line: None)
    monkeypatch.setattr(task_class, "loss", original)
    assert main(["run", "--resume", str(tmp_path / "stopped")]) == 0
    ours = torch.load(tmp_path / "stopped" / "model_final.pt", weights_only=True)
    theirs = torch.load(run_dir / "model_final.pt", weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert strip(_jsonl(tmp_path / "stopped" / "metrics.jsonl")) == strip(metrics)


def _legacy(run_dir: Path) -> None:
    """Rewrite a finished run's files as versions before the task protocol wrote them."""
    def old(row: dict) -> dict:
        return {("train_loss" if k == "train/loss" else k.replace("test/", "test_")): v for k, v in row.items()}

    rows = _jsonl(run_dir / "metrics.jsonl")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(old(r)) + "\n" for r in rows))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary = {**summary, "final": old(summary["final"]), "best": old(summary["best"])}
    del summary["primary"]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_runs_of_earlier_versions_stay_readable_by_report_and_demo(tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    config = {"name": "dense", "seed": 0, "threads": 1, "task": {"model": {"name": "mlp", "options": {"hidden": [8]}}},
              "data": {"batch_size": 128}, "optimizer": {"name": "sgd", "lr": 0.05}, "training": {"progress": False},
              "stages": [{"kind": "dense", "epochs": 1}]}
    (configs / "0_dense.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "demo"
    first = run_demo(out, configs, log=lambda line: None)
    report = (out / "0_dense" / "report.md").read_text()
    assert "Top-1 Accuracy" in first.table and "Best test top-1" in report
    _legacy(out / "0_dense")
    (out / "0_dense" / "report.md").unlink()
    again = run_demo(out, configs, log=lambda line: None)
    assert again.kept == ["0_dense"] and again.table == first.table
    assert (out / "0_dense" / "report.md").read_text() == report
    (out / "0_dense" / "report.md").unlink()
    assert main(["report", str(out / "0_dense")]) == 0
    assert (out / "0_dense" / "report.md").read_text() == report


@pytest.mark.slow
def test_toy_task_under_two_gloo_processes_matches_one(tmp_path):
    stages = [{"kind": "dense", "epochs": 1}]
    single = run(load_config(_toy(tmp_path, "single", stages=stages)), log=lambda line: None)
    multi = _toy(tmp_path, "multi", stages=stages)
    out = torchrun(multi, pythonpath=TESTS)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data parallel over 2 processes" in out.stdout
    theirs = torch.load(tmp_path / "multi" / "model_final.pt", weights_only=True)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(theirs[key], value, rtol=1e-4, atol=1e-5)  # float reduction order only


def test_a_task_with_its_own_batching_drives_the_loop_and_resumes_exactly(tmp_path, monkeypatch):
    """The runner trains exactly the task's batches (sizes differ per step), plans with the task's
    steps per epoch, and resumes from the middle of an epoch with the same weights."""
    budget = {"task": {"kind": "toy_budget_regression", "dataset": {"name": "digits"},
                       "model": {"name": "mlp", "options": {"hidden": [16]}}},
              "data": {"batch_size": 50, "eval_batch_size": 200},
              "training": {"progress": False, "checkpoint_every_steps": 5}}
    config = load_config(_toy(tmp_path, "budget", **budget))
    task = build_task(config)
    spe = task.steps_per_epoch()
    expected = [len(shard) for epoch in range(4) for shard in task.epoch_batches(epoch)[0]]
    assert len(set(expected)) > 3 and spe != -(-len(task.train_set) // 50)  # not the default batching
    task_class = get_task("toy_budget_regression")
    original, seen = task_class.loss, []

    def loss(self, model, batch):
        seen.append(len(batch[0]))
        if len(seen) == spe * 2 + 7 and stopping:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch)

    monkeypatch.setattr(task_class, "loss", loss)
    stopping = False
    whole = run(config, log=lambda line: None)
    assert seen == expected
    timeline = json.loads((tmp_path / "budget" / "timeline.json").read_text())
    assert timeline["steps_per_epoch"] == spe

    stopping = True
    seen.clear()
    stopped = load_config(_toy(tmp_path, "budget_stopped", **budget))
    with pytest.raises(Preempted):
        run(stopped, log=lambda line: None)
    stopping = False
    resumed = run(stopped, resume=True, log=lambda line: None)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_eval_batches_bounds_and_restores_the_model_mode():
    task, model, loader = _digits_mlp()
    modes = [model.training for _ in task.eval_batches(model, loader, torch.device("cpu"), max_batches=3)]
    assert modes == [False, False, False] and model.training  # 3 batches in eval mode, then train mode again
    for _ in task.eval_batches(model.eval(), loader, torch.device("cpu")):
        break  # abandoned early: the mode it had (eval) comes back
    assert not model.training
