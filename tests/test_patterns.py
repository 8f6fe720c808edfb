"""N:M and block patterns (sparsity/patterns.py) against brute-force references in pure Python."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_config import tiny_config
from torch import nn

import sparsetrain
from sparsetrain.config import parse_config
from sparsetrain.runner.setup import resolve_timeline
from sparsetrain.runner.timeline import sparsity_after_events
from sparsetrain.runner.train import run
from sparsetrain.sparsity import select_targets
from sparsetrain.sparsity.errors import SparsityError
from sparsetrain.sparsity.patterns import (
    PatternWarning,
    parse_pattern,
    pattern_counts,
    pattern_masks,
)
from sparsetrain.tasks import build_task


def brute_nm(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Loop over every group of m input-dim weights; keep the n largest |w|, ties to the lower index."""
    w = weight.tolist()
    shape = tuple(weight.shape)
    keep = torch.zeros(shape, dtype=torch.bool)
    rest = [range(d) for d in shape[2:]]
    for o in range(shape[0]):
        for pos in itertools.product(*rest):
            for g in range(0, shape[1], m):
                def value(i: int, o: int = o, pos: tuple = pos) -> float:
                    v = w[o][i]
                    for p in pos:
                        v = v[p]
                    return abs(v)
                ranked = sorted(range(g, g + m), key=lambda i, value=value: (-value(i), i))
                for i in ranked[:n]:
                    keep[(o, i, *pos)] = True
    return keep


def brute_blocks(weights: list[torch.Tensor], r: int, c: int, sparsity: float, per_tensor: bool) -> list[torch.Tensor]:
    """Score every block by L1 norm; prune the lowest (ties: tensor order then block index)."""
    blocks = []  # (score, tensor, block row, block col)
    for t, w in enumerate(weights):
        mat = w.reshape(w.shape[0], -1).abs().double().tolist()
        for br in range(len(mat) // r):
            for bc in range(len(mat[0]) // c):
                score = sum(mat[br * r + i][bc * c + j] for i in range(r) for j in range(c))
                blocks.append((score, t, br, bc))
    pruned = []
    if per_tensor:
        for t in range(len(weights)):
            own = [b for b in blocks if b[1] == t]
            own.sort(key=lambda b: (b[0], b[2] * 10**6 + b[3]))
            pruned += own[: round(sparsity * len(own))]
    else:
        ordered = sorted(blocks, key=lambda b: (b[0], b[1], b[2] * 10**6 + b[3]))
        pruned = ordered[: round(sparsity * len(blocks))]
    masks = [torch.ones(w.reshape(w.shape[0], -1).shape, dtype=torch.bool) for w in weights]
    for _, t, br, bc in pruned:
        masks[t][br * r:(br + 1) * r, bc * c:(bc + 1) * c] = False
    return [m.reshape(w.shape) for m, w in zip(masks, weights)]


def _quantized(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Weights with many exact ties (multiples of 1/4, signs mixed) to exercise the tie-break."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-6, 7, shape, generator=g) / 4).float()


@pytest.mark.parametrize("shape", [(6, 8), (4, 8, 3, 3), (3, 16, 1), (5, 12)])
@pytest.mark.parametrize("nm", ["2:4", "1:4", "1:2", "3:4"])
def test_nm_matches_brute_force(shape, nm):
    pattern = parse_pattern(nm)
    if shape[1] % pattern.b:
        pytest.skip("not divisible")
    w = _quantized(shape, 1)
    (mask,), (count,) = pattern_masks([w], nm, None)
    assert torch.equal(mask, brute_nm(w, pattern.a, pattern.b))
    assert count == math.prod(shape) * (pattern.b - pattern.a) // pattern.b


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 4), groups=st.integers(1, 3), kernel=st.sampled_from([(), (2,), (2, 3)]),
       m=st.integers(2, 8), data=st.data(), seed=st.integers(0, 1000))
def test_nm_random_shapes(out, groups, kernel, m, data, seed):
    n = data.draw(st.integers(1, m - 1))
    w = _quantized((out, groups * m, *kernel), seed)
    (mask,), _ = pattern_masks([w], f"{n}:{m}", 1 - n / m)
    assert torch.equal(mask, brute_nm(w, n, m))
    kept = mask.movedim(1, -1).reshape(-1, m).sum(dim=1)
    assert bool((kept == n).all())


def test_nm_non_divisible_stays_dense_with_warning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 6))
    with pytest.warns(PatternWarning, match=r"0\.weight.*input dimension 3 does not divide by M=4"):
        masks = sparsetrain.prune(model, method="gp", pattern="2:4")
    assert bool(model[0].weight.ne(0).all())
    assert masks.target_counts == [0, 32, 24]
    assert pattern_counts(parse_pattern("2:4"), [t.shape for t in masks.targets], 0.5, "gp") == [0, 32, 24]


