"""The fused magnitude scan (numba) against plain torch, and the selection's two scan paths against each other."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetrain.sparsity import SparsityError, band_scan, selection, smallest_magnitude_masks
from conftest import reference_keep_masks

SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 2.5e-39, 1.0, -1.0, 0.5, -0.5, 3e38]


@st.composite
def scans(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    size = draw(st.integers(1, 400))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.randn(size, generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # many ties and signed zeros
        values = torch.tensor(SPECIAL, dtype=torch.float64)[torch.randint(len(SPECIAL), (size,), generator=g)]
    tensor = values.to(dtype)
    magnitudes = tensor.abs()
    lo, hi = sorted(float(magnitudes[draw(st.integers(0, size - 1))]) for _ in range(2))
    if draw(st.booleans()):
        hi = math.inf
    chunk = draw(st.sampled_from([1, 7, 64, 65, 130, 1000]))
    return tensor, lo, hi, chunk


@given(scans())
def test_fused_scan_equals_torch(case):
    tensor, lo, hi, chunk = case
    mask = torch.empty(tensor.shape, dtype=torch.bool)
    found = band_scan.scan_chunks(tensor, tensor.dtype, lo, hi, chunk, lambda n: True, mask)
    magnitudes = tensor.abs()
    assert torch.equal(mask, magnitudes >= lo)
    assert found.kept == int((magnitudes >= lo).sum())
    assert found.finite
    inside = torch.nonzero((magnitudes >= lo) & (magnitudes < hi)).squeeze(1)
    positions = torch.from_numpy(np.concatenate(found.positions or [np.empty(0, dtype=np.int64)]))
    values = torch.from_numpy(np.concatenate(found.values or [np.empty(0, dtype=np.float64)]))
    assert torch.equal(positions, inside)
    assert torch.equal(values.to(tensor.dtype), magnitudes[inside])
    assert all(v.dtype == torch.empty(0, dtype=tensor.dtype).numpy().dtype for v in found.values)
    assert not any(np.signbit(v).any() for v in found.values)  # -0.0 comes back as +0.0, a magnitude


def test_fused_scan_reads_non_contiguous_tensors_in_flat_order():
    tensor = torch.randn(70, 90).t()  # a transposed view
    mask = torch.empty(tensor.shape, dtype=torch.bool)
    found = band_scan.scan_chunks(tensor, torch.float32, 0.5, 0.6, 1000, lambda n: True, mask)
    flat = tensor.reshape(-1).abs()
    assert torch.equal(mask, tensor.abs() >= 0.5)
    assert torch.equal(torch.from_numpy(np.concatenate(found.positions)),
                       torch.nonzero((flat >= 0.5) & (flat < 0.6)).squeeze(1))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fused_scan_flags_non_finite(bad):
    tensor = torch.randn(1000, dtype=torch.float64)
    tensor[777] = bad
    found = band_scan.scan_chunks(tensor, torch.float64, 0.1, 0.2, 256,
                                  lambda n: True)
    assert not found.finite


def test_fused_scan_drops_what_the_gather_budget_refuses_and_keeps_counting():
    asked = []

    def room(n):
        asked.append(n)
        return len(asked) != 2

    tensor = torch.randn(1000)
    found = band_scan.scan_chunks(tensor, torch.float32, 0.0, math.inf, 300, room)
    assert asked == [300, 300, 300, 100]
    assert not found.complete and found.found == 1000 and found.kept == 1000
    assert [p[0] for p in found.positions] == [0, 600, 900]  # the second chunk's values were dropped


def test_fused_scan_without_a_mask_only_counts():
    tensor = torch.tensor([0.0, -0.0, 1e-45, 0.5, -0.5, 2.0] * 50)
    found = band_scan.scan_chunks(tensor, torch.float32, 0.5, 0.75, 64, lambda n: False)
    assert (found.kept, found.found, found.values, found.complete) == (150, 100, [], False)


def test_only_cpu_float32_and_float64_at_their_own_precision_are_fused():
    assert band_scan.supports(torch.zeros(3), torch.float32)
    assert band_scan.supports(torch.zeros(3, dtype=torch.float64), torch.float64)
    assert not band_scan.supports(torch.zeros(3), torch.float64)  # ranked as float64 beside a float64 tensor
    assert not band_scan.supports(torch.zeros(3, dtype=torch.float16), torch.float32)
    assert not band_scan.supports(torch.zeros(3, dtype=torch.bfloat16), torch.float32)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks, sample and the single-pass threshold small enough that the one-pass path runs on small data."""
    monkeypatch.setattr(selection, "CHUNK", 64)
    monkeypatch.setattr(selection, "SAMPLE", 32)
    monkeypatch.setattr(selection, "SMALL", 16)


