"""Tests for the in-memory, seeded, train-standardised MNIST-1D split."""

import math
import random

import numpy as np
import pytest
import torch

from sparsetrain.data import ClassificationSplit, load_mnist1d_split

SMALL = 200  # samples for the fast tests (20 per class)


@pytest.fixture(scope="module")
def default_split() -> ClassificationSplit:
    return load_mnist1d_split()


def _all_inputs_raw(split: ClassificationSplit) -> np.ndarray:
    """Undo the train standardisation on train + test, as float64 ``(N, 40)``."""
    inputs = torch.cat([split.train.tensors[0], split.test.tensors[0]]).double()
    return (inputs * split.train_std + split.train_mean).reshape(-1, 40).numpy()


def _all_tensors(split: ClassificationSplit):
    return split.train.tensors + split.test.tensors


def test_default_sizes_and_metadata(default_split):
    assert len(default_split.train) == 4000 and len(default_split.test) == 1000
    assert default_split.num_classes == 10
    assert default_split.input_shape == (1, 40)


def test_default_is_the_packages_default_dataset(default_split):
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    reference = make_dataset(get_dataset_args())
    np.random.set_state(state)
    train_raw = default_split.train.tensors[0].double() * default_split.train_std
    test_raw = default_split.test.tensors[0].double() * default_split.train_std
    np.testing.assert_allclose(
        (train_raw + default_split.train_mean).reshape(-1, 40).numpy(), reference["x"], atol=1e-5
    )
    np.testing.assert_allclose(
        (test_raw + default_split.train_mean).reshape(-1, 40).numpy(),
        reference["x_test"],
        atol=1e-5,
    )
    assert np.array_equal(default_split.train.tensors[1].numpy(), reference["y"])
    assert np.array_equal(default_split.test.tensors[1].numpy(), reference["y_test"])


def test_dtypes_shapes_and_labels(default_split):
    for dataset in (default_split.train, default_split.test):
        inputs, labels = dataset.tensors
        assert inputs.dtype == torch.float32 and inputs.shape == (len(dataset), 1, 40)
        assert labels.dtype == torch.int64 and labels.shape == (len(dataset),)
        assert torch.bincount(labels, minlength=10).min() > 0  # every class in both splits
        assert int(labels.min()) == 0 and int(labels.max()) == 9


