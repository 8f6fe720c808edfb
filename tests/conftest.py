"""Shared test helpers: a reference selector, a torchrun launcher and a one-thread fixture."""

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


def write_config(tmp_path: Path, name: str, config: dict, merge: dict | None = None) -> Path:
    """``config`` with each top-level section of ``merge`` merged into it (keys replaced), written as
    ``tmp_path/<name>.yaml``."""
    import yaml

    config = {**config, **{key: {**config.get(key, {}), **value} for key, value in (merge or {}).items()}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
