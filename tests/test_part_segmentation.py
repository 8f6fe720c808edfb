"""Part segmentation end to end on the embedded parts with a tiny PointNet++: mIoU against hand-computed
cases, predictions restricted to the category's parts, voting, run/eval, resume, 2 gloo ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import (assert_pruned_weights_zero, assert_sigterm_resume_equals,
                      assert_torchrun_equals_single, write_config)

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.data.shapenet_part import CATEGORIES, SEG_CLASSES
from sparsetrain.errors import UserError
from sparsetrain.runner.train import run
from sparsetrain.sparsity.partitions import partition_targets
from sparsetrain.sparsity.targets import select_targets
from sparsetrain.tasks import build_task, get_task
from sparsetrain.tasks.part_segmentation import shape_iou

PAPER = Path(__file__).parents[1] / "src" / "sparsetrain" / "configs" / "paper"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parts")


def _config(tmp_path: Path, cache: Path, name: str, stages: list, merge: dict | None = None) -> Path:
    config = {
        "name": name, "output_dir": str(tmp_path / name), "seed": 2, "threads": 1,
        "task": {"kind": "part_segmentation",
                 "dataset": {"name": "embedded_parts",
                             "options": {"cache": str(cache), "n_train": 16, "n_val": 4, "n_test": 8,
                                         "points_per_shape": 256, "npoints": 64}},
                 "model": {"name": "pointnet2_part_seg_tiny"}},
        "data": {"batch_size": 4, "eval_batch_size": 8},
        "optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.0001},
        "lr_schedule": {"kind": "step", "unit": "epoch", "step_size": 1, "gamma": 0.5, "min_lr": 1e-5},
        "training": {"progress": False, "bn_momentum": {"initial": 0.1, "decay": 0.5, "every": 1, "minimum": 0.01}},
        "stages": stages,
    }
    return write_config(tmp_path, name, config, merge)


def test_shape_iou_counts_parts_absent_from_both_as_one():
    """Mug has parts 36 (handle) and 37 (body): hand-computed IoUs."""
    allowed = torch.full((50,), float("-inf"))
    allowed[[36, 37]] = 0
    truth = torch.tensor([37, 37, 37, 37, 36, 36])
    predicted = torch.tensor([37, 37, 37, 36, 36, 37])
    # body: intersection 3, union 5 -> 0.6; handle: intersection 1, union 3 -> 1/3
    assert shape_iou(predicted, truth, allowed) == pytest.approx((0.6 + 1 / 3) / 2)
    only_body = torch.tensor([37, 37, 37])
    # the handle is in neither: it counts as 1; the body is perfect
    assert shape_iou(only_body, only_body, allowed) == 1.0
    # the handle predicted where there is none: IoU 0 for it, body 2/3
    assert shape_iou(torch.tensor([37, 37, 36]), only_body, allowed) == pytest.approx((0.0 + 2 / 3) / 2)


class _Constant(torch.nn.Module):
    """Log-probabilities fixed per point: favours part 0 (an Airplane part) everywhere, then the given parts."""

    def __init__(self, favourite: torch.Tensor) -> None:
        super().__init__()
        self.favourite = favourite
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, points, one_hot):
        b, _, n = points.shape
        logits = torch.full((b, n, 50), -5.0)
        logits[..., 0] = 5.0  # a part of another category than the shapes below
        logits.scatter_(2, self.favourite[:b, :n, None], 1.0)
        return torch.log_softmax(logits * self.scale, -1), None


def test_evaluation_restricts_predictions_to_the_category_and_averages_as_the_reference(tmp_path, cache):
    config = load_config(_config(tmp_path, cache, "eval", [{"kind": "dense", "epochs": 1}]))
    task = build_task(config)
    mug, lamp = CATEGORIES.index("Mug"), CATEGORIES.index("Lamp")
    points = torch.zeros(3, 4, 3)
    category = torch.tensor([mug, mug, lamp])
    truth = torch.tensor([[36, 37, 37, 37], [37, 37, 37, 37], [24, 25, 26, 27]])
    favourite = torch.tensor([[36, 37, 37, 36], [37, 37, 37, 37], [24, 25, 26, 26]])
    loader = [(points, category, truth)]
    metrics = task.evaluate(_Constant(favourite), loader, torch.device("cpu"))
    # part 0 wins the argmax over all parts, but only a category's own parts may be predicted
    mug_1 = (1 / 2 + 2 / 3) / 2  # handle: 1/2, body: 2/3
    mug_2 = (1.0 + 1.0) / 2  # handle absent from both
    lamp_3 = (1 + 1 + 1 / 2 + 0) / 4  # part 27 never predicted
    assert metrics["instance_miou"] == pytest.approx(100 * (mug_1 + mug_2 + lamp_3) / 3)
    assert metrics["class_miou"] == pytest.approx(100 * (((mug_1 + mug_2) / 2) + lamp_3) / 2)
    assert metrics["iou_Mug"] == pytest.approx(100 * (mug_1 + mug_2) / 2)
    assert metrics["accuracy"] == pytest.approx(100 * 10 / 12)


def test_a_run_trains_evaluates_and_resumes_bit_identically(tmp_path, cache, monkeypatch, capsys):
    stages = [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "pointnet2_2"}, "epochs_per_step": 1,
               "rounds": 1, "finetune_epochs": 1}]
    merge = {"training": {"progress": False, "checkpoint_every_steps": 2,
                          "bn_momentum": {"initial": 0.1, "decay": 0.5, "every": 1, "minimum": 0.01}}}
    whole = run(load_config(_config(tmp_path, cache, "whole", stages, merge)), log=lambda line: None)
    final = whole.final
    assert 0 <= final["test/instance_miou"] <= 100 and 0 <= final["test/class_miou"] <= 100
    assert any(key.startswith("test/iou_") for key in final)
    assert_pruned_weights_zero(whole.masks)
    assert whole.masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    stopped = load_config(_config(tmp_path, cache, "stopped", stages, merge))
    # stopped in the second GaP step (4 steps per epoch), mid-epoch
    assert_sigterm_resume_equals(whole, stopped, get_task("part_segmentation"), 7, monkeypatch)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "whole" / "model_final.pt"), "--config", str(tmp_path / "whole.yaml")]) == 0
    assert f"instance mIoU {final['test/instance_miou']:.2f}%" in capsys.readouterr().out


@pytest.mark.slow
def test_pgap_under_two_gloo_processes_equals_the_one_process_run(tmp_path, cache):
    """P-GaP's 2 workers as 2 torchrun processes give exactly the single-process simulation (workers' data
    streams, FPS draws and BatchNorm statistics are each worker's own either way). A data-parallel run of a
    BatchNorm model cannot equal one process on the CPU: each rank normalises its own shard (no SyncBatchNorm)."""
    stages = [{"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "pointnet2_2"}, "epochs_per_step": 1,
               "rounds": 1, "finetune_epochs": 1}]
    assert_torchrun_equals_single(_config(tmp_path, cache, "single", stages), _config(tmp_path, cache, "multi", stages),
                                  tmp_path / "multi")


def test_votes_average_log_probabilities_over_seeded_point_permutations(tmp_path, cache):
    config = load_config(_config(tmp_path, cache, "votes", [{"kind": "dense", "epochs": 1}],
                                 merge={"task": {"options": {"votes": 3}}}))
    task = build_task(config)
    torch.manual_seed(0)
    model = task.build_model().eval()
    points, category, _ = next(iter(task.eval_loader(4)))
    with torch.no_grad():
        voted = task.voted(model, points, category)
        single = task.forward(model, points, category)
        assert float((voted - single).abs().max()) > 0  # other samplings do change the prediction
        assert torch.equal(task.voted(model, points, category), voted)  # deterministic
        # invariance: with every point identical, the sampler's start cannot matter and all votes agree
        same = points[:, :1].expand_as(points).contiguous()
        torch.testing.assert_close(task.voted(model, same, category), task.forward(model, same, category))


def test_pointnet2_presets_split_the_reference_layout_by_level():
    from sparsetrain.models.pointnet2 import build_pointnet2

    model = build_pointnet2("pointnet2_part_seg_msg", normal_channel=True)
    targets = select_targets(model)
    assert all(t.name.endswith("weight") and t.param.dim() in (3, 4) for t in targets)
    for scheme, kappa in (("pointnet2_2", 2), ("pointnet2_3", 3), ("pointnet2_4", 4)):
        parts = partition_targets(targets, scheme)
        assert len(parts) == kappa and sum(p.numel for p in parts) == sum(t.numel for t in targets)
    first = partition_targets(targets, "pointnet2_4")[0]
    assert all(targets[i].name.startswith("sa1.") for i in first.target_indices)


def test_paper_configs_plan_without_the_data(capsys):
    configs = sorted(PAPER.glob("*pointnet2_shapenet*.yaml"))
    assert len(configs) == 11  # S-GaP/P-GaP x uniform/non-uniform x 0.8/0.9, dense, prune-from-dense 0.8/0.9
    for path in configs:
        assert main(["plan", str(path)]) == 0
        out = capsys.readouterr().out
        assert ": 251 epochs," in out.splitlines()[0], out.splitlines()[0]
        assert "14,007 examples" in out


def test_bad_part_segmentation_options_are_one_line_errors(tmp_path, cache):
    stages = [{"kind": "dense", "epochs": 1}]
    with pytest.raises(UserError, match=r"^task.model.name='mlp' is not a PointNet\+\+ part-segmentation model"):
        get_task("part_segmentation").check_config(load_config(_config(
            tmp_path, cache, "bad", stages, merge={"task": {"model": {"name": "mlp"}}})))
    with pytest.raises(UserError, match=r"^unknown key task.options.'vote'"):
        get_task("part_segmentation").check_config(load_config(_config(
            tmp_path, cache, "bad2", stages, merge={"task": {"options": {"vote": 2}}})))
    assert set(SEG_CLASSES["Mug"]) == {36, 37}


def test_the_demo_rows_share_one_budget_and_one_dataset():
    from sparsetrain.demo import training_epochs

    demo = Path(__file__).parents[1] / "src" / "sparsetrain" / "configs" / "demo_part_segmentation"
    configs = [load_config(path) for path in sorted(demo.glob("*.yaml"))]
    assert [c.name for c in configs] == ["dense", "gp_0.8", "sgap_uniform_0.8", "pgap_uniform_0.8", "gp_0.9",
                                         "sgap_uniform_0.9", "pgap_uniform_0.9"]
    # every row spends 10 epochs wall-clock (P-GaP's 2 workers x 2 rounds x 2 epochs count twice in compute)
    assert [training_epochs(c) for c in configs] == [10, 10, 10, 14, 10, 10, 14]
    assert len({json.dumps(c.task.model_dump(), sort_keys=True) for c in configs}) == 1
