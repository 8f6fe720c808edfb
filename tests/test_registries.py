"""Tests for loading datasets and building models by name."""

import re

import pytest
import torch
from torch import nn

from sparsetrain.data import (
    DATASETS,
    ClassificationSplit,
    dataset_options,
    load_dataset,
    load_digits_split,
    load_mnist1d_split,
    register_dataset,
)
from sparsetrain.models import (
    MODELS,
    SmallResNet,
    build_model,
    channels_and_dim,
    model_options,
    register_model,
)


@pytest.fixture
def restore_registries():
    """Undo registrations made by a test."""
    datasets, models = dict(DATASETS), dict(MODELS)
    yield
    DATASETS.clear()
    DATASETS.update(datasets)
    MODELS.clear()
    MODELS.update(models)


def _tiny_split(seed: int = 0) -> ClassificationSplit:
    return load_digits_split(seed=seed)


# ----------------------------------------------------------------------------- datasets


def test_builtin_dataset_names():
    assert DATASETS["digits"] is load_digits_split
    assert DATASETS["mnist1d"] is load_mnist1d_split


def test_load_digits_by_name_matches_the_loader():
    by_name = load_dataset("digits", test_fraction=0.25, seed=3)
    direct = load_digits_split(test_fraction=0.25, seed=3)
    by_name_tensors = by_name.train.tensors + by_name.test.tensors
    for a, b in zip(by_name_tensors, direct.train.tensors + direct.test.tensors):
        assert torch.equal(a, b)
    assert by_name.input_shape == (1, 8, 8)


def test_load_mnist1d_by_name():
    split = load_dataset(
        "mnist1d", num_samples=100, test_fraction=0.3, seed=2, iid_noise_scale=0.05
    )
    assert (len(split.train), len(split.test)) == (70, 30)
    assert split.input_shape == (1, 40) and split.num_classes == 10


def test_dataset_options_in_signature_order():
    assert dataset_options("digits") == ("test_fraction", "seed")
    assert dataset_options("mnist1d")[:3] == ("num_samples", "test_fraction", "seed")
    assert "iid_noise_scale" in dataset_options("mnist1d")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"^dataset 'foo' is not one of: cifar10, digits, imagenet, mnist1d, npz$"):
        load_dataset("foo")
    with pytest.raises(ValueError, match=r"^dataset 'foo' is not one of: cifar10, digits, imagenet, mnist1d, npz$"):
        dataset_options("foo")


def test_unknown_dataset_option():
    expected = "dataset 'digits' has no option 'bar' (options: test_fraction, seed)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        load_dataset("digits", bar=1)
    prefix = r"^dataset 'mnist1d' has no option 'num_sample' \(options: num_samples, "
    with pytest.raises(ValueError, match=prefix):
        load_dataset("mnist1d", num_sample=100)


def test_bad_option_values_reach_the_loader_checks():
    with pytest.raises(ValueError, match=r"test_fraction=2 is outside \(0, 1\)"):
        load_dataset("digits", test_fraction=2)


def test_register_dataset_as_function_and_decorator(restore_registries):
    def from_path(root: str, seed: int = 0) -> ClassificationSplit:
        assert root == "/data/somewhere"
        return _tiny_split(seed)

    assert register_dataset("fake_on_disk", from_path) is from_path

    @register_dataset("fake_decorated")
    def decorated(seed: int = 0) -> ClassificationSplit:
        return _tiny_split(seed)

    assert DATASETS["fake_decorated"] is decorated
    assert load_dataset("fake_on_disk", root="/data/somewhere").num_classes == 10
    assert load_dataset("fake_decorated", seed=1).input_shape == (1, 8, 8)
    needs_root = r"^dataset 'fake_on_disk' needs option 'root' \(options: root, seed\)$"
    with pytest.raises(ValueError, match=needs_root):
        load_dataset("fake_on_disk")
    names = r"is not one of: cifar10, digits, fake_decorated, fake_on_disk, imagenet, mnist1d, npz$"
    with pytest.raises(ValueError, match=names):
        load_dataset("nope")


def test_register_dataset_refuses_duplicates_unless_replace(restore_registries):
    with pytest.raises(ValueError, match=r"^dataset 'digits' is already registered"):
        register_dataset("digits", load_mnist1d_split)
    register_dataset("digits", load_mnist1d_split, replace=True)
    assert DATASETS["digits"] is load_mnist1d_split
    with pytest.raises(ValueError, match="not a non-empty string"):
        register_dataset("", load_digits_split)
    with pytest.raises(ValueError, match="is not callable"):
        register_dataset("broken", 42)


