"""S-GaP and P-GaP: mask invariants at every step, schedules, plan = events, multi-process = single-process."""

import json

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sparsetrain.config import load_config
from sparsetrain.methods import apply_gap_event, gap_events, gap_layout, sgap_grow_sequence
from sparsetrain.models.small_resnet import small_resnet
from sparsetrain.runner.timeline import sparsity_after_events
from sparsetrain.runner.train import run
from sparsetrain.sparsity import MaskSet, count_for, partition_targets, select_targets
from conftest import torchrun


def _budget(masks, indices, sparsity, distribution):
    numels = [masks.targets[i].numel for i in indices]
    if distribution == "non-uniform":
        return count_for(sum(numels), sparsity)
    return sum(count_for(n, sparsity) for n in numels)


def _pruned(masks, indices):
    return sum(masks.targets[i].numel - int(masks.masks[i].sum()) for i in indices)


@given(
    kappa=st.integers(1, 4),
    rounds=st.integers(1, 3),
    sparsity=st.floats(0.1, 0.95),
    order=st.sampled_from(["cyclic", "random"]),
    distribution=st.sampled_from(["uniform", "non-uniform"]),
    init=st.sampled_from(["random", "magnitude"]),
    seed=st.integers(0, 100),
)
def test_sgap_grown_partition_dense_others_exact(kappa, rounds, sparsity, order, distribution, init, seed):
    torch.manual_seed(seed)
    model = small_resnet(in_channels=1, num_classes=3, width=4, blocks_per_stage=(1, 1), dim=1)
    targets = select_targets(model)
    partitions = [p.target_indices for p in partition_targets(targets, "layers", kappa)]
    layout = gap_layout("sgap", kappa, 1, rounds, 1, order, seed)
    events = gap_events(layout, 0, 3, sparsity, distribution=distribution, init=init, seed=seed,
                        reset_optimizer=True, stage=0)
    masks = MaskSet(targets)
    # random initial masks follow per-tensor budgets until a partition is first pruned by magnitude
    budget_kind = ["uniform" if init == "random" else distribution for _ in partitions]
    for event in events:
        before = [m.clone() for m in masks.masks]
        apply_gap_event(event, masks, partitions)
        for p in event.prune:
            budget_kind[p] = distribution
        for p, part in enumerate(partitions):
            if p == event.grow:
                assert _pruned(masks, part) == 0
                for i in part:  # regrown weights start at zero: whatever was pruned is still exactly zero
                    assert torch.count_nonzero(targets[i].param.detach()[~before[i]]) == 0
            else:
                assert _pruned(masks, part) == _budget(masks, part, sparsity, budget_kind[p]), (event.kind, p)
        for mask, target in zip(masks.masks, targets):
            assert torch.count_nonzero(target.param.detach()[~mask]) == 0
        with torch.no_grad():  # "training": every unmasked weight moves
            for mask, target in zip(masks.masks, targets):
                target.param.add_(torch.randn_like(target.param) * mask)
    assert events[-1].kind == "gap_final"
    assert all(_pruned(masks, part) == _budget(masks, part, sparsity, kind) for part, kind in zip(partitions, budget_kind))


@given(kappa=st.integers(2, 6), rounds=st.integers(1, 4), seed=st.integers(0, 1000))
def test_grow_orders(kappa, rounds, seed):
    cyclic = sgap_grow_sequence(kappa, rounds, "cyclic", seed)
    assert cyclic == (0,) + tuple(list(range(1, kappa)) + [0]) * rounds
    random = sgap_grow_sequence(kappa, rounds, "random", seed)
    assert random == sgap_grow_sequence(kappa, rounds, "random", seed)
    assert random[0] == 0 and len(random) == 1 + kappa * rounds
    assert all(a != b for a, b in zip(random, random[1:]))
    for r in range(rounds):
        assert sorted(random[1 + r * kappa: 1 + (r + 1) * kappa]) == list(range(kappa))


def test_layout_epochs_follow_the_reference_accounting():
    assert gap_layout("sgap", 3, 10, 10, 40).epochs == 10 + 30 * 10 + 40  # 350, as the Transformer scripts
    assert gap_layout("sgap", 6, 10, 10, 40).epochs == 650
    assert gap_layout("pgap", 3, 10, 10, 40).epochs == 100 + 40


BASE = {
    "seed": 2,
    "threads": 1,
    "task": {"dataset": {"name": "mnist1d", "options": {"num_samples": 300}},
             "model": {"name": "small_resnet", "options": {"width": 4}}},
    "data": {"batch_size": 48},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"progress": False},
}


def _write(tmp_path, name, stage, **extra):
    config = dict(BASE, name=name, output_dir=str(tmp_path / name), stages=[stage], **extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


SGAP = {"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 3}, "epochs_per_step": 1,
        "rounds": 1, "finetune_epochs": 2, "distribution": "non-uniform"}
PGAP = {"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "blocks", "kappa": 2}, "epochs_per_step": 2,
        "rounds": 2, "finetune_epochs": 1}


@pytest.mark.parametrize("stage", [SGAP, PGAP, dict(SGAP, distribution="erk", grow_order="random",
                                                     reset_optimizer=False)])
def test_plan_matches_the_events_of_a_run(tmp_path, stage):
    config = load_config(_write(tmp_path, "r", stage))
    result = run(config, log=lambda line: None)
    from sparsetrain.runner.setup import resolve_timeline
    from sparsetrain.tasks import build_task

    targets = select_targets(result.model)
    timeline = resolve_timeline(config, targets, len(build_task(config).train_set))
    planned = timeline.schedule.events()
    happened = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e.step, e.kind) for e in planned] == [(h["step"], h["kind"]) for h in happened]
    expected = sparsity_after_events(timeline, [t.shape for t in targets])
    assert [h["sparsity"] for h in happened] == pytest.approx(expected, abs=0, rel=1e-12)
    assert result.masks.pruned_count() == round(expected[-1] * result.masks.numel())


def test_pgap_two_gloo_processes_equal_the_single_process_simulation(tmp_path):
    single = load_config(_write(tmp_path, "single", PGAP))
    reference = run(single, log=lambda line: None)
    multi = _write(tmp_path, "multi", PGAP)
    out = torchrun(multi)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rank 1 sent" in out.stdout + out.stderr or "merge: rank 0 sent" in out.stdout
    theirs = torch.load(tmp_path / "multi" / "model_final.pt", weights_only=True)
    ours = reference.model.state_dict()
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert torch.equal(theirs[key], ours[key]), key
    events = lambda d: [json.loads(l)["sparsity"] for l in (tmp_path / d / "events.jsonl").read_text().splitlines()]
    assert events("multi") == events("single")
    flops = lambda d: json.loads((tmp_path / d / "summary.json").read_text())["train_flops"]
    assert flops("multi") == flops("single")  # every worker's training is counted, on whichever rank it ran
    checkpoint = torch.load(tmp_path / "multi" / "checkpoint.pt", weights_only=False)
    masks = MaskSet(select_targets(reference.model))
    masks.load_state_dict(checkpoint["sparsifier"]["masks"])
    assert masks.checksum() == reference.masks.checksum()


def test_pgap_with_the_wrong_number_of_processes_is_refused(tmp_path):
    multi = _write(tmp_path, "three", PGAP)
    out = torchrun(multi, nproc=3)
    assert out.returncode != 0
    assert "P-GaP with kappa=2 needs WORLD_SIZE = kappa*g processes (g >= 1: 2, 4, 6, ...), got WORLD_SIZE=3" in out.stderr
