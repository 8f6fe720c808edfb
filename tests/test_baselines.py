"""GMP, SET, RigL and random pruning: schedules and mask updates against small reference computations."""

import json
import math

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsetrain.config import load_config
from sparsetrain.methods import (
    MaskEvent,
    apply_dst_event,
    drop_and_grow_,
    dst_events,
    gmp_events,
    gmp_sparsity,
)
from sparsetrain.runner.setup import resolve_timeline
from sparsetrain.runner.timeline import sparsity_after_events
from sparsetrain.runner.train import run
from sparsetrain.sparsity import MaskSet, select_targets
from sparsetrain.tasks import build_task


def test_gmp_cubic_schedule_matches_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3
    assert gmp_sparsity(100, 100, 1100, 0.0, 0.9) == 0.0
    assert gmp_sparsity(600, 100, 1100, 0.0, 0.9) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert gmp_sparsity(1100, 100, 1100, 0.0, 0.9) == pytest.approx(0.9)
    assert gmp_sparsity(5000, 100, 1100, 0.2, 0.9) == pytest.approx(0.9)
    events = gmp_events(0, 1000, 250, 0.0, 0.8, "uniform", stage=0)
    assert [e.step for e in events] == [0, 250, 500, 750, 1000]
    sparsities = [e.sparsity for e in events]
    assert sparsities == sorted(sparsities) and sparsities[-1] == 0.8
    assert all(e.method == "uniform" for e in events)
    assert {e.method for e in gmp_events(0, 10, 5, 0.0, 0.8, "global", stage=0)} == {"gp"}


def test_rigl_drop_fraction_decays_by_cosine_and_stops_at_75_percent():
    events = dst_events("rigl", 0, 1000, 0.9, distribution="erk", update_every=100, drop_fraction=0.3,
                        stop_fraction=0.75, decay="cosine", seed=0, stage=0)
    updates = events[1:]
    assert events[0].kind == "dst_init"
    assert [e.step for e in updates] == [100, 200, 300, 400, 500, 600, 700]
    for e in updates:
        assert e.drop_fraction == pytest.approx(0.15 * (1 + math.cos(math.pi * e.step / 750)))
        assert e.after_backward and e.kind == "rigl_update"
    constant = dst_events("set", 0, 1000, 0.9, distribution="uniform", update_every=100, drop_fraction=0.3,
                          stop_fraction=0.75, decay="constant", seed=0, stage=0)
    assert all(e.drop_fraction == 0.3 and not e.after_backward for e in constant[1:])


def _layer(seed=0, shape=(30, 40)):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False), nn.Linear(shape[0], 7, bias=False))
    return model, MaskSet(select_targets(model))


@given(seed=st.integers(0, 500), sparsity=st.floats(0.3, 0.95), fraction=st.floats(0.05, 0.5),
       grow=st.sampled_from(["random", "gradient"]))
def test_drop_and_grow_keeps_counts_drops_smallest_grows_best(seed, sparsity, fraction, grow):
    model, masks = _layer(seed)
    apply_dst_event(MaskEvent(0, "dst_init", sparsity, distribution="uniform", seed=seed), masks)
    with torch.no_grad():  # train a little: active weights move, inactive stay zero
        for mask, target in zip(masks.masks, masks.targets):
            target.param.add_(torch.randn_like(target.param) * mask)
    model(torch.randn(5, 40)).square().sum().backward()
    before = [m.clone() for m in masks.masks]
    weights = [t.param.detach().clone() for t in masks.targets]
    grads = [t.param.grad.detach().clone() for t in masks.targets]
    drop_and_grow_(masks, fraction, grow, seed)
    for old, new, w, g, target in zip(before, masks.masks, weights, grads, masks.targets):
        assert int(new.sum()) == int(old.sum())  # budget kept
        count = round(fraction * int(old.sum()))
        # reference: the `count` active weights of smallest magnitude (ties by position) are dropped
        active = torch.nonzero(old.flatten()).squeeze(1)
        order = torch.sort(w.flatten()[active].abs(), stable=True).indices
        expected_dropped = set(active[order[:count]].tolist())
        dropped = set(torch.nonzero((old & ~new).flatten()).squeeze(1).tolist())
        grown = torch.nonzero((new & ~old).flatten()).squeeze(1)
        regrown_dropped = expected_dropped - dropped  # dropped then chosen again by the growth
        assert dropped | regrown_dropped == expected_dropped
        assert torch.count_nonzero(target.param.detach().flatten()[grown]) == 0  # grown start at zero
        if grow == "gradient" and count:
            # reference: among the positions inactive after the drop, the `count` largest |gradient| grow
            was_dropped = torch.zeros(old.numel(), dtype=torch.bool)
            was_dropped[sorted(expected_dropped)] = True
            candidates = torch.nonzero(~old.flatten() | was_dropped).squeeze(1)
            best = candidates[torch.sort(g.flatten()[candidates].abs(), stable=True).indices[-count:]]
            chosen = torch.nonzero(new.flatten() & (~old.flatten() | was_dropped)).squeeze(1)
            assert set(chosen.tolist()) == set(best.tolist())


def test_set_updates_are_seeded():
    results = []
    for _ in range(2):
        model, masks = _layer(1)
        apply_dst_event(MaskEvent(0, "dst_init", 0.8, distribution="erk", seed=3), masks)
        drop_and_grow_(masks, 0.3, "random", seed=11)
        results.append(masks.checksum())
    assert results[0] == results[1]


BASE = {
    "seed": 1, "threads": 1,
    "task": {"dataset": {"name": "mnist1d", "options": {"num_samples": 300}},
             "model": {"name": "small_resnet", "options": {"width": 4}}},
    "data": {"batch_size": 48}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"progress": False},
}


@pytest.mark.parametrize("stage", [
    {"kind": "gmp", "sparsity": 0.85, "epochs": 3, "frequency": 2, "distribution": "global"},
    {"kind": "gmp", "sparsity": 0.85, "epochs": 2, "end_epoch": 2},
    {"kind": "set", "sparsity": 0.85, "epochs": 2, "update_every": 3},
    {"kind": "rigl", "sparsity": 0.85, "epochs": 2, "update_every": 3, "distribution": "uniform"},
])
def test_baseline_runs_follow_their_plan_and_end_exact(tmp_path, stage):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, name="b", output_dir=str(tmp_path / "b"), stages=[stage])))
    config = load_config(path)
    result = run(config, log=lambda line: None)
    targets = select_targets(result.model)
    timeline = resolve_timeline(config, targets, len(build_task(config).train_set))
    happened = [json.loads(line) for line in (tmp_path / "b" / "events.jsonl").read_text().splitlines()]
    assert [(e.step, e.kind) for e in timeline.schedule.events()] == [(h["step"], h["kind"]) for h in happened]
    expected = sparsity_after_events(timeline, [t.shape for t in targets])
    assert [h["sparsity"] for h in happened] == pytest.approx(expected, rel=1e-12)
    masks = result.masks
    assert all(torch.count_nonzero(p[~m]) == 0 for p, m in zip(masks.params, masks.masks))
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    dense_cost = summary["dense_train_flops_per_example"] * 240 * stage["epochs"]  # 240 training examples
    assert 0 < summary["train_flops"] < dense_cost


def test_dense_run_costs_exactly_the_dense_flops(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, name="d", output_dir=str(tmp_path / "d"),
                                        stages=[{"kind": "dense", "epochs": 2}])))
    run(load_config(path), log=lambda line: None)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["train_flops"] == summary["dense_train_flops_per_example"] * 240 * 2
