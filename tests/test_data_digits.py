"""Tests for the seeded, stratified, train-standardised digits split."""

import numpy as np
import pytest
import torch

from sparsetrain.data import ClassificationSplit, load_digits_split, stratified_split_indices
from sparsetrain.data.digits import DIGITS_NUM_SAMPLES


@pytest.fixture(scope="module")
def split() -> ClassificationSplit:
    return load_digits_split(test_fraction=0.3, seed=0)


def test_sizes_add_up_and_metadata(split):
    assert len(split.train) + len(split.test) == DIGITS_NUM_SAMPLES == 1797
    assert abs(len(split.test) / 1797 - 0.3) < 0.01
    assert split.num_classes == 10
    assert split.input_shape == (1, 8, 8)


def test_tensor_dtypes_and_shapes(split):
    for dataset in (split.train, split.test):
        inputs, labels = dataset.tensors
        assert inputs.dtype == torch.float32
        assert inputs.shape == (len(dataset), 1, 8, 8)
        assert labels.dtype == torch.int64
        assert labels.shape == (len(dataset),)
        assert int(labels.min()) == 0 and int(labels.max()) == 9


def test_every_class_in_both_splits_in_proportion(split):
    train_counts = torch.bincount(split.train.tensors[1], minlength=10)
    test_counts = torch.bincount(split.test.tensors[1], minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    test_share = test_counts.double() / (train_counts + test_counts).double()
    assert ((test_share - 0.3).abs() < 0.01).all()


def test_normalised_with_train_statistics(split):
    train_inputs = split.train.tensors[0].double()
    assert abs(float(train_inputs.mean())) < 1e-5
    assert abs(float(train_inputs.std(unbiased=False)) - 1.0) < 1e-5
    # The test split is shifted by the same numbers, so undoing them lands in [0, 1].
    test_unit_scale = split.test.tensors[0].double() * split.train_std + split.train_mean
    assert float(test_unit_scale.min()) > -1e-5 and float(test_unit_scale.max()) < 1 + 1e-5
    assert 0.0 < split.train_mean < 1.0 and split.train_std > 0.0


def test_same_seed_same_split_other_seed_other_split(split):
    again = load_digits_split(test_fraction=0.3, seed=0)
    other = load_digits_split(test_fraction=0.3, seed=1)
    tensors_first = split.train.tensors + split.test.tensors
    tensors_again = again.train.tensors + again.test.tensors
    for a, b in zip(tensors_first, tensors_again):
        assert torch.equal(a, b)
    same_size = len(other.test) == len(split.test)
    assert not (same_size and torch.equal(other.test.tensors[0], split.test.tensors[0]))


def test_split_indices_are_disjoint_and_cover_everything():
    labels = np.repeat(np.arange(3), [5, 7, 2])
    train, test = stratified_split_indices(labels, test_fraction=0.5, seed=3)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert set(labels[train]) == set(labels[test]) == {0, 1, 2}


@pytest.mark.parametrize("bad_fraction", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_bad_test_fraction_names_value_and_range(bad_fraction):
    with pytest.raises(ValueError, match=r"test_fraction=.* is outside \(0, 1\)"):
        load_digits_split(test_fraction=bad_fraction)


def test_bad_test_fraction_message_is_exact():
    with pytest.raises(ValueError) as excinfo:
        load_digits_split(test_fraction=1.5)
    assert str(excinfo.value) == "test_fraction=1.5 is outside (0, 1)"


@pytest.mark.parametrize("bad_seed", [-1, 2**32, 1.5, "0", True])
def test_bad_seed_names_value(bad_seed):
    with pytest.raises(ValueError, match=r"seed="):
        load_digits_split(seed=bad_seed)
