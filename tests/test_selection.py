import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetrain.sparsity import SparsityError, find_threshold, pruned_counts_from_threshold, smallest_magnitude_masks
from sparsetrain.sparsity import selection
from conftest import reference_keep_masks


def _assert_matches_reference(tensors, k):
    masks = smallest_magnitude_masks(tensors, k)
    expected = reference_keep_masks(tensors, k)
    for got, want in zip(masks, expected):
        assert got.dtype == torch.bool
        assert torch.equal(got, want)
    assert sum(int((~m).sum()) for m in masks) == k
    threshold = find_threshold(tensors, k)
    assert pruned_counts_from_threshold(tensors, threshold) == [int((~m).sum()) for m in masks]


@st.composite
def populations(draw):
    n_tensors = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 300)) for _ in range(n_tensors)]
    levels = draw(st.sampled_from([3, 17, 1000, 0]))  # 0 means continuous values
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for n in sizes:
        if levels:
            tensors.append(torch.randint(-levels, levels + 1, (n,), generator=g).float() / levels)
        else:
            tensors.append(torch.randn(n, generator=g))
    total = sum(sizes)
    k = draw(st.integers(0, total))
    return tensors, k


@given(populations())
def test_small_populations_match_stable_sort_reference(case):
    tensors, k = case
    _assert_matches_reference(tensors, k)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the patch is constant
@given(populations())
def test_bracketing_and_bisection_paths_match_reference(tiny_passes, case):
    tensors, k = case
    _assert_matches_reference(tensors, k)


@pytest.fixture
def two_scan_threads(monkeypatch):
    """Every pass on 2 Python threads (the contention-proof path), whatever the population's size."""
    monkeypatch.setattr(selection, "PARALLEL_MIN", 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    assert torch.get_num_threads() == 2  # the scans restore torch's thread count
    torch.set_num_threads(previous)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the patches are constant
@given(populations())
def test_threaded_scans_match_reference_on_every_path(tiny_passes, two_scan_threads, case):
    """Tensors scanned on two threads (results combined in tensor order) give the stable-sort reference's masks,
    ties included, on the one-pass, bracketing and bisection paths alike."""
    tensors, k = case
    _assert_matches_reference(tensors, k)
    threshold = find_threshold(tensors, k)
    expected = [t.numel() - int(m.sum()) for t, m in zip(tensors, reference_keep_masks(tensors, k))]
    assert pruned_counts_from_threshold(tensors, threshold) == expected


def test_threaded_scans_on_a_large_tied_population_equal_one_thread():
    """Above PARALLEL_MIN with 2 torch threads the passes run on 2 Python threads; masks equal the one-thread run's
    and the reference, with a threshold inside a run of 40,000 ties spread over three tensors."""
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(700_000, generator=g), torch.randn(400, 900, generator=g), torch.randn(50_000, generator=g)]
    for t in tensors:
        t[: 40_000 // 3] = 0.25  # ties at one magnitude, in every tensor
    total = sum(t.numel() for t in tensors)
    previous = torch.get_num_threads()
    try:
        for k in (round(0.2 * total), round(0.9 * total)):
            torch.set_num_threads(1)
            one = smallest_magnitude_masks(tensors, k)
            torch.set_num_threads(2)
            two = smallest_magnitude_masks(tensors, k)
            assert torch.get_num_threads() == 2
            assert all(torch.equal(a, b) for a, b in zip(one, two))
            assert all(torch.equal(a, b) for a, b in zip(two, reference_keep_masks(tensors, k)))
    finally:
        torch.set_num_threads(previous)


def test_massive_ties_at_zero_take_the_single_value_path(tiny_passes):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(1000, generator=g)
    a[::2] = 0.0  # 500 exact zeros, far more than COLLECT_LIMIT
    b = torch.zeros(300)
    for k in (0, 1, 250, 799, 800, 801, 1300):
        _assert_matches_reference([a, b], k)


def test_default_sizes_on_a_large_population():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(300_000, generator=g), torch.randn(200, 300, generator=g) * 0.01, torch.randn(5, generator=g)]
    total = sum(t.numel() for t in tensors)
    for k in (1, total // 2, round(0.9 * total), total - 1, total):
        _assert_matches_reference(tensors, k)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_rank_like_float64(dtype):
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(70_000, generator=g).to(dtype), torch.randn(40, 50, generator=g).to(dtype)]
    _assert_matches_reference(tensors, 50_000)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_name_the_tensor(bad):
    clean, dirty = torch.randn(100), torch.randn(100_000)
    dirty[12_345] = bad
    with pytest.raises(SparsityError, match="layer2.weight holds NaN or inf"):
        find_threshold([clean, dirty], 50, names=["layer1.weight", "layer2.weight"])
    with pytest.raises(SparsityError, match="'fc' holds NaN or inf|fc holds NaN or inf"):
        find_threshold([dirty[:10].clone().fill_(bad)], 3, names=["fc"])


def test_huge_finite_magnitudes_are_not_mistaken_for_inf():
    big = torch.full((1000,), 3e38)
    big[:10] = 1.0
    masks = smallest_magnitude_masks([big], 10)
    assert int((~masks[0]).sum()) == 10 and not masks[0][:10].any()


@pytest.mark.parametrize("k", [-1, 11, 2.5, True])
def test_k_outside_population_is_rejected(k):
    with pytest.raises(SparsityError, match=r"k=.* is outside \[0, 10\]"):
        find_threshold([torch.randn(10)], k)


def test_integer_tensors_are_rejected():
    with pytest.raises(SparsityError, match="only floating-point"):
        find_threshold([torch.arange(10)], 3, names=["counts"])


def test_masks_are_written_into_out_buffers():
    t = torch.randn(5000)
    out = [torch.ones(5000, dtype=torch.bool)]
    masks = smallest_magnitude_masks([t], 1234, out=out)
    assert masks[0] is out[0]
    assert int((~out[0]).sum()) == 1234