def test_loader_with_var_keywords_takes_any_option(restore_registries):
    seen = {}

    def flexible(**options):
        seen.update(options)
        return _tiny_split()

    register_dataset("flexible", flexible)
    load_dataset("flexible", anything=1)
    assert seen == {"anything": 1}


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "input_shape, expected",
    [((1, 40), (1, 1)), ((1, 8, 8), (1, 2)), ([3, 32, 32], (3, 2)), ((2, 7), (2, 1))],
)
def test_channels_and_dim(input_shape, expected):
    assert channels_and_dim(input_shape) == expected


def test_builtin_model_names_and_options():
    assert set(MODELS) >= {"small_resnet"}
    assert model_options("small_resnet") == ("width", "blocks_per_stage")


@pytest.mark.parametrize(
    "dataset_name, options", [("digits", {}), ("mnist1d", {"num_samples": 100})]
)
def test_build_model_for_each_dataset_runs_a_batch(dataset_name, options):
    split = load_dataset(dataset_name, **options)
    model = build_model(
        "small_resnet",
        input_shape=split.input_shape,
        num_classes=split.num_classes,
        width=4,
        blocks_per_stage=(1, 1),
    )
    assert isinstance(model, SmallResNet)
    assert model.dim == len(split.input_shape) - 1
    assert model.in_channels == split.input_shape[0]
    assert model.width == 4 and model.blocks_per_stage == (1, 1)
    inputs = split.train.tensors[0][:5]
    model.eval()
    with torch.no_grad():
        assert model(inputs).shape == (5, split.num_classes)


def test_build_model_defaults_and_other_channel_counts():
    model = build_model("small_resnet", input_shape=(3, 16, 16), num_classes=7)
    assert model.width == 16 and model.blocks_per_stage == (1, 1, 1)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"^model 'resnet9000' is not one of: mlp, mobilenet_v1, resnet18, resnet34, resnet50, small_resnet, wide_resnet, wrn28_8$"):
        build_model("resnet9000", input_shape=(1, 40), num_classes=10)


@pytest.mark.parametrize("option", ["bar", "dim", "in_channels", "input_shape_", "num_classes_"])
def test_unknown_model_option(option):
    expected = f"model 'small_resnet' has no option '{option}' (options: width, blocks_per_stage)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        build_model("small_resnet", input_shape=(1, 40), num_classes=10, **{option: 1})


@pytest.mark.parametrize(
    "input_shape", [(40,), (1, 2, 3, 4), (0, 40), (1, -8, 8), "ab", (1.0, 40), (True, 40)]
)
def test_bad_input_shape(input_shape):
    message = r"^input_shape=.* is not \(C, L\) for 1-D signals or \(C, H, W\)"
    with pytest.raises(ValueError, match=message):
        build_model("small_resnet", input_shape=input_shape, num_classes=10)


def test_bad_model_option_values_reach_the_builder_checks():
    with pytest.raises(ValueError, match=r"width=0 must be an integer >= 1"):
        build_model("small_resnet", input_shape=(1, 40), num_classes=10, width=0)
    with pytest.raises(ValueError, match=r"num_classes=0 must be an integer >= 1"):
        build_model("small_resnet", input_shape=(1, 40), num_classes=0)


def test_register_model_as_decorator(restore_registries):
    @register_model("linear")
    def linear(*, input_shape, num_classes, bias: bool = True) -> nn.Module:
        features = 1
        for size in input_shape:
            features *= size
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes, bias=bias))

    assert MODELS["linear"] is linear
    assert model_options("linear") == ("bias",)
    model = build_model("linear", input_shape=(1, 8, 8), num_classes=10, bias=False)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    no_width = r"^model 'linear' has no option 'width' \(options: bias\)$"
    with pytest.raises(ValueError, match=no_width):
        build_model("linear", input_shape=(1, 8, 8), num_classes=10, width=3)


def test_register_model_checks_builder_and_duplicates(restore_registries):
    def no_shape(num_classes):
        return nn.Identity()

    no_shape_message = r"^model 'bad' builder 'no_shape' does not take keyword 'input_shape'$"
    with pytest.raises(ValueError, match=no_shape_message):
        register_model("bad", no_shape)
    with pytest.raises(ValueError, match=r"^model 'small_resnet' is already registered"):
        register_model("small_resnet", MODELS["small_resnet"])

    def needs_depth(*, input_shape, num_classes, depth):
        return nn.Identity()

    register_model("needs_depth", needs_depth)
    needs_depth_message = r"^model 'needs_depth' needs option 'depth' \(options: depth\)$"
    with pytest.raises(ValueError, match=needs_depth_message):
        build_model("needs_depth", input_shape=(1, 40), num_classes=10)
