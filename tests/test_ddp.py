"""Data-parallel runs under torchrun (2 gloo processes) equal single-process runs on the same global batch."""

import json

import pytest
import torch
import yaml

from sparsetrain.config import load_config
from sparsetrain.data.batching import epoch_batches
from sparsetrain.runner.train import run
from sparsetrain.config import DataConfig
from conftest import torchrun


@pytest.mark.parametrize("n, batch, world, drop_last", [(10, 4, 2, False), (11, 4, 3, False), (9, 3, 2, True)])
def test_rank_shards_partition_each_global_batch(n, batch, world, drop_last):
    config = DataConfig(batch_size=batch, drop_last=drop_last)
    single, sizes = epoch_batches(n, config, seed=1, epoch=2)
    shards = [epoch_batches(n, config, seed=1, epoch=2, rank=r, world_size=world) for r in range(world)]
    for step, batch_indices in enumerate(single):
        parts = [shards[r][0][step] for r in range(world)]
        assert sum(parts, []) == batch_indices  # contiguous, in order, nothing lost or repeated
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(shards[r][1][step] == sizes[step] == len(batch_indices) for r in range(world))


STAGES = {
    "gpmt": [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gpmt", "sparsity": 0.8, "min_threshold": 1.0},
             {"kind": "finetune", "epochs": 1}],
    "rigl": [{"kind": "rigl", "sparsity": 0.8, "epochs": 2, "update_every": 5}],
    "sgap": [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1,
              "finetune_epochs": 1, "distribution": "non-uniform"}],
}


def _write(tmp_path, name, stages, **extra):
    config = {"name": name, "output_dir": str(tmp_path / name), "seed": 5, "threads": 1,
              "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [32, 16]}}},
              "data": {"batch_size": 50}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                         "weight_decay": 1e-4},
              "training": {"progress": False}, "stages": stages, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STAGES))
@pytest.mark.parametrize("masks", ["identical", "broadcast"])
def test_two_gloo_processes_match_one(tmp_path, method, masks):
    if method != "gpmt" and masks == "broadcast":
        pytest.skip("the broadcast path is covered once")
    single = run(load_config(_write(tmp_path, "single", STAGES[method])), log=lambda line: None)
    multi = _write(tmp_path, "multi", STAGES[method], distributed={"masks": masks})
    out = torchrun(multi)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data parallel over 2 processes" in out.stdout
    theirs = torch.load(tmp_path / "multi" / "model_final.pt", weights_only=True)
    checkpoint = torch.load(tmp_path / "multi" / "checkpoint.pt", weights_only=False)
    ours = single.model.state_dict()
    bits = checkpoint["sparsifier"]["masks"]["bits"]
    assert all(torch.equal(a, b) for a, b in zip(bits, single.masks.state_dict()["bits"]))  # same masks
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-4, atol=1e-5)  # float reduction order only
    events = lambda d: [(e["step"], e["kind"], e["sparsity"]) for e in
                        map(json.loads, (tmp_path / d / "events.jsonl").read_text().splitlines())]
    assert events("multi") == events("single")
    summary = lambda d: json.loads((tmp_path / d / "summary.json").read_text())
    assert summary("multi")["train_flops"] == summary("single")["train_flops"]