def test_nm_sparsity_mismatch_and_method_errors():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(SparsityError, match=r"sparsity=0\.7 does not match pattern '2:4'.*0\.5"):
        sparsetrain.prune(model, 0.7, pattern="2:4")
    with pytest.raises(SparsityError, match=r"method='random' does not support pattern '2:4'"):
        sparsetrain.prune(model, 0.5, method="random", pattern="2:4")
    with pytest.raises(SparsityError, match=r"needs a sparsity"):
        sparsetrain.prune(model, method="gp", pattern="1x4")
    masks = sparsetrain.prune(model, 0.5, pattern="2:4")
    assert masks.target_counts == [16]


@pytest.mark.parametrize("bad", ["", "2:2", "4:2", "0:4", "1x1", "2x", "a:b", "2:4:8", "0x4", 3])
def test_bad_pattern_strings(bad):
    with pytest.raises(SparsityError) as info:
        parse_pattern(bad)
    message = str(info.value)
    assert "\n" not in message and repr(bad) in message and "'N:M'" in message and "'RxC'" in message


@pytest.mark.parametrize("block", ["1x8", "4x4", "2x3"])
@pytest.mark.parametrize("method", ["gp", "uniform"])
def test_blocks_match_brute_force(block, method):
    pattern = parse_pattern(block)
    shapes = [(8, 24), (4, 8, 3, 3), (12, 48)]
    weights = [_quantized(s, i + 7) for i, s in enumerate(shapes)]
    for sparsity in (0.0, 0.3, 0.75):
        masks, counts = pattern_masks(weights, block, sparsity, method)
        expected = brute_blocks(weights, pattern.a, pattern.b, sparsity, per_tensor=method == "uniform")
        for got, want in zip(masks, expected):
            assert torch.equal(got, want)
        predicted = pattern_counts(pattern, shapes, sparsity, method)
        assert sum(predicted) == sum(counts)
        if method == "uniform":
            assert predicted == counts


def test_blocks_erk_exact_block_counts_and_dense_warning():
    shapes = [(8, 24), (4, 8, 3, 3), (5, 7)]
    weights = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    with pytest.warns(PatternWarning, match=r"tensor 2.*5x7 does not divide into 4x4"):
        masks, counts = pattern_masks(weights, "4x4", 0.6, "erk")
    blocks = 8 * 24 // 16 + 4 * 72 // 16
    assert sum(counts) == round(0.6 * blocks) * 16
    assert counts[2] == 0 and bool(masks[2].all())
    assert counts == pattern_counts(parse_pattern("4x4"), shapes, 0.6, "erk")


def test_prune_api_blocks_zero_the_weights():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = sparsetrain.prune(model, 0.5, pattern="1x8")
    assert sum(masks.target_counts) == round(0.5 * (16 + 8)) * 8
    zeros = sum(int((p == 0).sum()) for p in (model[0].weight, model[2].weight))
    assert zeros == sum(masks.target_counts)


# ---- the one-shot stage, plan and config fingerprints ----------------------------------------


def test_config_without_pattern_keeps_its_fingerprint():
    assert parse_config(tiny_config()).fingerprint() == "ec872b2226c4432b"  # computed before `pattern` existed
    stages = tiny_config()["stages"]
    stages[1] = {"kind": "prune", "method": "gp", "pattern": "2:4"}
    assert parse_config(tiny_config(stages=stages)).fingerprint() != "ec872b2226c4432b"


