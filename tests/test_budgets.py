import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from sparsetrain.models.reference_shapes import resnet50_random_weights
from sparsetrain.sparsity import (
    SparsityError,
    erk_counts,
    global_counts,
    max_min_threshold_sparsity,
    min_threshold_counts,
    min_threshold_floor,
    profile_counts,
    uniform_counts,
)

RESNET50_WEIGHTS = 25_502_912


@pytest.fixture(scope="module")
def resnet50():
    named = resnet50_random_weights(seed=0)
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    return names, tensors, [t.numel() for t in tensors]


def test_min_threshold_floor_is_exact():
    assert min_threshold_floor(RESNET50_WEIGHTS, 0.05) == 12_751
    assert min_threshold_floor(RESNET50_WEIGHTS, 0.0075) == 1_912
    assert min_threshold_floor(RESNET50_WEIGHTS, 0.005) == 1_275
    assert min_threshold_floor(1000, 0.1) == 1  # 1000 * 0.1 / 100 is exactly 1


@pytest.mark.slow
def test_gpmt_on_resnet50_layer_sizes(resnet50):
    names, tensors, numels = resnet50
    assert sum(numels) == RESNET50_WEIGHTS
    gp = global_counts(tensors, 0.9, names)
    counts = min_threshold_counts(numels, gp, 0.9, 0.05)
    kept = [n - c for n, c in zip(numels, counts)]
    assert sum(counts) == round(0.9 * RESNET50_WEIGHTS)
    small = [name for name, n in zip(names, numels) if n < 12_751]
    assert small == ["conv1.weight", "layer1.0.conv1.weight"]
    for name, n, c, k in zip(names, numels, counts, kept):
        if n < 12_751:
            assert c == 0, name
        else:
            assert k >= 12_751, name
    # The free layers share the rest in proportion to their GP counts (up to integer rounding).
    clamped = {i for i, k in enumerate(kept) if k == 12_751}
    assert clamped, "at 90% the floor should bind on some layer of random ResNet-50 weights"
    free = [i for i in range(len(numels)) if i not in clamped and counts[i] > 0]
    ratios = [counts[i] / gp[i] for i in free]
    assert max(ratios) - min(ratios) < 1e-3 and min(ratios) >= 1.0


@pytest.mark.slow
def test_gpmt_infeasible_target_states_the_reachable_maximum(resnet50):
    names, tensors, numels = resnet50
    gp = global_counts(tensors, 0.98, names)
    assert max_min_threshold_sparsity(numels, gp, 0.05) == pytest.approx(0.9735, abs=5e-5)
    with pytest.raises(SparsityError, match=r"sparsity=0\.98 is unreachable .* highest reachable sparsity is 97\.347"):
        min_threshold_counts(numels, gp, 0.98, 0.05)


def test_gpmt_zero_threshold_is_gp():
    numels, gp = [100, 50, 10], [90, 20, 5]
    assert min_threshold_counts(numels, gp, sum(gp) / 160, 0.0) == gp


@pytest.mark.parametrize("mt", [-0.1, 100.5, math.nan, "5"])
def test_bad_min_threshold(mt):
    with pytest.raises(SparsityError, match="min_threshold="):
        min_threshold_counts([100, 100], [50, 50], 0.5, mt)


@st.composite
def gpmt_cases(draw):
    numels = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=12))
    gp = [draw(st.integers(0, n)) for n in numels]
    assume(sum(gp) < sum(numels))
    total = sum(numels)
    k = sum(gp)
    sparsity = k / total
    mt = draw(st.sampled_from([0.0, 0.5, 1.0, 5.0, 20.0]))
    return numels, gp, sparsity, mt


@given(gpmt_cases())
def test_gpmt_invariants(case):
    numels, gp, sparsity, mt = case
    total = sum(numels)
    floor = min_threshold_floor(total, mt)
    try:
        counts = min_threshold_counts(numels, gp, sparsity, mt)
    except SparsityError as err:
        assert "unreachable" in str(err)
        assert round(sparsity * total) > sum(n - floor for n, g in zip(numels, gp) if n > floor and g > 0)
        return
    assert sum(counts) == round(sparsity * total)
    for n, g, c in zip(numels, gp, counts):
        assert 0 <= c <= n
        if n < floor or g == 0:
            assert c == 0
        else:
            assert n - c >= floor


def _rigl_erk_densities(shapes, sparsity):
    """RigL's iterative ERK allocation (google-research/rigl sparse_utils), in float arithmetic."""
    numels = [math.prod(s) for s in shapes]
    dense: set[int] = set()
    while True:
        divisor, rhs, raw = 0.0, 0.0, {}
        for i, (shape, n) in enumerate(zip(shapes, numels)):
            if i in dense:
                rhs -= n * sparsity
            else:
                rhs += n * (1 - sparsity)
                raw[i] = sum(shape) / n
                divisor += raw[i] * n
        if not raw:  # every layer dense (sparsity 0)
            return [1.0] * len(shapes)
        eps = rhs / divisor
        worst = max(raw.values())
        if worst * eps > 1:
            dense |= {i for i, r in raw.items() if r == worst}
        else:
            break
    return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]


@given(
    shapes=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 64), st.integers(1, 64)),
            st.tuples(st.integers(1, 32), st.integers(1, 32), st.integers(1, 5), st.integers(1, 5)),
        ),
        min_size=1,
        max_size=8,
    ),
    sparsity=st.floats(0.0, 0.99),
)
def test_erk_matches_rigl_allocation(shapes, sparsity):
    counts = erk_counts(shapes, sparsity)
    numels = [math.prod(s) for s in shapes]
    assert sum(counts) == round(sparsity * sum(numels))
    expected = _rigl_erk_densities(shapes, sparsity)
    for n, c, d in zip(numels, counts, expected):
        assert 0 <= c <= n
        assert abs((n - c) - d * n) <= 1.0 + 1e-6 * n  # integer rounding of the same allocation


def test_uniform_rounds_like_torch_prune():
    assert uniform_counts([10, 3, 7], 0.5) == [5, 2, 4]  # round half to even, as torch
    with pytest.raises(SparsityError, match=r"sparsity=1\.0 is outside \[0, 1\)"):
        uniform_counts([10], 1.0)


def test_profile_first_match_wins_and_errors_are_specific():
    names = ["conv1.weight", "layer1.0.conv1.weight", "fc.weight"]
    assert profile_counts(names, [100, 200, 10], {r"^fc\.": 0.5, ".*": 0.9}) == [90, 180, 5]
    with pytest.raises(SparsityError, match="no profile pattern matches target 'fc.weight'"):
        profile_counts(names, [100, 200, 10], {"conv": 0.5})
    with pytest.raises(SparsityError, match="profile pattern 'bn' matches no target"):
        profile_counts(names, [100, 200, 10], {".*": 0.5, "bn": 0.1})
    with pytest.raises(SparsityError, match=r"profile\['fc'\]=1\.5 is outside \[0, 1\)"):
        profile_counts(names, [100, 200, 10], {"fc": 1.5, ".*": 0.5})
    with pytest.raises(SparsityError, match="not a valid regex"):
        profile_counts(names, [100, 200, 10], {"(": 0.5})
