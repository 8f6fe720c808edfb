"""Tests for sparsetrain.interop.gpmt_files (reference GPMT file formats)."""

from __future__ import annotations

import os
import pickletools
import warnings

import numpy as np
import pytest
import torch
import torch.serialization

from sparsetrain.interop import gpmt_files as gf

# --------------------------------------------------------------------------
# prune_log.csv


def test_prune_log_round_trip(tmp_path):
    numels = [432, 2048, 5120, 36864]
    counts = [0, 1024, 5000, 30000]
    path = tmp_path / "prune_log.csv"
    gf.write_prune_log(path, numels, counts, post_accuracy=45.12199783325195, pre_accuracy=96.04)
    log = gf.read_prune_log(path)
    assert log.layer_numels == tuple(numels)
    assert log.pruned_counts == tuple(counts)
    assert log.percent_pruned == tuple(100 * c / n for c, n in zip(counts, numels))
    assert log.sparsities == tuple((100 * c / n) / 100 for c, n in zip(counts, numels))
    assert log.post_accuracy == 45.12199783325195
    assert log.pre_accuracy == 96.04
    assert log.num_layers == 4


def test_prune_log_round_trip_without_accuracies(tmp_path):
    path = tmp_path / "prune_refined_log.csv"
    gf.write_prune_log(path, [10, 20], [np.int64(3), 20], post_accuracy=None)
    log = gf.read_prune_log(path)
    assert log.layer_numels == (10, 20)
    assert log.pruned_counts == (3, 20)
    assert log.post_accuracy is None
    assert log.pre_accuracy is None


def test_prune_log_exact_layout(tmp_path):
    path = tmp_path / "prune_log.csv"
    gf.write_prune_log(path, [9408, 4096], [1, 2], post_accuracy=12.5, pre_accuracy=77.04)
    expected = (
        ",Layer Index,Layer Weights,Pre Accuracy,Weights Pruned,% Pruning,Post Accuracy\n"
        "0,1,9408,77.04,1,0.010629251700680272,NA\n"
        "1,2,4096,77.04,2,0.048828125,NA\n"
        "2,,,,,,12.5\n"
    )
    assert path.read_bytes() == expected.encode()

    gf.write_prune_log(path, [9408, 4096], [1, 2], post_accuracy=12.5)
    lines = path.read_text().splitlines()
    assert lines[1] == "0,1,9408,,1,0.010629251700680272,NA"
    assert lines[-1] == "2,,,,,,12.5"


def test_prune_log_accepted_by_reference_stage2_parser(tmp_path):
    # The reference's stage 2 reads the file like this, by column position.
    numels = [9408, 4096, 36864, 2048000]
    counts = [7654, 3686, 30000, 1900000]
    path = tmp_path / "prune_log.csv"
    gf.write_prune_log(path, numels, counts, post_accuracy=0.1)
    table = np.genfromtxt(path, delimiter=",", skip_header=1)
    assert table.shape == (5, 7)
    np.testing.assert_array_equal(table[:-1, 2], numels)
    np.testing.assert_array_equal(table[:-1, 5] / 100, [c * 100 / n / 100 for c, n in zip(counts, numels)])
    assert table[-1, 6] == 0.1


# Written the way pandas 1.x DataFrame.to_csv writes the reference's log
# (object columns, "" on the summary row, hard-coded Pre Accuracy).
REFERENCE_LOG = (
    ",Layer Index,Layer Weights,Pre Accuracy,Weights Pruned,% Pruning,Post Accuracy\n"
    "0,1,9408,77.04,7654,81.3562925170068,NA\n"
    "1,2,4096,77.04,3686,89.990234375,NA\n"
    "2,3,36864,77.04,0,0.0,NA\n"
    "3,4,2048000,77.04,2048000,100.0,NA\n"
    "4,,,,,,0.10000000149011612\n"
)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_reference_written_prune_log_parses(tmp_path, newline):
    path = tmp_path / "prune_log.csv"
    path.write_bytes(REFERENCE_LOG.replace("\n", newline).encode())
    log = gf.read_prune_log(path)
    assert log.layer_numels == (9408, 4096, 36864, 2048000)
    assert log.pruned_counts == (7654, 3686, 0, 2048000)
    assert log.percent_pruned == (81.3562925170068, 89.990234375, 0.0, 100.0)
    assert log.sparsities[3] == 1.0
    assert log.pre_accuracy == 77.04
    assert log.post_accuracy == 0.10000000149011612


def test_reference_log_with_float_integer_columns_parses(tmp_path):
    path = tmp_path / "prune_log.csv"
    path.write_text(
        REFERENCE_LOG.replace("0,1,9408,77.04,7654,", "0,1.0,9408.0,77.04,7654.0,")
    )
    assert gf.read_prune_log(path).layer_numels[0] == 9408


