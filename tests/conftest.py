"""Shared test helpers: a reference selector, a torchrun launcher, a one-thread fixture, config writing, and the
checks every task runs (pruned weights zero, SIGTERM + resume bit-identical, torchrun equal to one process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=40)
settings.load_profile("default")


def reference_keep_masks(tensors, k):
    """Keep-masks pruning the k smallest |x| over all tensors, ties by (tensor, flat index) order.

    A deliberately naive reference: concatenate, stable-sort, prune the first k.
    """
    flat = torch.cat([t.detach().reshape(-1).abs().double() for t in tensors])
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    masks, offset = [], 0
    for t in tensors:
        masks.append(keep[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return masks


def torchrun(config: Path, nproc: int = 2, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc --standalone -m sparsetrain run CONFIG`` with one thread per
    process (and ``pythonpath`` prepended, for a config that imports a module of the tests)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                           "-m", "sparsetrain", "run", str(config)], check=False, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; more threads spin against other test processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_passes(monkeypatch):
    """Selection's chunk, sample and gather sizes shrunk so every code path runs on small data."""
    from sparsetrain.sparsity import selection

    monkeypatch.setattr(selection, "CHUNK", 64)
    monkeypatch.setattr(selection, "SAMPLE", 32)
    monkeypatch.setattr(selection, "SMALL", 16)
    monkeypatch.setattr(selection, "COLLECT_LIMIT", 40)


def write_config(tmp_path: Path, name: str, config: dict, merge: dict | None = None) -> Path:
    """``config`` with each top-level section of ``merge`` merged into it (keys replaced), written as
    ``tmp_path/<name>.yaml``."""
    import yaml

    config = {**config, **{key: {**config.get(key, {}), **value} for key, value in (merge or {}).items()}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_pruned_weights_zero(masks) -> None:
    """Every weight a MaskSet prunes is exactly zero."""
    for target, mask in zip(masks.targets, masks.masks):
        assert not bool(target.param.detach()[~mask].any()), target.name


def assert_sigterm_resume_equals(whole, config, task_class, stop_at_call: int, monkeypatch):
    """Run ``config`` with a SIGTERM raised inside the ``stop_at_call``-th call of ``task_class.loss``, resume it, and
    check the resumed model equals ``whole`` (the uninterrupted run's result) bit for bit; returns the resumed result."""
    import signal

    from sparsetrain.runner.train import Preempted, run

    original, calls = task_class.loss, []

    def loss(self, model, batch):
        calls.append(1)
        if len(calls) == stop_at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, batch)

    monkeypatch.setattr(task_class, "loss", loss)
    with pytest.raises(Preempted):
        run(config, log=lambda line: None)
    monkeypatch.setattr(task_class, "loss", original)
    resumed = run(config, resume=True, log=lambda line: None)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    return resumed


def assert_torchrun_equals_single(single_config: Path, multi_config: Path, multi_dir: Path, nproc: int = 2) -> None:
    """The final model of ``multi_config`` under torchrun (``nproc`` gloo processes, written to ``multi_dir``) equals
    the single-process run of ``single_config`` bit for bit."""
    from sparsetrain.config import load_config
    from sparsetrain.runner.train import run

    single = run(load_config(single_config), log=lambda line: None)
    out = torchrun(multi_config, nproc)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = torch.load(multi_dir / "model_final.pt", weights_only=True)
    ours = single.model.state_dict()
    assert theirs.keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(theirs[key], value), key