@pytest.mark.parametrize(
    "num_samples, test_fraction, expected_train, expected_test",
    [
        (SMALL, 0.25, 150, 50),
        (20, 0.2, 16, 4),
        (20, 0.01, 19, 1),  # clamped: test is never empty
        (20, 0.99, 1, 19),  # clamped: train is never empty
        (1000, 0.2, 800, 200),
    ],
)
def test_custom_sizes(num_samples, test_fraction, expected_train, expected_test):
    split = load_mnist1d_split(num_samples=num_samples, test_fraction=test_fraction, seed=3)
    assert (len(split.train), len(split.test)) == (expected_train, expected_test)
    all_labels = torch.cat([split.train.tensors[1], split.test.tensors[1]])
    assert torch.bincount(all_labels).tolist() == [num_samples // 10] * 10


def test_standardised_with_train_statistics():
    split = load_mnist1d_split(num_samples=SMALL, test_fraction=0.5, seed=7)
    train_inputs = split.train.tensors[0].double()
    assert abs(float(train_inputs.mean())) < 1e-5
    assert abs(float(train_inputs.std(unbiased=False)) - 1.0) < 1e-5
    test_inputs = split.test.tensors[0].double()
    assert abs(float(test_inputs.mean())) > 1e-4  # test is not re-standardised on its own
    # Same generated data, other split point: each split's stats come from its own train part.
    other = load_mnist1d_split(num_samples=SMALL, test_fraction=0.2, seed=7)
    assert other.train_mean != split.train_mean and other.train_std != split.train_std
    np.testing.assert_allclose(_all_inputs_raw(split), _all_inputs_raw(other), atol=1e-5)
    assert (len(split.train), len(other.train)) == (100, 160)
    assert torch.equal(
        torch.cat([split.train.tensors[1], split.test.tensors[1]]),
        torch.cat([other.train.tensors[1], other.test.tensors[1]]),
    )


def test_same_seed_same_data_other_seed_other_data():
    first = load_mnist1d_split(num_samples=SMALL, seed=0)
    again = load_mnist1d_split(num_samples=SMALL, seed=0)
    other = load_mnist1d_split(num_samples=SMALL, seed=1)
    for a, b in zip(_all_tensors(first), _all_tensors(again)):
        assert torch.equal(a, b)
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(first.train.tensors[1], other.train.tensors[1])


def test_generator_options_change_the_data():
    base = load_mnist1d_split(num_samples=SMALL, seed=5)
    noisier = load_mnist1d_split(num_samples=SMALL, seed=5, iid_noise_scale=0.5)
    shuffled = load_mnist1d_split(num_samples=SMALL, seed=5, shuffle_seq=True)
    assert torch.equal(base.train.tensors[1], noisier.train.tensors[1])  # same labels/order
    assert not torch.equal(base.train.tensors[0], noisier.train.tensors[0])
    assert not torch.equal(base.train.tensors[0], shuffled.train.tensors[0])
    shuffled_again = load_mnist1d_split(num_samples=SMALL, seed=5, shuffle_seq=True)
    assert torch.equal(shuffled.train.tensors[0], shuffled_again.train.tensors[0])


def test_mutating_a_result_does_not_change_later_loads():
    first = load_mnist1d_split(num_samples=SMALL, seed=11)
    snapshot = [t.clone() for t in _all_tensors(first)]
    for tensor in _all_tensors(first):
        tensor.zero_()
    again = load_mnist1d_split(num_samples=SMALL, seed=11)
    for expected, actual in zip(snapshot, _all_tensors(again)):
        assert torch.equal(expected, actual)


def test_global_rng_state_is_left_alone():
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    load_mnist1d_split(num_samples=30, seed=424242)  # uncached arguments: really generates
    assert (random.random(), np.random.rand()) == expected


def test_no_network_and_no_files(monkeypatch, tmp_path):
    import requests

    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d loader tried to use the network")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests, "request", refuse)
    monkeypatch.chdir(tmp_path)
    split = load_mnist1d_split(num_samples=40, seed=987654)  # uncached arguments
    assert len(split.train) + len(split.test) == 40
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 10}, r"num_samples=10 is not a multiple of 10 in \[20, inf\)"),
        ({"num_samples": 0}, r"num_samples=0 "),
        ({"num_samples": -100}, r"num_samples=-100 "),
        ({"num_samples": 25}, r"num_samples=25 is not a multiple of 10"),
        ({"num_samples": 100.0}, r"num_samples=100.0 is not an integer"),
        ({"num_samples": True}, r"num_samples=True is not an integer"),
        ({"test_fraction": 0.0}, r"test_fraction=0.0 is outside \(0, 1\)"),
        ({"test_fraction": 1.0}, r"test_fraction=1.0 is outside \(0, 1\)"),
        ({"test_fraction": math.nan}, r"test_fraction=nan"),
        ({"test_fraction": "0.2"}, r"test_fraction='0.2' is not a number"),
        ({"seed": -1}, r"seed=-1 is outside \[0, 2\*\*32\)"),
        ({"seed": 2**32}, r"seed=4294967296 is outside"),
        ({"seed": 1.5}, r"seed=1.5 is not an integer"),
        ({"iid_noise_scale": -0.1}, r"iid_noise_scale=-0.1 is outside \[0, inf\)"),
        ({"corr_noise_scale": math.inf}, r"corr_noise_scale=inf is not a finite number"),
        ({"shear_scale": None}, r"shear_scale=None is not a finite number"),
        ({"shuffle_seq": "yes"}, r"shuffle_seq='yes' is not a bool"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        load_mnist1d_split(**kwargs)
    assert "\n" not in str(info.value)