@pytest.mark.parametrize(
    "content, line",
    [
        ("", 1),
        ("Layer Index,Layer Weights\n1,2\n", 1),
        (REFERENCE_LOG.replace("0,1,9408,", "0,1,abc,"), 2),
        (REFERENCE_LOG.replace("1,2,4096,77.04,3686,", "1,2,4096,77.04,3686,12,"), 3),
        (REFERENCE_LOG.replace("89.990234375", "12.0"), 3),
        (REFERENCE_LOG.replace("2,3,36864", "2,7,36864"), 4),
        (REFERENCE_LOG.replace("3686", "5000"), 3),
        (REFERENCE_LOG.rsplit("4,,,", 1)[0], 5),  # truncated: no final row
        (REFERENCE_LOG.replace("NA\n2,3", "45.0\n2,3"), 3),
        (REFERENCE_LOG.replace("0.10000000149011612", "x"), 6),
    ],
)
def test_malformed_prune_log_gives_one_line_error(tmp_path, content, line):
    path = tmp_path / "bad_log.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        gf.read_prune_log(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"line {line}:" in message


@pytest.mark.parametrize(
    "numels, counts, post",
    [
        ([10, 20], [1], 1.0),
        ([], [], 1.0),
        ([10], [11], 1.0),
        ([0], [0], 1.0),
        ([10], [1.5], 1.0),
        ([10], [1], float("nan")),
    ],
)
def test_write_prune_log_rejects_bad_input(tmp_path, numels, counts, post):
    with pytest.raises(ValueError):
        gf.write_prune_log(tmp_path / "p.csv", numels, counts, post)
    assert not (tmp_path / "p.csv").exists()


# --------------------------------------------------------------------------
# layer_sparsities.csv


def test_layer_sparsities_round_trip_exact(tmp_path):
    values = [0.0, 1.0, 0.1 + 0.2, 1 / 3, 0.9999999999999999, 5e-324, 0.9012345678901234]
    path = tmp_path / "layer_sparsities.csv"
    gf.write_layer_sparsities(path, np.array(values))
    back = gf.read_layer_sparsities(path)
    assert back == values
    assert all(type(v) is float for v in back)
    # The reference's stage 3 reads the file with genfromtxt.
    np.testing.assert_array_equal(np.genfromtxt(path, delimiter=","), values)


def test_layer_sparsities_reads_numpy_savetxt_output(tmp_path):
    values = np.array([0.0, 0.123456789012345678, 0.98, 1 / 7])
    path = tmp_path / "layer_sparsities.csv"
    np.savetxt(path, values, delimiter=",")  # what the reference does
    assert gf.read_layer_sparsities(path) == values.tolist()


@pytest.mark.parametrize("content, line", [("0.5\nabc\n", 2), ("0.5\n\n1.5\n", 3), ("0.1,0.2\n", 1), ("nan\n", 1)])
def test_malformed_layer_sparsities(tmp_path, content, line):
    path = tmp_path / "layer_sparsities.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"line {line}:") as info:
        gf.read_layer_sparsities(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_write_layer_sparsities_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match=r"sparsities\[1\]"):
        gf.write_layer_sparsities(tmp_path / "s.csv", [0.5, 1.2])


# --------------------------------------------------------------------------
# Mask lists


def _example_masks():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (8, 4, 1, 1), (10, 8)]
    return [(torch.rand(s, generator=g) > 0.5) for s in shapes]


def _assert_same_masks(loaded, expected):
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        assert got.dtype == torch.bool and got.device.type == "cpu"
        assert torch.equal(got, want.bool())


def test_mask_list_round_trip_torch_format(tmp_path):
    masks = _example_masks()
    path = tmp_path / "masks.pt"
    gf.save_mask_list(path, [m.float() if i % 2 else m for i, m in enumerate(masks)])
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, list)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in raw)
    _assert_same_masks(gf.load_mask_list(path), masks)


def test_save_mask_list_stores_compact_copies(tmp_path):
    big = torch.ones(1000, 1000)
    path = tmp_path / "masks.pt"
    gf.save_mask_list(path, [big[:2, :2]])  # a view into a 4 MB storage
    assert path.stat().st_size < 100_000


def test_mask_list_round_trip_npy_format(tmp_path):
    masks = _example_masks()
    path = tmp_path / "weight_mask.npy"
    gf.write_weight_mask_npy(path, masks)
    _assert_same_masks(gf.load_mask_list(path), masks)

    # The reference fine-tuning script does np.load(allow_pickle=True) and
    # iterates; the pickle uses NumPy-1.x names that NumPy 2 still accepts.
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array = np.load(path, allow_pickle=True)
    assert array.dtype == object and array.shape == (3,)
    for item, want in zip(array, masks):
        assert isinstance(item, torch.Tensor)
        assert item.dtype == torch.float32 and item.device.type == "cpu"
        assert torch.equal(item, want.float())


