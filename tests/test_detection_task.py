"""The detection task end to end on the embedded shapes with a tiny SSD: an oracle scores mAP 100 through the whole
evaluation path, run/eval/report, exact resume, P-GaP on 2 gloo processes, NVIDIA-layout checkpoints, backbone
initialisation, paper configs, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (assert_pruned_weights_zero, assert_sigterm_resume_equals,
                      assert_torchrun_equals_single, write_config)

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.errors import UserError
from sparsetrain.reports.run_report import write_report
from sparsetrain.runner.setup import build_setup
from sparsetrain.runner.train import run
from sparsetrain.tasks import build_task, get_task

pytest.importorskip("pycocotools")
PAPER = Path(__file__).parents[1] / "src" / "sparsetrain" / "configs" / "paper"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def _config(tmp_path: Path, cache: Path, name: str, stages: list, merge: dict | None = None) -> Path:
    config = {
        "name": name, "output_dir": str(tmp_path / name), "seed": 1, "threads": 1,
        "task": {"kind": "detection",
                 "dataset": {"name": "embedded_shapes", "options": {"cache": str(cache), "n_train": 24, "n_val": 8}},
                 "model": {"name": "ssd_tiny"}, "options": {"figure_images": 2}},
        "data": {"batch_size": 8, "eval_batch_size": 8},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
                      "decay_norm_and_bias": False},
        "lr_schedule": {"kind": "step", "unit": "iteration", "milestones": [2], "gamma": 0.1, "warmup": 1},
        "training": {"progress": False},
        "stages": stages,
    }
    return write_config(tmp_path, name, config, merge)


class _Oracle(torch.nn.Module):
    """Returns, batch after batch, the outputs that decode exactly to the ground truth (confident labels)."""

    def __init__(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.outputs = list(outputs)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs.pop(0)


def test_an_oracle_scores_map_100_through_matching_decoding_nms_and_cocoeval(tmp_path, cache, one_thread):
    """Ground truth -> matched default boxes -> regression targets as network outputs -> decode, score threshold,
    NMS, COCO results in original pixels -> COCOeval: every box found exactly, mAP 100."""
    task = build_task(load_config(_config(tmp_path, cache, "oracle", [{"kind": "dense", "epochs": 1}])))
    torch.manual_seed(0)
    coder = task.coder(task.build_model(), torch.device("cpu"))
    outputs = []
    loader = task.eval_loader(4)
    for _, targets in loader:
        offsets, labels = task.targets(coder, targets)
        logits = torch.full((len(targets), task.num_classes, coder.num_boxes), -10.0)
        logits.scatter_(1, labels[:, None, :], 10.0)
        outputs.append((offsets, logits))
    metrics = task.evaluate(_Oracle(outputs), loader, torch.device("cpu"))
    assert metrics["map"] == pytest.approx(100.0) and metrics["ap50"] == pytest.approx(100.0)
    assert metrics["ar100"] == pytest.approx(100.0)
    truth = sum(len(t["labels"]) for _, t in (task.eval_set[i] for i in range(len(task.eval_set))))
    assert metrics["detections"] * len(task.eval_set) == truth  # duplicates of one box are suppressed by NMS


def test_a_run_trains_evaluates_reports_and_resumes_bit_identically(tmp_path, cache, monkeypatch, capsys, one_thread):
    stages = [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "ssd_2"}, "epochs_per_step": 1,
               "rounds": 1, "finetune_epochs": 1}]
    merge = {"training": {"progress": False, "checkpoint_every_steps": 2}}
    whole = run(load_config(_config(tmp_path, cache, "whole", stages, merge)), log=lambda line: None)
    final = whole.final
    assert 0 <= final["test/map"] <= 100 and final["test/loss"] > 0 and "test/ap50" in final
    assert_pruned_weights_zero(whole.masks)
    assert whole.masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    report = write_report(tmp_path / "whole").read_text()
    assert "(predictions.png)" in report and (tmp_path / "whole" / "predictions.png").stat().st_size > 1000
    stopped = load_config(_config(tmp_path, cache, "stopped", stages, merge))
    # stopped in the second GaP step (3 steps per epoch), mid-epoch
    assert_sigterm_resume_equals(whole, stopped, get_task("detection"), 5, monkeypatch)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "whole" / "model_final.pt"), "--config", str(tmp_path / "whole.yaml")]) == 0
    assert f"mAP {final['test/map']:.2f}%" in capsys.readouterr().out


@pytest.mark.slow
def test_pgap_under_two_gloo_processes_equals_the_one_process_run(tmp_path, cache):
    """P-GaP's 2 workers as 2 torchrun processes give exactly the single-process simulation."""
    stages = [{"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "ssd_2"}, "epochs_per_step": 1,
               "rounds": 1, "finetune_epochs": 1}]
    assert_torchrun_equals_single(_config(tmp_path, cache, "single", stages), _config(tmp_path, cache, "multi", stages),
                                  tmp_path / "multi")


