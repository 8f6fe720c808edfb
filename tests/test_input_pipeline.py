"""The input pipeline's speed options (issue 17): pinned memory, persistent workers, prefetching,
non-blocking copies, channels_last and torch.compile.

The loader options must not change a single batch (a run with persistent workers and prefetching
equals the main-process run bit for bit, and resumes exactly); channels_last and compile change
only the layout and the kernels, so their runs are checked for finite losses and zero pruned weights.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_pruned_weights_zero, assert_sigterm_resume_equals
from tiny_config import tiny_config

from sparsetrain.config import ConfigError, DataConfig, load_config
from sparsetrain.errors import UserError
from sparsetrain.runner import components
from sparsetrain.runner.components import epoch_loader, pins_memory
from sparsetrain.runner.train import run
from sparsetrain.tasks.base import Task
from sparsetrain.tasks.classification import ClassificationTask

WORKERS = {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3}


def _config(tmp_path, name, data=None, training=None, model=None, stages=None):
    config = tiny_config(name=name, output_dir=str(tmp_path / name), data={"batch_size": 128, **(data or {})},
                         training={"progress": False, **(training or {})})
    if model is not None:
        config["task"]["model"] = model
    if stages is not None:
        config["stages"] = stages
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def _final_loss(run_dir) -> float:
    import json
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return entries[-1]["train/loss"]


def test_the_loader_gets_the_options():
    shards = [[0, 1], [2, 3]]
    data = list(range(4))
    config = DataConfig(pin_memory=False, **WORKERS)
    loader = epoch_loader(data, config, shards, seed=0)
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (2, True, 3,
                                                                                                           False)
    assert epoch_loader(data, config, shards, seed=1) is loader  # the same loader (and workers) next epoch
    plain = epoch_loader(data, DataConfig(num_workers=1), shards, seed=0)
    assert (plain.persistent_workers, plain.prefetch_factor) == (False, 2)  # torch's default
    main = epoch_loader(data, DataConfig(pin_memory=True), shards, seed=0)
    assert (main.num_workers, main.pin_memory) == (0, True)
    # auto pins for CUDA only; the decision needs no GPU.
    assert pins_memory(DataConfig(), torch.device("cuda", 0)) and not pins_memory(DataConfig(), torch.device("cpu"))
    assert not pins_memory(DataConfig(pin_memory=False), torch.device("cuda"))


class _RandomItems(torch.utils.data.Dataset):
    """Items drawn from all three RNGs a transform may use (torch, numpy, random)."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([index, torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64)


def test_persistent_workers_draw_what_fresh_workers_draw():
    shards = [[i, i + 1] for i in range(0, 12, 2)]
    fresh = DataConfig(num_workers=2)
    persistent = DataConfig(**WORKERS)
    dataset = _RandomItems()
    global_rng = torch.get_rng_state()
    for seed, skip in ((5, 0), (6, 0), (7, 3), (8, 1)):  # epochs, some resumed mid-epoch
        expected = list(epoch_loader(dataset, fresh, shards, seed, skip=skip))
        got = list(epoch_loader(dataset, persistent, shards, seed, skip=skip))
        assert len(got) == len(shards) - skip
        for a, b in zip(expected, got):
            assert torch.equal(a, b)
        # Neither loader draws from the global RNG (the training's mixup, dropout, ... draw from it next).
        assert torch.equal(torch.get_rng_state(), global_rng)


def _metrics(run_dir) -> list[dict]:
    import json
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"}  # wall time differs
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_worker_options_train_exactly_like_the_main_process(tmp_path, one_thread, monkeypatch):
    evaluated_by = []
    real = ClassificationTask.eval_batches

    def recording(self, model, loader, *args, **kwargs):
        evaluated_by.append(loader.num_workers)
        return real(self, model, loader, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "eval_batches", recording)
    main = run(_config(tmp_path, "main"), log=lambda line: None)
    workers = run(_config(tmp_path, "workers", data=WORKERS), log=lambda line: None)
    assert not components._PERSISTENT  # the run ended its workers
    for key, value in main.model.state_dict().items():
        assert torch.equal(workers.model.state_dict()[key], value), key
    # Evaluation is loaded by the workers too, with every metric (and the training after it) unchanged.
    assert set(evaluated_by) == {0, 2} and len(evaluated_by) % 2 == 0
    assert _metrics(main.run_dir) == _metrics(workers.run_dir)


class _OldStyleTask:
    """A task written before eval_loader took loading options."""

    def eval_loader(self, batch_size):
        return ("old", batch_size)


class _NewStyleTask:
    def eval_loader(self, batch_size, **loading):
        return ("new", batch_size, loading)