def test_weight_mask_npy_uses_only_globals_old_numpy_and_torch_have(tmp_path):
    # numpy 1.x and torch 1.x (the reference's environment) have all of these;
    # numpy._core.multiarray does not exist in numpy 1.x.
    path = tmp_path / "weight_mask.npy"
    gf.write_weight_mask_npy(path, _example_masks())
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        payload = f.read()
    globals_used = {
        arg for op, arg, _ in pickletools.genops(payload) if op.name in ("GLOBAL", "STACK_GLOBAL")
    }
    assert globals_used == {
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "torch._utils _rebuild_tensor_v2",
        "torch.storage _load_from_bytes",
        "collections OrderedDict",
    }


def test_npy_with_numpy_array_elements(tmp_path):
    masks = _example_masks()
    array = np.empty(len(masks), dtype=object)
    for i, m in enumerate(masks):
        array[i] = m.numpy().astype(np.float32 if i else np.uint8)
    path = tmp_path / "weight_mask.npy"
    np.save(path, array, allow_pickle=True)
    _assert_same_masks(gf.load_mask_list(path), masks)


def test_npy_with_plain_numeric_array(tmp_path):
    stacked = np.array([[[1, 0], [0, 1]], [[0, 0], [1, 1]]], dtype=np.float32)
    path = tmp_path / "weight_mask.npy"
    np.save(path, stacked)
    loaded = gf.load_mask_list(path)
    assert [m.tolist() for m in loaded] == [[[True, False], [False, True]], [[False, False], [True, True]]]


def _fake_cuda_reduce(original):
    def reduce(self):
        fn, (data,) = original(self)
        # What torch 1.x wrote for a CUDA storage: class torch.cuda.FloatStorage.
        return fn, (data.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n"),)

    return reduce


def test_reference_cuda_weight_mask_npy_loads_on_cpu(tmp_path, monkeypatch):
    masks = _example_masks()
    array = np.empty(len(masks), dtype=object)
    for i, m in enumerate(masks):
        array[i] = m.float()
    path = tmp_path / "weight_mask.npy"
    with monkeypatch.context() as patch:
        # Make the pickled storages claim to live on 'cuda:0', as in the
        # reference's files (torch.cuda.FloatTensor masks).
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        patch.setattr(
            torch.storage.TypedStorage,
            "__reduce__",
            _fake_cuda_reduce(torch.storage.TypedStorage.__reduce__),
        )
        np.save(path, array, allow_pickle=True)
    content = path.read_bytes()
    assert b"cuda:0" in content and b"torch.cuda" in content

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            np.load(path, allow_pickle=True)

    _assert_same_masks(gf.load_mask_list(path), masks)


def test_non_binary_masks_rejected(tmp_path):
    masks = [torch.ones(3), torch.tensor([0.0, 0.5, 1.0])]
    with pytest.raises(ValueError, match=r"masks\[1\].*0\.5"):
        gf.save_mask_list(tmp_path / "m.pt", masks)
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        gf.write_weight_mask_npy(tmp_path / "m.npy", masks)
    assert list(tmp_path.iterdir()) == []

    torch.save(masks, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"mask 1 has values other than 0 and 1"):
        gf.load_mask_list(tmp_path / "m.pt")

    array = np.empty(2, dtype=object)
    array[0], array[1] = np.ones(2), np.array([1.0, 2.0])
    np.save(tmp_path / "m.npy", array, allow_pickle=True)
    with pytest.raises(ValueError, match=r"mask 1 has values other than 0 and 1"):
        gf.load_mask_list(tmp_path / "m.npy")


def test_single_tensor_is_not_a_mask_list(tmp_path):
    with pytest.raises(ValueError, match="sequence"):
        gf.save_mask_list(tmp_path / "m.pt", torch.ones(2, 2))


class _NotAMask:
    pass


def test_npy_with_foreign_globals_refused(tmp_path):
    array = np.empty(1, dtype=object)
    array[0] = _NotAMask()
    path = tmp_path / "evil.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ValueError, match="_NotAMask.*refused"):
        gf.load_mask_list(path)


def test_garbage_file_rejected(tmp_path):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"this is not a mask file")
    with pytest.raises(ValueError, match="garbage.bin"):
        gf.load_mask_list(path)


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "masks.pt"
    gf.save_mask_list(path, [torch.ones(2)])
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        gf.save_mask_list(path, [torch.zeros(2)])
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["masks.pt"]