def test_an_nvidia_layout_checkpoint_loads_strictly_and_evaluates(tmp_path, cache, capsys, one_thread):
    """SSD300-R50 weights saved as NVIDIA's training script does ({'model': DDP state dict}) evaluate with `eval`, and
    score exactly what the same weights score as a plain state dict."""
    path = _config(tmp_path, cache, "nvidia", [{"kind": "dense", "epochs": 1}],
                   merge={"task": {"model": {"name": "ssd300_resnet50"},
                                   "dataset": {"name": "embedded_shapes",
                                               "options": {"cache": str(cache), "n_train": 2, "n_val": 2}},
                                   "options": {"figure_images": 0}},
                          "lr_schedule": {"kind": "constant", "milestones": [], "warmup": 0}})
    setup = build_setup(load_config(path))
    state = setup.model.state_dict()
    assert "feature_extractor.feature_extractor.6.0.conv1.weight" in state and "conf.5.weight" in state
    torch.save({"epoch": 3, "iteration": 100, "model": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "nvidia.pt")
    torch.save(state, tmp_path / "plain.pt")
    scores = []
    for name in ("nvidia.pt", "plain.pt"):
        capsys.readouterr()
        assert main(["eval", str(tmp_path / name), "--config", str(path)]) == 0
        scores.append([line for line in capsys.readouterr().out.splitlines() if "mAP" in line])
    assert scores[0] == scores[1] and scores[0]


def test_backbone_checkpoint_initialises_the_feature_extractor(tmp_path, cache):
    """init.backbone_checkpoint: a torchvision-format ResNet-50 state dict fills conv1..layer3 (layer4/fc ignored)."""
    from sparsetrain.models.resnet import resnet50

    torch.manual_seed(5)
    torchvision_state = resnet50().state_dict()
    torch.save(torchvision_state, tmp_path / "r50.pth")
    path = _config(tmp_path, cache, "backbone", [{"kind": "dense", "epochs": 1}],
                   merge={"task": {"model": {"name": "ssd300_resnet50"},
                                   "dataset": {"name": "embedded_shapes",
                                               "options": {"cache": str(cache), "n_train": 2, "n_val": 2}}},
                          "init": {"backbone_checkpoint": str(tmp_path / "r50.pth")}})
    state = build_setup(load_config(path), lay_out=False).model.state_dict()
    for ours, theirs in (("0.weight", "conv1.weight"), ("1.running_var", "bn1.running_var"),
                         ("4.2.conv3.weight", "layer1.2.conv3.weight"), ("6.5.bn2.bias", "layer3.5.bn2.bias")):
        assert torch.equal(state[f"feature_extractor.feature_extractor.{ours}"], torchvision_state[theirs])
    other = _config(tmp_path, cache, "other", [{"kind": "dense", "epochs": 1}],
                    merge={"task": {"kind": "classification", "dataset": {"name": "digits"},
                                    "model": {"name": "mlp"}, "options": {}},
                           "init": {"backbone_checkpoint": str(tmp_path / "r50.pth")}})
    with pytest.raises(UserError, match=r"^init.backbone_checkpoint='.*r50.pth': task 'classification' has no "
                                        r"backbone"):
        build_setup(load_config(other), lay_out=False)


def test_paper_configs_plan_without_the_data(capsys):
    configs = sorted(PAPER.glob("*ssd300_coco*.yaml"))
    assert len(configs) == 7  # S-GaP/P-GaP at 0.8/0.9, dense, prune-from-dense 0.8/0.9
    for path in configs:
        assert main(["plan", str(path)]) == 0
        out = capsys.readouterr().out
        epochs = "65" if path.stem.endswith("dense") else "155"
        assert f": {epochs} epochs," in out.splitlines()[0], out.splitlines()[0]
        assert "117,266 examples" in out


def test_ssd_presets_split_backbone_extra_blocks_and_heads():
    from sparsetrain.models.ssd import build_ssd
    from sparsetrain.sparsity.partitions import partition_targets
    from sparsetrain.sparsity.targets import select_targets

    with torch.device("meta"):
        model = build_ssd("ssd300_resnet50", num_classes=81)
    targets = select_targets(model)
    assert len(targets) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    names = {scheme: [[targets[i].name for i in p.target_indices] for p in partition_targets(targets, scheme)]
             for scheme in ("ssd_2", "ssd_3", "ssd_4")}
    assert [len(p) for p in names["ssd_4"]] == [1 + 3 * 3 + 1 + 4 * 3 + 1, 6 * 3 + 1, 5 * 2, 12]
    assert all(n.startswith("feature_extractor.feature_extractor.6.") for n in names["ssd_4"][1])
    assert names["ssd_3"][2] == [f"{head}.{i}.weight" for head in ("loc", "conf") for i in range(6)]
    assert names["ssd_2"][0] == names["ssd_3"][0]


def test_bad_detection_options_are_one_line_errors(tmp_path, cache):
    stages = [{"kind": "dense", "epochs": 1}]
    with pytest.raises(UserError, match=r"^task.model.name='mlp' is not a SSD model; valid: ssd300_resnet50, "):
        get_task("detection").check_config(load_config(_config(
            tmp_path, cache, "bad", stages, merge={"task": {"model": {"name": "mlp"}}})))
    with pytest.raises(UserError, match=r"^unknown key task.options.'nms'"):
        get_task("detection").check_config(load_config(_config(
            tmp_path, cache, "bad2", stages, merge={"task": {"options": {"nms": 0.5}}})))
    with pytest.raises(UserError, match=r"^task.options.nms_iou=0.0: "):
        get_task("detection").check_config(load_config(_config(
            tmp_path, cache, "bad3", stages, merge={"task": {"options": {"nms_iou": 0.0}}})))
    with pytest.raises(UserError, match=r"^task.dataset.name='coco2017' reads a directory: set "):
        build_task(load_config(_config(tmp_path, cache, "bad4", stages,
                                       merge={"task": {"dataset": {"name": "coco2017"}}})))