def test_eval_loader_gets_the_loading_options_a_task_accepts():
    config = DataConfig(eval_batch_size=7, pin_memory=True, num_workers=3, prefetch_factor=4)
    assert components.eval_loader_for(_NewStyleTask(), config, torch.device("cpu")) == (
        "new", 7, {"num_workers": 3, "prefetch_factor": 4, "pin_memory": True})
    assert components.eval_loader_for(_NewStyleTask(), DataConfig(eval_batch_size=7), torch.device("cpu")) == (
        "new", 7, {})
    assert components.eval_loader_for(_OldStyleTask(), config, torch.device("cpu")) == ("old", 7)


def test_resume_with_worker_options_is_exact(tmp_path, one_thread, monkeypatch):
    whole = run(_config(tmp_path, "whole", data=WORKERS), log=lambda line: None)
    config = _config(tmp_path, "stopped", data=WORKERS, training={"checkpoint_every_steps": 3})
    # 10 steps per epoch of 1,258 examples: the SIGTERM lands in the first epoch, after its 7th batch.
    assert_sigterm_resume_equals(whole, config, ClassificationTask, stop_at_call=7, monkeypatch=monkeypatch)


def test_channels_last_run_is_finite_and_keeps_pruned_weights_zero(tmp_path, one_thread):
    model = {"name": "small_resnet", "options": {"width": 4}}
    result = run(_config(tmp_path, "nhwc", training={"channels_last": True}, model=model), log=lambda line: None)
    assert math.isfinite(_final_loss(result.run_dir))
    assert_pruned_weights_zero(result.masks)
    convs = [m.weight for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_to_device_options():
    task = Task.__new__(Task)
    images, labels = torch.arange(24.0).reshape(1, 2, 3, 4), torch.tensor([1])
    moved = task.to_device((images, labels), torch.device("cpu"), non_blocking=True, channels_last=True)
    assert torch.equal(moved[0], images) and moved[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved[1], labels)
    assert task.to_device({"x": images}, torch.device("cpu"))["x"].is_contiguous()


def _pruned_run_under_compile(tmp_path, name):
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
              {"kind": "finetune", "epochs": 1}]
    # drop_last keeps one batch shape, so the graph compiles once
    return run(_config(tmp_path, name, data={"drop_last": True}, training={"compile": True}, stages=stages),
               log=lambda line: None)


def test_compile_trains_through_torch_compile(tmp_path, one_thread, monkeypatch):
    """The plumbing, fast: torch.compile with the eager backend (Dynamo traces, no code generation)."""
    calls = []
    real = torch.compile

    def compile_eager(model, **kwargs):
        calls.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    result = _pruned_run_under_compile(tmp_path, "compiled_eager")
    assert len(calls) == 1 and calls[0] is result.model
    assert math.isfinite(_final_loss(result.run_dir))
    assert_pruned_weights_zero(result.masks)


@pytest.mark.slow
def test_compile_with_inductor(tmp_path, one_thread):
    """The default backend (about 20 s of compilation on a CPU)."""
    result = _pruned_run_under_compile(tmp_path, "compiled")
    assert math.isfinite(_final_loss(result.run_dir))
    assert_pruned_weights_zero(result.masks)


@pytest.mark.parametrize("override, message", [
    ("data.persistent_workers=true", "data: persistent_workers=true needs worker processes; valid: num_workers >= 1 "
                                      "(num_workers=0), or persistent_workers=false"),
    ("data.prefetch_factor=4", "prefetch_factor=4 needs worker processes; valid: num_workers >= 1"),
    ("data.prefetch_factor=0", "data.prefetch_factor=0: Input should be greater than or equal to 1"),
    ("data.pin_memory=sometimes", "data.pin_memory='sometimes'"),
    ("training.channels_last=maybe", "training.channels_last='maybe'"),
])
def test_config_errors_are_one_line(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert issubclass(ConfigError, UserError)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fingerprint_ignores_loading_speed_but_not_layout_or_compile(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    base = load_config(path).fingerprint()
    same = load_config(path, ["data.num_workers=0", "data.pin_memory=true"]).fingerprint()
    workers = load_config(path, ["data.num_workers=2"]).fingerprint()
    assert same == base
    assert load_config(path, ["data.num_workers=2", "data.persistent_workers=true",
                              "data.prefetch_factor=8", "data.pin_memory=false"]).fingerprint() == workers
    assert load_config(path, ["training.channels_last=false", "training.compile=false"]).fingerprint() == base
    assert load_config(path, ["training.channels_last=true"]).fingerprint() != base
    assert load_config(path, ["training.compile=true"]).fingerprint() != base
