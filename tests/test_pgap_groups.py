"""P-GaP across groups of processes: WORLD_SIZE = kappa * g under torchrun, each worker trained by g gloo processes
with DDP inside its group, equals the one-process run (same masks, weights within float tolerance)."""

import json

import pytest
import torch
from conftest import torchrun, write_config
from tiny_config import tiny_config

from sparsetrain.config import load_config
from sparsetrain.errors import UserError
from sparsetrain.runner.distributed import (
    DistContext,
    pgap_worker_groups,
    pgap_world_error,
)
from sparsetrain.runner.train import run
from sparsetrain.sparsity import MaskSet, select_targets

# MLP 64-32-16-10 on digits (no BatchNorm, so per-rank statistics cannot differ): kappa = 2 workers, 2 rounds of
# 2 epochs of 20 steps.
PGAP = {"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 2,
        "rounds": 2, "finetune_epochs": 1}
CONFIG = tiny_config(
    seed=3,
    task={"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [32, 16]}}},
    data={"batch_size": 64},
    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    training={"progress": False, "stop_check_every": 2},
    stages=[{"kind": "dense", "epochs": 1}, PGAP],
)


def _config(tmp_path, name):
    return write_config(tmp_path, name, dict(CONFIG, name=name, output_dir=str(tmp_path / name)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process run (its result) and the 4-process run (kappa=2, g=2) of CONFIG, in one folder."""
    folder = tmp_path_factory.mktemp("pgap_groups")
    single = run(load_config(_config(folder, "single")), log=lambda line: None)
    out = torchrun(_config(folder, "groups"), nproc=4)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder, single, out


def test_world_sizes_valid_for_pgap_are_the_multiples_of_kappa():
    assert [w for w in range(1, 10) if pgap_world_error(3, w) is None] == [1, 3, 6, 9]
    assert pgap_world_error(2, 3) == (
        "P-GaP with kappa=2 needs WORLD_SIZE = kappa*g processes (g >= 1: 2, 4, 6, ...), got WORLD_SIZE=3; valid: "
        "torchrun --nproc-per-node 2 (one process per partition) or a multiple of 2 (g processes per partition, "
        "data parallel inside each group), or no torchrun (the 2 workers then train one after another)")
    with pytest.raises(UserError, match=r"^P-GaP with kappa=2 needs .* got WORLD_SIZE=5; valid: "):
        pgap_worker_groups(DistContext(rank=0, world_size=5), kappa=2)


def test_ranks_split_into_consecutive_groups_without_a_process_group_when_g_is_1():
    groups = [pgap_worker_groups(DistContext(rank=r, world_size=3), kappa=3) for r in range(3)]
    assert [(g.size, g.worker, g.rank_in_group, g.group, g.is_leader) for g in groups] == [
        (1, 0, 0, None, True), (1, 1, 0, None, True), (1, 2, 0, None, True)]
    assert [groups[0].leader(w) for w in range(3)] == [0, 1, 2]


@pytest.mark.slow
def test_four_gloo_processes_in_two_groups_equal_the_one_process_run(runs):
    tmp_path, single, out = runs
    assert "data parallel over 2 processes per P-GaP worker: global batch 64" in out.stdout
    assert "merge: rank 0 sent" in out.stdout

    theirs = torch.load(tmp_path / "groups" / "model_final.pt", weights_only=True)
    ours = single.model.state_dict()
    assert theirs.keys() == ours.keys()
    for key in ours:  # the same zeros (the same masks), the rest within the float error of the group all-reduce
        assert torch.equal(theirs[key] == 0, ours[key] == 0), key
        torch.testing.assert_close(theirs[key], ours[key], rtol=1e-5, atol=1e-5)
    checkpoint = torch.load(tmp_path / "groups" / "checkpoint.pt", weights_only=True)
    masks = MaskSet(select_targets(single.model))
    masks.load_state_dict(checkpoint["sparsifier"]["masks"])
    assert masks.checksum() == single.masks.checksum()
    events = lambda d: [(e["step"], e["kind"], e["sparsity"]) for e in
                        map(json.loads, (tmp_path / d / "events.jsonl").read_text().splitlines())]
    assert events("groups") == events("single")
    csvs = lambda d: {p.name: p.read_text() for p in (tmp_path / d / "sparsity").glob("*.csv")}
    assert csvs("groups") == csvs("single")  # per-layer sparsity at every mask event
    flops = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["train_flops"]
    assert flops("groups") == flops("single")  # each worker's training counted once, not once per rank


def test_three_processes_for_kappa_2_are_refused_in_one_line(tmp_path):
    out = torchrun(_config(tmp_path, "three"), nproc=3)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "needs WORLD_SIZE = kappa*g" in line]
    assert lines and lines[0].endswith(
        "error: stages.1 (pgap): P-GaP with kappa=2 needs WORLD_SIZE = kappa*g processes (g >= 1: 2, 4, 6, ...), got "
        "WORLD_SIZE=3; valid: torchrun --nproc-per-node 2 (one process per partition) or a multiple of 2 (g processes "
        "per partition, data parallel inside each group), or no torchrun (the 2 workers then train one after another)")
    assert not (tmp_path / "three" / "model_final.pt").exists()