@st.composite
def populations(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    sizes = [draw(st.integers(1, 500)) for _ in range(draw(st.integers(1, 4)))]
    levels = draw(st.sampled_from([3, 50, 0]))  # 0 means continuous values
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    tensors = [(torch.randint(-levels, levels + 1, (n,), generator=g).double() / levels if levels
                else torch.randn(n, generator=g, dtype=torch.float64)).to(dtype) for n in sizes]
    return tensors, draw(st.integers(0, sum(sizes)))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the patches are constant
@given(populations())
def test_fused_and_torch_scans_give_the_same_masks(small_chunks, monkeypatch, case):
    tensors, k = case
    fused = smallest_magnitude_masks(tensors, k)
    with monkeypatch.context() as patch:
        patch.setattr(band_scan, "supports", lambda tensor, work: False)
        plain = smallest_magnitude_masks(tensors, k)
    for a, b, want in zip(fused, plain, reference_keep_masks(tensors, k)):
        assert torch.equal(a, want) and torch.equal(b, want)


def test_mixed_precisions_take_both_paths_in_one_selection():
    g = torch.Generator().manual_seed(5)
    tensors = [torch.randn(80_000, generator=g), torch.randn(30_000, generator=g).half(),
               torch.randn(300, 100, generator=g).bfloat16()]
    for k in (1, 60_000, 139_999):
        masks = smallest_magnitude_masks(tensors, k)
        assert all(torch.equal(a, b) for a, b in zip(masks, reference_keep_masks(tensors, k)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_weights_name_the_tensor_on_the_one_pass_path(monkeypatch, bad, fused):
    if not fused:
        monkeypatch.setattr(band_scan, "supports", lambda tensor, work: False)
    clean, dirty = torch.randn(100), torch.randn(100_000)
    dirty[54_321] = bad
    with pytest.raises(SparsityError, match="layer2.weight holds NaN or inf"):
        smallest_magnitude_masks([clean, dirty], 50_000, names=["layer1.weight", "layer2.weight"])


def test_fused_scans_leave_torch_thread_count_alone(monkeypatch):
    """The one-pass scans run on 2 Python threads; torch's pool drops to one thread only while some tensor needs
    torch kernels (half precision here), and is 2 again afterwards."""
    monkeypatch.setattr(selection, "PARALLEL_MIN", 0)
    seen = []
    real = band_scan.scan_chunks

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(band_scan, "scan_chunks", recording)
    g = torch.Generator().manual_seed(0)
    floats = [torch.randn(90_000, generator=g), torch.randn(70_000, generator=g)]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        smallest_magnitude_masks(floats, 100_000)
        assert seen == [2, 2]
        seen.clear()
        smallest_magnitude_masks(floats + [torch.randn(70_000, generator=g).half()], 100_000)
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the patches are constant
@given(populations())
def test_fused_and_torch_general_passes_agree(tiny_passes, monkeypatch, case):
    """find_threshold (bracket and counting passes), masks_from_threshold and pruned_counts_from_threshold give the
    same threshold, masks and counts through the fused scan and through torch ops."""
    tensors, k = case

    def general(tensors, k):
        threshold = selection.find_threshold(tensors, k)
        masks = selection.masks_from_threshold(tensors, threshold)
        return threshold, masks, selection.pruned_counts_from_threshold(tensors, threshold)

    fused = general(tensors, k)
    with monkeypatch.context() as patch:
        patch.setattr(band_scan, "supports", lambda tensor, work: False)
        plain = general(tensors, k)
    assert fused[0] == plain[0] and fused[2] == plain[2]
    for a, b, want in zip(fused[1], plain[1], reference_keep_masks(tensors, k)):
        assert torch.equal(a, want) and torch.equal(b, want)


def test_without_numba_selection_takes_the_torch_path(tmp_path):
    """With numba not importable (a source checkout on PYTHONPATH without the dependencies) nothing is fused and
    the masks are the same."""
    code = """
import sys
sys.modules["numba"] = None  # import numba raises ImportError
import torch
from sparsetrain.sparsity import band_scan, smallest_magnitude_masks
assert band_scan.numba is None and not band_scan.supports(torch.zeros(3), torch.float32)
g = torch.Generator().manual_seed(0)
tensors = [torch.randn(90_000, generator=g), torch.randn(300, 100, generator=g)]
torch.save(smallest_magnitude_masks(tensors, 100_000), sys.argv[1])
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "masks.pt")], check=True)
    masks = torch.load(tmp_path / "masks.pt", weights_only=True)
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(90_000, generator=g), torch.randn(300, 100, generator=g)]
    assert all(torch.equal(a, b) for a, b in zip(masks, reference_keep_masks(tensors, 100_000)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_take_the_torch_path_with_the_same_masks():
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(300_000, generator=g), torch.randn(500, 300, generator=g), torch.randn(70, generator=g)]
    for t in tensors[:2]:
        t[:5000] = 0.125  # ties straddling some thresholds
    total = sum(t.numel() for t in tensors)
    for k in (1, 5000, total // 2, round(0.9 * total)):
        on_gpu = smallest_magnitude_masks([t.cuda() for t in tensors], k)
        assert all(m.is_cuda for m in on_gpu)
        threshold = selection.find_threshold([t.cuda() for t in tensors], k)
        assert threshold == selection.find_threshold(tensors, k)
        for a, b in zip(on_gpu, smallest_magnitude_masks(tensors, k)):
            assert torch.equal(a.cpu(), b)
