"""``sparsetrain demo --task``: a task declares its demo (Task.DEMO, DEMO_DESCRIPTION); the toy regression
task's demo runs through the command line with its own metric; ``--task all`` runs every task that has a
demo, each into its directory; bad ``--task`` values are one-line errors; every method counts the epochs
its stages train (what the demo log prints) as a run trains them."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml

from sparsetrain.cli import main
from sparsetrain.config import parse_config
from sparsetrain.data import load_dataset
from sparsetrain.demo import DEMO_CONFIGS, demo_config_dir, run_demos, training_epochs
from sparsetrain.methods import REGISTRY, method_for
from sparsetrain.runner.train import run
from sparsetrain.tasks import ClassificationTask, get_task

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # toy_regression_task sits beside this file (any import mode)

from toy_regression_task import ToyRegressionTask  # registers "toy_regression" (after the path insert)

MODEL = {"name": "mlp", "options": {"hidden": [16]}}
TRAINING = {"seed": 0, "threads": 1, "data": {"batch_size": 256}, "optimizer": {"name": "sgd", "lr": 0.05},
            "lr_schedule": {"kind": "constant"}, "training": {"progress": False}}
PRUNED = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
          {"kind": "finetune", "epochs": 1}]


def _write(directory: Path, name: str, raw: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **raw}))


def _toy_demo(tmp_path: Path) -> Path:
    """Two tiny toy-regression configs: dense for 1 epoch; dense 1, GP 0.5, fine-tune 1."""
    configs = tmp_path / "toy_demo"
    task = {"kind": "toy_regression", "dataset": {"name": "digits"}, "model": MODEL}
    for name, stages in (("0_dense", [{"kind": "dense", "epochs": 1}]), ("1_gp", PRUNED)):
        _write(configs, name, {**TRAINING, "imports": ["toy_regression_task"], "task": task, "stages": stages})
    return configs


def _classification_demo(tmp_path: Path) -> Path:
    """One tiny classification config in place of the packaged demo (which takes minutes)."""
    configs = tmp_path / "classification_demo"
    _write(configs, "0_gp", {**TRAINING, "task": {"dataset": {"name": "digits"}, "model": MODEL}, "stages": PRUNED})
    return configs


def test_classification_declares_the_packaged_demo():
    assert demo_config_dir(ClassificationTask) == DEMO_CONFIGS
    assert DEMO_CONFIGS.parts[-2:] == ("configs", "demo") and sorted(DEMO_CONFIGS.glob("*.yaml"))
    assert "MNIST-1D" in ClassificationTask.DEMO_DESCRIPTION
    assert get_task("toy_regression").DEMO is None  # no demo unless the task declares one


def test_a_relative_demo_is_found_beside_the_task_module_and_not_inherited(monkeypatch):
    monkeypatch.setattr(ToyRegressionTask, "DEMO", "demo_configs/toy")
    assert demo_config_dir(ToyRegressionTask) == TESTS / "demo_configs" / "toy"

    class Subclass(ToyRegressionTask):  # another kind: the parent's configs would name the parent's kind
        pass

    assert demo_config_dir(Subclass) is None


def test_demo_task_toy_regression_through_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ToyRegressionTask, "DEMO", str(_toy_demo(tmp_path)))
    out = tmp_path / "out"
    assert main(["demo", "--task", "toy_regression", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== 1_gp: 3 stage(s), 2 epochs of training" in printed
    text = (out / "toy_regression" / "results.md").read_text()
    assert text.startswith("# sparsetrain demo\n\nTest MSE (lower is better) on each run's evaluation data")
    assert "| Test MSE | Best MSE |" in text and "| GP | - | 0.5 | Global |" in text
    assert "top-1" not in text.lower() and "MNIST-1D" not in text
    assert "Per-layer sparsity of the 0.5 rows:" in text and "1_gp (sparsity 0.5" in text
    assert "0_dense (sparsity" not in text  # only the rows at the highest target get a layer table
    assert (out / "toy_regression" / "0_dense" / "report.md").is_file() and not (out / "results.md").exists()


def test_demo_task_all_runs_every_task_with_a_demo(tmp_path, monkeypatch, capsys):
    from sparsetrain.tasks.detection import DetectionTask
    from sparsetrain.tasks.part_segmentation import PartSegmentationTask
    from sparsetrain.tasks.translation import TranslationTask

    monkeypatch.setattr(ClassificationTask, "DEMO", str(_classification_demo(tmp_path)))
    for long_demo in (TranslationTask, PartSegmentationTask, DetectionTask):  # minutes each; their own tests check their configs
        monkeypatch.setattr(long_demo, "DEMO", None)
    monkeypatch.setattr(ToyRegressionTask, "DEMO", str(_toy_demo(tmp_path)))
    out = tmp_path / "out"
    (out / "toy_regression").mkdir(parents=True)
    (out / "toy_regression" / "results.md").write_text("mine\n")
    assert main(["demo", "--task", "all", "--out", str(out)]) == 2  # every task's outputs checked first
    assert "was not written by the demo" in capsys.readouterr().err and not (out / "0_gp").exists()

    (out / "toy_regression" / "results.md").unlink()
    results = run_demos("all", out, log=lambda line: None)
    assert list(results) == ["classification", "toy_regression"]
    classification = (out / "results.md").read_text()  # the default task keeps --out itself
    assert "accuracies are test top-1 on MNIST-1D" in classification and "| Top-1 Accuracy |" in classification
    toy = (out / "toy_regression" / "results.md").read_text()
    assert "| Test MSE |" in toy and "top-1" not in toy.lower()
    assert (out / "0_gp" / "run.json").is_file() and (out / "toy_regression" / "1_gp" / "run.json").is_file()
    # --task KIND writes where --task all does, so the finished runs are kept
    again = run_demos("toy_regression", out, log=lambda line: None)
    assert again["toy_regression"].kept == ["0_dense", "1_gp"]


def test_demo_task_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--task", "speech"], ("error: --task 'speech' is not a registered task; valid: classification, "
                                "detection, part_segmentation, translation, all (a task of your own: --import its module)")),
        (["--task", "toy_regression"], ("error: --task 'toy_regression' declares no demo (Task.DEMO); valid: "
                                        "classification, detection, part_segmentation, translation, all, or give --configs DIR")),
        (["--task", "all", "--configs", str(tmp_path)], ("error: --configs runs one task's configs; give --task "
                                                         "KIND with it, not --task all")),
        (["--import", "no_such_module_xyz"], ("error: imports: cannot import module 'no_such_module_xyz' "
                                              "(ModuleNotFoundError")),
        (["--task", "toy_regression", "--configs", str(_classification_demo(tmp_path))],
         (f"error: demo config {str(tmp_path / 'classification_demo' / '0_gp.yaml')!r} runs "
          "task.kind='classification', not the demo's task 'toy_regression'; give --task classification")),
    ]
    for argv, message in cases:
        assert main(["demo", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()


PARTS = {"scheme": "layers", "kappa": 2}
RUNS = {  # every registered stage kind, in runs short enough to count their epochs
    "dense, prune, finetune, gmp, set, rigl": [
        {"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
        {"kind": "finetune", "epochs": 2}, {"kind": "gmp", "sparsity": 0.8, "epochs": 2, "frequency": 2},
        {"kind": "set", "sparsity": 0.8, "epochs": 1, "update_every": 2},
        {"kind": "rigl", "sparsity": 0.8, "epochs": 1, "update_every": 2, "distribution": "uniform"}],
    "sgap": [{"kind": "sgap", "sparsity": 0.8, "partitions": PARTS, "epochs_per_step": 1, "rounds": 2,
              "finetune_epochs": 1}],
    "pgap": [{"kind": "pgap", "sparsity": 0.8, "partitions": PARTS, "epochs_per_step": 1, "rounds": 2,
              "finetune_epochs": 2}],
}


def test_every_method_counts_its_training_epochs():
    kinds = {stage["kind"] for stages in RUNS.values() for stage in stages}
    assert kinds == set(REGISTRY)
    for kind, module in REGISTRY.items():
        assert callable(getattr(module, "training_epochs", None)), kind
    sgap, pgap = (parse_config({"stages": stages}).stages[0] for stages in (RUNS["sgap"], RUNS["pgap"]))
    assert method_for("sgap").training_epochs(sgap) == (1 + 2 * 2) * 1 + 1  # (1 + R kappa) T + F
    assert method_for("pgap").training_epochs(pgap) == 2 * 2 * 1 + 2  # kappa R T + F
    preset = parse_config({"stages": [{**RUNS["sgap"][0], "partitions": {"scheme": "resnet_stages"}}]})
    assert training_epochs(preset) == (1 + 2 * 4) * 1 + 1  # the preset tells kappa (4 stages)
    computed = parse_config({"stages": [{**RUNS["pgap"][0], "partitions": {"scheme": "stages"}}]})
    assert training_epochs(computed) is None  # kappa comes from the model


@pytest.mark.parametrize("name", list(RUNS))
def test_training_epochs_equals_the_epochs_a_run_trains(tmp_path, monkeypatch, name):
    config = parse_config({"name": "count", "output_dir": str(tmp_path / "run"), **TRAINING,
                           "task": {"dataset": {"name": "digits"}, "model": MODEL}, "stages": RUNS[name]})
    batches = []
    original = ClassificationTask.loss

    def counted(self, model, batch):
        batches.append(1)
        return original(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", counted)
    run(config, log=lambda line: None)
    examples = len(load_dataset("digits").train)
    per_epoch = examples // 256 if config.data.drop_last else math.ceil(examples / 256)
    assert len(batches) % per_epoch == 0
    assert training_epochs(config) == len(batches) // per_epoch
