"""Tests for the arithmetic ResNet-50 weight-shape table."""

import math

import pytest
import torch

from sparsetrain.models import resnet50_random_weights, resnet50_weight_shapes

RESNET50_TOTAL_WEIGHTS = 25_502_912


def test_count_and_total():
    shapes = resnet50_weight_shapes()
    assert len(shapes) == 54
    assert sum(math.prod(shape) for _, shape in shapes) == RESNET50_TOTAL_WEIGHTS
    assert len({name for name, _ in shapes}) == 54


def test_first_layers_and_head():
    shapes = resnet50_weight_shapes()
    assert shapes[0] == ("conv1.weight", (64, 3, 7, 7))
    assert math.prod(shapes[0][1]) == 9_408
    assert shapes[1] == ("layer1.0.conv1.weight", (64, 64, 1, 1))
    assert math.prod(shapes[1][1]) == 4_096
    assert shapes[-1] == ("fc.weight", (1000, 2048))


def test_module_order_within_first_block():
    names = [name for name, _ in resnet50_weight_shapes()]
    assert names[1:6] == [
        "layer1.0.conv1.weight",
        "layer1.0.conv2.weight",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.1.conv1.weight",
    ]


def test_only_two_layers_below_half_per_mille():
    threshold = RESNET50_TOTAL_WEIGHTS / 2000  # 12,751.456
    small = [name for name, shape in resnet50_weight_shapes() if math.prod(shape) < 12_751]
    assert math.floor(threshold) == 12_751
    assert small == ["conv1.weight", "layer1.0.conv1.weight"]


def test_block_and_downsample_structure():
    names = [name for name, _ in resnet50_weight_shapes()]
    downsamples = [name for name in names if "downsample" in name]
    assert downsamples == [f"layer{s}.0.downsample.0.weight" for s in (1, 2, 3, 4)]
    for stage, num_blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        blocks = {name.split(".")[1] for name in names if name.startswith(f"layer{stage}.")}
        assert blocks == {str(b) for b in range(num_blocks)}
    shapes = dict(resnet50_weight_shapes())
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["layer3.0.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)


@pytest.fixture(scope="module")
def weights_seed0():
    return resnet50_random_weights(seed=0)


def test_random_weights_match_shapes_and_scale(weights_seed0):
    shapes = resnet50_weight_shapes()
    assert [name for name, _ in weights_seed0] == [name for name, _ in shapes]
    for (_, tensor), (_, shape) in zip(weights_seed0, shapes):
        assert tuple(tensor.shape) == shape and tensor.dtype == torch.float32
    for name, tensor in weights_seed0:
        if name in ("layer1.0.conv2.weight", "layer4.0.conv2.weight", "fc.weight"):
            fan_in = math.prod(tensor.shape[1:])
            assert abs(float(tensor.std()) / math.sqrt(2.0 / fan_in) - 1.0) < 0.02


def test_random_weights_are_seeded(weights_seed0):
    first_again = resnet50_random_weights(seed=0)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(weights_seed0, first_again))
    other = resnet50_random_weights(seed=1, dtype=torch.float16)
    assert other[0][1].dtype == torch.float16
    assert not torch.equal(other[0][1].float(), weights_seed0[0][1].half().float())


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"dtype": torch.int64}])
def test_random_weights_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        resnet50_random_weights(**kwargs)
