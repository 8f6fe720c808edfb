"""Paper configs plan without data; ResNet-50 trains a few steps with every method on ImageNet-shaped data."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.runner.train import run

PAPER = sorted((Path(__file__).parents[1] / "configs" / "paper").glob("*.yaml"))


def test_there_is_a_config_per_seed_row():
    names = {p.stem for p in PAPER}
    assert len([n for n in names if n.startswith("gap_resnet50")]) == 6  # the GaP README's ResNet-50 rows
    assert len([n for n in names if n.startswith("gpmt_resnet50")]) == 8  # GP and GP+MT at 80/90/95.30/98.05
    assert len([n for n in names if n.startswith("gpmt_wrn28_8")]) == 4
    # the GaP README's 8 Transformer rows (S-GaP/P-GaP, kappa 3/6, 0.8/0.9), the dense and 2 prune-from-dense baselines
    assert len([n for n in names if n.startswith("gap_transformer_wmt14_") and "gap_k" in n]) == 8
    assert {"gap_transformer_wmt14_dense", "gap_transformer_wmt14_prune_from_dense_0.8",
            "gap_transformer_wmt14_prune_from_dense_0.9"} <= names


@pytest.mark.parametrize("path", [p for p in PAPER if p.stem.startswith("gap_resnet50")], ids=lambda p: p.stem)
def test_gap_resnet50_configs_use_the_authors_recipe_with_mixup(path):
    """SGD 0.9, wd 1e-4, label smoothing 0.1, mixup 0.2, cosine, batch 2048 at lr 1.2 (gap-method.md §1.7),
    the mixup with a comment saying where it comes from and that it is unverified for GaP."""
    config = load_config(path, check_files=False)
    assert (config.training.label_smoothing, config.training.mixup_alpha) == (0.1, 0.2)
    assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.weight_decay) == ("sgd", 0.9, 1e-4)
    assert (config.lr_schedule.kind, config.data.batch_size, config.optimizer.lr) == ("cosine", 2048, 1.2)
    text = path.read_text()
    assert "RigL-reproduction" in text and "unverified for GaP itself" in text and "not implemented" not in text


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_plan_needs_neither_data_nor_checkpoints(path, capsys):
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours at 60 effective TFLOP/s" in out
    config = load_config(path, check_files=False)
    epochs = int(out.split(" epochs,")[0].split(": ")[-1])
    assert epochs > 0 and config.name in out


def test_running_a_paper_config_without_its_data_names_the_missing_path(capsys):
    assert main(["run", str(PAPER[0])]) == 2
    assert "does not exist" in capsys.readouterr().err


STAGES = {
    "gp": [{"kind": "prune", "method": "gp", "sparsity": 0.9}, {"kind": "finetune", "epochs": 1}],
    "gpmt": [{"kind": "prune", "method": "gpmt", "sparsity": 0.9, "min_threshold": 0.05},
             {"kind": "finetune", "epochs": 1}],
    "gmp": [{"kind": "gmp", "sparsity": 0.9, "epochs": 2, "end_epoch": 1}],
    "rigl": [{"kind": "rigl", "sparsity": 0.9, "epochs": 2, "update_every": 1}],
    "set": [{"kind": "set", "sparsity": 0.9, "epochs": 2, "update_every": 1}],
    "sgap": [{"kind": "sgap", "sparsity": 0.9, "partitions": {"scheme": "resnet_stages"}, "epochs_per_step": 1,
              "finetune_epochs": 1, "distribution": "non-uniform"}],
    "pgap": [{"kind": "pgap", "sparsity": 0.9, "partitions": {"scheme": "resnet50_blocks"}, "epochs_per_step": 1,
              "finetune_epochs": 1}],
}


@pytest.fixture(scope="module")
def imagenet_shaped(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "imagenet_shaped.npz"
    np.savez(path, x_train=rng.normal(size=(2, 3, 32, 32)).astype(np.float32), y_train=np.array([3, 999]),
             x_test=rng.normal(size=(2, 3, 32, 32)).astype(np.float32), y_test=np.array([999, 0]))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STAGES))
def test_resnet50_trains_with_every_method_on_cpu(tmp_path, imagenet_shaped, method):
    config = {"name": method, "output_dir": str(tmp_path / method), "seed": 0, "threads": 2,
              "task": {"dataset": {"name": "npz", "options": {"path": str(imagenet_shaped), "num_classes": 1000}},
                       "model": {"name": "resnet50"}},
              "data": {"batch_size": 2}, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
              "training": {"progress": False, "checkpoint_every": 100}, "stages": STAGES[method]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run(load_config(path), log=lambda line: None)
    masks = result.masks
    assert masks.numel() == 25_502_912  # the 54 conv + fc weights
    # exact budgets: per model, per partition or per tensor, so at most one weight per tensor of rounding
    assert abs(masks.pruned_count() - 0.9 * masks.numel()) <= len(masks)
    assert all(torch.count_nonzero(p[~m]) == 0 for p, m in zip(masks.params, masks.masks))