@pytest.mark.parametrize("stage, message", [
    ({"kind": "prune", "method": "random", "sparsity": 0.5, "pattern": "2:4"}, "does not support pattern '2:4'"),
    ({"kind": "prune", "method": "gpmt", "sparsity": 0.5, "pattern": "1x8"}, "does not support pattern '1x8'"),
    ({"kind": "prune", "method": "gp", "sparsity": 0.6, "pattern": "2:4"}, "does not match pattern '2:4'"),
    ({"kind": "prune", "method": "gp", "pattern": "2-4"}, "pattern='2-4' is not a valid pattern"),
    ({"kind": "prune", "method": "gp", "pattern": "1x8"}, "missing key 'stages.1.sparsity'"),
])
def test_stage_refuses_bad_patterns_in_one_line(stage, message):
    stages = tiny_config()["stages"]
    stages[1] = stage
    with pytest.raises(ValueError) as info:
        parse_config(tiny_config(stages=stages))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("stage", [
    {"kind": "prune", "method": "gp", "pattern": "2:4"},
    {"kind": "prune", "method": "gp", "sparsity": 0.6, "pattern": "1x8"},
    {"kind": "prune", "method": "uniform", "sparsity": 0.3, "pattern": "2x4"},
])
def test_tiny_run_with_a_pattern_matches_its_plan(tmp_path, stage):
    stages = tiny_config()["stages"]
    stages[1] = stage
    config = parse_config(tiny_config(stages=stages, output_dir=str(tmp_path / "run")))
    result = run(config, log=lambda line: None)
    targets = select_targets(result.model)
    timeline = resolve_timeline(config, targets, len(build_task(config).train_set))
    expected = sparsity_after_events(timeline, [t.shape for t in targets])
    params = [t.param.detach() for t in targets]
    zeros = sum(int((p == 0).sum()) for p in params)
    measured = zeros / sum(p.numel() for p in params)
    assert expected[-1] == pytest.approx(measured, rel=1e-12)
    if stage["pattern"] == "2:4":
        for p in params:
            assert bool((p.ne(0).reshape(-1, 4).sum(dim=1) == 2).all())


@pytest.mark.parametrize("stage", [
    {"kind": "sgap", "pattern": "2:4", "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1,
     "finetune_epochs": 0},
    {"kind": "sgap", "sparsity": 0.6, "pattern": "1x8", "distribution": "non-uniform", "init": "magnitude",
     "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1, "finetune_epochs": 0},
    {"kind": "pgap", "sparsity": 0.5, "pattern": "2x4", "partitions": {"scheme": "layers", "kappa": 2},
     "epochs_per_step": 1, "finetune_epochs": 0},
])
def test_gap_with_a_pattern_follows_its_plan(tmp_path, stage):
    config = parse_config(tiny_config(stages=[stage], output_dir=str(tmp_path / "gap")))
    result = run(config, log=lambda line: None)
    targets = select_targets(result.model)
    timeline = resolve_timeline(config, targets, len(build_task(config).train_set))
    happened = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e.step, e.kind) for e in timeline.schedule.events()] == [(h["step"], h["kind"]) for h in happened]
    expected = sparsity_after_events(timeline, [t.shape for t in targets])
    assert [h["sparsity"] for h in happened] == pytest.approx(expected, abs=0, rel=1e-12)
    assert result.masks.pruned_count() == round(expected[-1] * result.masks.numel())
    if stage["pattern"] == "2:4":
        for p in result.masks.params:
            assert bool((p.detach().ne(0).reshape(-1, 4).sum(dim=1) == 2).all())


def test_gap_refuses_erk_with_a_pattern():
    stage = {"kind": "sgap", "sparsity": 0.5, "pattern": "2x2", "distribution": "erk",
             "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1, "finetune_epochs": 0}
    with pytest.raises(ValueError, match=r"distribution='erk' does not support pattern '2x2'"):
        parse_config(tiny_config(stages=[stage]))


@settings(max_examples=20, deadline=None)
@given(r=st.integers(1, 3), c=st.integers(1, 4), grid=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)),
       min_size=1, max_size=3), sparsity=st.floats(0, 0.95), per_tensor=st.booleans(), seed=st.integers(0, 99))
def test_blocks_random_shapes(r, c, grid, sparsity, per_tensor, seed):
    if r * c == 1:
        c = 2
    weights = [_quantized((br * r, bc * c), seed + i) for i, (br, bc) in enumerate(grid)]
    masks, counts = pattern_masks(weights, f"{r}x{c}", sparsity, "uniform" if per_tensor else "gp")
    for got, want in zip(masks, brute_blocks(weights, r, c, sparsity, per_tensor)):
        assert torch.equal(got, want)
    blocks = sum(br * bc for br, bc in grid)
    if not per_tensor:
        assert sum(counts) == round(sparsity * blocks) * r * c
