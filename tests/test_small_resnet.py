"""Tests for the torchvision-named small ResNet."""

import pytest
import torch
from torch import nn

from sparsetrain.models import BasicBlock, SmallResNet, small_resnet


def _count(model: nn.Module, kinds) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


@pytest.mark.parametrize(
    "dim, input_shape",
    [(2, (4, 1, 8, 8)), (2, (2, 3, 16, 16)), (1, (4, 1, 40)), (1, (2, 2, 7))],
)
def test_forward_shape(dim, input_shape):
    model = small_resnet(in_channels=input_shape[1], num_classes=7, width=4, dim=dim)
    model.eval()
    assert model(torch.randn(input_shape)).shape == (input_shape[0], 7)


def test_uses_the_right_layer_kinds_per_dim():
    model_1d = small_resnet(dim=1, width=4)
    model_2d = small_resnet(dim=2, width=4)
    assert _count(model_1d, nn.Conv2d) == 0 and _count(model_1d, nn.BatchNorm2d) == 0
    assert _count(model_2d, nn.Conv1d) == 0 and _count(model_2d, nn.BatchNorm1d) == 0
    assert _count(model_1d, nn.Conv1d) == _count(model_2d, nn.Conv2d)


def test_torchvision_style_state_dict_keys():
    keys = set(small_resnet(width=4).state_dict())
    for key in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer2.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer3.0.downsample.0.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    assert "layer1.0.downsample.0.weight" not in keys  # same channels, stride 1
    assert not any(k.startswith("layer4") for k in keys)
    assert "conv1.bias" not in keys and "layer1.0.conv1.bias" not in keys


@pytest.mark.parametrize(
    "blocks_per_stage, expected_convs",
    [
        ((1, 1, 1), 1 + 2 * 3 + 2),  # stem + 2 per block + downsample in layer2, layer3
        ((2, 2), 1 + 2 * 4 + 1),
        ((2, 1, 3, 1), 1 + 2 * 7 + 3),
        ((1,), 1 + 2),
    ],
)
def test_number_of_conv_and_linear_modules(blocks_per_stage, expected_convs):
    model = small_resnet(width=2, blocks_per_stage=blocks_per_stage)
    assert _count(model, nn.Conv2d) == expected_convs
    assert _count(model, nn.Linear) == 1
    assert _count(model, BasicBlock) == sum(blocks_per_stage)
    assert model.num_stages == len(blocks_per_stage)
    assert len(model.stages()) == len(blocks_per_stage)


def test_stage_widths_and_strides():
    model = small_resnet(in_channels=3, width=5, blocks_per_stage=(2, 1, 1))
    assert model.conv1.out_channels == 5
    assert [stage[0].conv1.out_channels for stage in model.stages()] == [5, 10, 20]
    assert [stage[0].conv1.stride for stage in model.stages()] == [(1, 1), (2, 2), (2, 2)]
    assert model.layer1[1].conv1.stride == (1, 1)
    assert model.layer2[0].downsample[0].kernel_size == (1, 1)
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert model.fc.in_features == 20


def test_convs_have_no_bias_and_kaiming_scale():
    torch.manual_seed(0)
    model = small_resnet(width=32, blocks_per_stage=(1, 1))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is None
    conv = model.layer2[0].conv2  # 64 -> 64, 3x3: fan_out = 576
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(float(conv.weight.detach().std()) / expected_std - 1.0) < 0.05
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_factory_and_class_agree():
    torch.manual_seed(1)
    a = small_resnet(in_channels=2, num_classes=3, width=3, blocks_per_stage=(1, 2), dim=1)
    torch.manual_seed(1)
    b = SmallResNet(in_channels=2, num_classes=3, width=3, blocks_per_stage=(1, 2), dim=1)
    assert a.state_dict().keys() == b.state_dict().keys()
    for key in a.state_dict():
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])


def test_backward_reaches_every_parameter():
    model = small_resnet(width=4)
    model(torch.randn(3, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"width": 0}, "width=0"),
        ({"width": 2.5}, "width=2.5"),
        ({"dim": 3}, "dim=3"),
        ({"dim": 0}, "dim=0"),
        ({"in_channels": 0}, "in_channels=0"),
        ({"num_classes": -1}, "num_classes=-1"),
        ({"blocks_per_stage": ()}, "blocks_per_stage=()"),
        ({"blocks_per_stage": (1, 0)}, "blocks_per_stage=(1, 0)"),
        ({"blocks_per_stage": 3}, "blocks_per_stage=3"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, fragment):
    with pytest.raises(ValueError) as excinfo:
        small_resnet(**kwargs)
    message = str(excinfo.value)
    assert fragment in message
    assert "\n" not in message


def test_wrong_input_rank_is_a_clear_error():
    model = small_resnet(dim=2, width=2)
    with pytest.raises(ValueError, match=r"dim=2 expects 4 axes"):
        model(torch.randn(2, 1, 40))
