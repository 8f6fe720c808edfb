"""Runner options: optimizers, LR units, warm-up, label smoothing, clipping, bf16 autocast, init checkpoints."""

import json

import pytest
import torch
import yaml

from sparsetrain.config import load_config
from sparsetrain.runner.lr_schedules import LRSchedule
from sparsetrain.runner.components import build_lr_schedule, build_optimizer
from sparsetrain.runner.train import run
from sparsetrain.runner.timeline import build_timeline

BASE = {
    "name": "f",
    "seed": 0,
    "threads": 1,
    "task": {"dataset": {"name": "mnist1d", "options": {"num_samples": 400}},
             "model": {"name": "small_resnet", "options": {"width": 4}}},
    "data": {"batch_size": 64},
    "training": {"progress": False},
    "stages": [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "erk", "sparsity": 0.7},
               {"kind": "finetune", "epochs": 2}],
}


def _run(tmp_path, overrides):
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(path, [f"output_dir={tmp_path / 'run'}", *overrides])
    return config, run(config, log=lambda line: None)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer.name=adam", "optimizer.lr=0.003", "training.amp=bf16"],
        ["optimizer.name=adamw", "optimizer.lr=0.003", "training.grad_clip=0.5", "training.label_smoothing=0.1"],
        ["optimizer.nesterov=true", "lr_schedule.kind=step", "lr_schedule.unit=epoch", "lr_schedule.step_size=1",
         "lr_schedule.gamma=0.5"],
        ["lr_schedule.kind=linear", "lr_schedule.warmup=3", "training.eval_every=2"],
        ["optimizer.name=adam", "lr_schedule.kind=inverse_sqrt", "lr_schedule.warmup=4", "optimizer.lr=0.001"],
    ],
)
def test_option_combinations_train_and_keep_sparsity_exact(tmp_path, overrides):
    config, result = _run(tmp_path, overrides)
    masks = result.masks
    assert masks.pruned_count() == round(0.7 * masks.numel())
    assert all(torch.count_nonzero(p[~m]) == 0 for p, m in zip(masks.params, masks.masks))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["sparsity"] == masks.sparsity() and records[-1]["epoch"] == 3
    assert all(r["test/top1"] >= 0 for r in records)


def test_lr_follows_the_schedule_per_iteration_and_per_epoch(tmp_path):
    config, _ = _run(tmp_path, ["lr_schedule.kind=cosine", "lr_schedule.warmup=2"])
    with pytest.raises(ValueError, match=r"stages.0.lr_schedule: lr.warmup=2 must be < lr.total=1 \(1 epochs of 5 steps\)"):
        _run(tmp_path, ["lr_schedule.kind=cosine", "lr_schedule.warmup=2", "lr_schedule.unit=epoch",
                        f"output_dir={tmp_path / 'per_epoch'}"])
    timeline = build_timeline(config, 6)  # 400 * 0.8 = 320 examples / 64 = 5 steps per epoch; 6 to check scaling
    (segment,) = timeline.stages[2].segments
    assert (segment.start_epoch, segment.epochs) == (1, 2)
    schedule = build_lr_schedule(config.stage_lr_schedule(config.stages[2]), 0.1, segment.epochs, 6)
    assert schedule == LRSchedule("cosine", 0.1, 12, 2)
    per_epoch = config.stage_lr_schedule(config.stages[2]).model_copy(update={"unit": "epoch", "warmup": 1})
    assert build_lr_schedule(per_epoch, 0.1, segment.epochs, 6).total == 2


def test_last_recorded_lr_is_the_schedule_value(tmp_path):
    _, result = _run(tmp_path, ["lr_schedule.kind=linear", "lr_schedule.min_lr=0.01"])
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 5
    finetune_steps = 2 * steps_per_epoch
    expected = LRSchedule("linear", 0.1, finetune_steps, min_lr=0.01).lr_at(finetune_steps - 1)
    assert records[-1]["lr"] == pytest.approx(expected)


def test_init_checkpoint_starts_from_given_weights(tmp_path):
    _, dense = _run(tmp_path, ["stages=[{kind: dense, epochs: 1}]", "name=dense"])
    state = {f"module.{k}": v for k, v in dense.model.state_dict().items()}
    checkpoint = tmp_path / "dense.pth.tar"
    torch.save({"state_dict": state}, checkpoint)
    path = tmp_path / "f.yaml"
    config = load_config(path, [f"output_dir={tmp_path / 'pruned'}", f"init.checkpoint={checkpoint}",
                                "stages=[{kind: prune, method: gp, sparsity: 0.5}]"])
    result = run(config, log=lambda line: None)
    record = json.loads((tmp_path / "pruned" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["stage_kind"] == "prune" and record["sparsity"] == result.masks.sparsity()
    reference = dense.model
    for mask, (name, param) in zip(result.masks.masks, [(t.name, t.param) for t in result.masks.targets]):
        kept_dense = dict(reference.named_parameters())[name].detach()[mask]
        assert torch.equal(param.detach()[mask], kept_dense)


def test_build_optimizer_maps_every_field():
    model = torch.nn.Linear(3, 2)
    from sparsetrain.config import OptimizerConfig

    sgd = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.2, momentum=0.8, nesterov=True, weight_decay=0.1))
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 0.1
    adamw = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.01, betas=(0.8, 0.9), eps=1e-6))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)


def test_decay_norm_and_bias_false_spares_biases_and_norms():
    """NVIDIA's SSD recipe: weight decay on conv/linear weights only; one SGD step from zero gradients shows it."""
    from sparsetrain.config import OptimizerConfig

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 2))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.5, momentum=0.0, weight_decay=0.1,
                                                       decay_norm_and_bias=False))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for old, new in zip(before, model.parameters()):
        expected = old * (1 - 0.5 * 0.1) if old.ndim >= 2 else old
        assert torch.allclose(new.detach(), expected)
    assert len(build_optimizer(model, OptimizerConfig(name="sgd", weight_decay=0.1)).param_groups) == 1


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="training.amp='fp16' needs a CUDA device"):
        _run(tmp_path, ["training.amp=fp16"])
