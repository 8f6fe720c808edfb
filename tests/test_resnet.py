"""torchvision-compatible ResNet-18/34/50: key sets, shapes, counts, init, forward, loading."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsetrain.models.reference_shapes import resnet50_weight_shapes
from sparsetrain.models.registry import MODELS, build_model, model_options
from sparsetrain.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from sparsetrain.runner.checkpoint import CheckpointError, load_model_weights

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(layers, bottleneck):
    """State-dict keys of torchvision's ResNet, in order, derived from its structure.

    Stem conv1 + bn1; per block conv1, bn1, conv2, bn2 (+ conv3, bn3 for Bottleneck),
    then downsample.0 (conv) / downsample.1 (BN) on the first block of a stage that
    changes stride or channels (all four stages for Bottleneck, layer2..4 for
    BasicBlock); fc.weight, fc.bias last.
    """
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    convs = 3 if bottleneck else 2
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            prefix = f"layer{stage}.{b}"
            for i in range(1, convs + 1):
                keys.append(f"{prefix}.conv{i}.weight")
                keys += [f"{prefix}.bn{i}.{k}" for k in BN_KEYS]
            if b == 0 and (stage > 1 or bottleneck):
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are small here, and with OpenMP threads competing
    for busy cores (parallel test runs, other jobs) a 2-thread forward can be ~50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return resnet50()


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return resnet18()


@pytest.fixture(scope="module")
def r34():
    torch.manual_seed(0)
    return resnet34()


# ----------------------------------------------------------------------------- key sets


def test_resnet50_state_dict_keys(r50):
    keys = list(r50.state_dict())
    assert len(keys) == 320
    assert keys == torchvision_keys((3, 4, 6, 3), bottleneck=True)
    for key in [
        "conv1.weight",
        "bn1.num_batches_tracked",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer1.0.downsample.1.bias",
        "layer1.0.downsample.1.running_mean",
        "layer1.0.downsample.1.running_var",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer4.0.downsample.1.running_var",
        "layer4.2.conv3.weight",
        "layer4.2.bn3.weight",
        "layer3.5.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    for absent in ["layer1.1.downsample.0.weight", "layer3.6.conv1.weight", "maxpool.weight"]:
        assert absent not in keys


@pytest.mark.parametrize(
    "fixture, layers, count",
    [("r18", (2, 2, 2, 2), 122), ("r34", (3, 4, 6, 3), 218)],
)
def test_basic_resnet_state_dict_keys(request, fixture, layers, count):
    keys = list(request.getfixturevalue(fixture).state_dict())
    assert len(keys) == count
    assert keys == torchvision_keys(layers, bottleneck=False)
    last = f"layer4.{layers[3] - 1}"
    for key in [
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.num_batches_tracked",
        f"{last}.conv2.weight",
        f"{last}.bn2.running_var",
        "fc.bias",
    ]:
        assert key in keys, key
    for absent in ["layer1.0.downsample.0.weight", f"{last}.conv3.weight", "layer1.0.bn3.weight"]:
        assert absent not in keys


def test_module_types_and_layout(r50, r18):
    for model, block in [(r50, Bottleneck), (r18, BasicBlock)]:
        assert isinstance(model.maxpool, nn.MaxPool2d)
        assert (model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding) == (3, 2, 1)
        assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
        assert model.avgpool.output_size == (1, 1)
        assert isinstance(model.relu, nn.ReLU)
        assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
        assert model.conv1.padding == (3, 3) and model.conv1.bias is None
        for stage in model.stages():
            assert isinstance(stage, nn.Sequential)
            assert all(type(b) is block for b in stage)
        ds = model.layer2[0].downsample
        assert isinstance(ds, nn.Sequential) and len(ds) == 2
        assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1)
        assert ds[0].stride == (2, 2) and isinstance(ds[1], nn.BatchNorm2d)
    # ResNet v1.5: the stride sits on the 3x3 conv, not the first 1x1.
    first = r50.layer2[0]
    assert first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.conv2.kernel_size == (3, 3) and first.conv3.stride == (1, 1)
    assert r50.layer1[0].downsample[0].stride == (1, 1)
    assert r50.fc.in_features == 2048 and r18.fc.in_features == 512


# ----------------------------------------------------------------------------- counts


def _prunable(model):
    return [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def test_resnet50_weights_match_reference_shapes(r50):
    layers = _prunable(r50)
    assert len(layers) == 54
    assert sum(m.weight.numel() for _, m in layers) == 25_502_912
    ours = [(f"{name}.weight", tuple(m.weight.shape)) for name, m in layers]
    assert ours == resnet50_weight_shapes()


@pytest.mark.parametrize(
    "fixture, total", [("r18", 11_689_512), ("r34", 21_797_672), ("r50", 25_557_032)]
)
def test_total_parameter_counts(request, fixture, total):
    model = request.getfixturevalue(fixture)
    assert sum(p.numel() for p in model.parameters()) == total


# ----------------------------------------------------------------------------- init


def test_init_matches_torchvision(r50):
    for m in r50.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / (out_channels * kH * kW))
    w = r50.layer4[0].conv2.weight
    expected = math.sqrt(2.0 / (w.shape[0] * w.shape[2] * w.shape[3]))
    assert abs(w.std().item() / expected - 1) < 0.02
    assert abs(w.mean().item()) < 0.05 * expected
    # fc keeps PyTorch's default Linear init: uniform in +-1/sqrt(fan_in)
    bound = 1 / math.sqrt(r50.fc.in_features)
    assert r50.fc.weight.abs().max() <= bound and r50.fc.bias.abs().max() <= bound


@pytest.mark.parametrize("builder, last_bn", [(resnet18, "bn2"), (resnet50, "bn3")])
def test_zero_init_residual(builder, last_bn):
    torch.manual_seed(0)
    model = builder(num_classes=10, zero_init_residual=True)
    blocks = [b for stage in model.stages() for b in stage]
    for block in blocks:
        assert torch.all(getattr(block, last_bn).weight == 0)
        assert torch.all(block.bn1.weight == 1)
    assert torch.all(builder(num_classes=10).layer1[0].get_submodule(last_bn).weight == 1)
    # Effect: in eval mode every block reduces to relu(shortcut(x)).
    model.eval()
    x = torch.randn(2, model.layer2[0].conv1.in_channels, 8, 8)
    with torch.no_grad():
        for block in (model.layer2[0], model.layer2[1]):
            shortcut = x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(block(x.clone()), torch.relu(shortcut))
            x = block(x)


# ----------------------------------------------------------------------------- forward


def test_forward_shapes(r18):
    torch.manual_seed(0)
    r18.eval()
    with torch.no_grad():
        assert r18(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    model = resnet50(num_classes=10)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    model = resnet34(num_classes=7)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert model.conv1.weight.grad is not None


def test_small_input_variant():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, small_input=True)
    assert model.conv1.weight.shape == (64, 3, 3, 3)
    assert model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    # Same key set as torchvision (Identity has no state); only conv1.weight's shape differs.
    assert list(model.state_dict()) == torchvision_keys((2, 2, 2, 2), bottleneck=False)
    features = {}

    def record(module, inputs, output):
        features["layer4"] = tuple(output.shape)

    model.layer4.register_forward_hook(record)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert features["layer4"] == (2, 512, 4, 4)
    # torchvision's count minus the 7x7 -> 3x3 stem difference and 990 fewer fc rows.
    stem_difference = 64 * 3 * (7 * 7 - 3 * 3)
    fc_difference = (1000 - 10) * (512 + 1)
    expected = 11_689_512 - stem_difference - fc_difference
    assert sum(p.numel() for p in model.parameters()) == expected


def test_forward_is_torchvision_order(r18):
    """Stem, maxpool, four stages, avgpool, flatten, fc: recompute by hand."""
    r18.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = r18.maxpool(r18.relu(r18.bn1(r18.conv1(x))))
        for stage in r18.stages():
            h = stage(h)
        expected = r18.fc(torch.flatten(r18.avgpool(h), 1))
        torch.testing.assert_close(r18(x), expected)


# ----------------------------------------------------------------------------- loading


def test_strict_load_of_module_prefixed_state_dict(tmp_path):
    torch.manual_seed(1)
    source = resnet18(num_classes=10)
    source.train()
    source(torch.randn(2, 3, 32, 32))  # move BN running stats off their defaults
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state}, path)

    torch.manual_seed(2)
    target = resnet18(num_classes=10)
    assert not torch.equal(target.conv1.weight, source.conv1.weight)
    load_model_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    # A torchvision-shaped checkpoint does not fit the small-input stem.
    with pytest.raises(CheckpointError, match=r"conv1\.weight has shape \(64, 3, 7, 7\)"):
        load_model_weights(resnet18(num_classes=10, small_input=True), path)


def test_plain_state_dict_roundtrip_resnet50(r50, tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(r50.state_dict(), path)
    torch.manual_seed(3)
    target = resnet50()
    load_model_weights(target, path)
    assert torch.equal(target.layer4[2].conv3.weight, r50.layer4[2].conv3.weight)


# ----------------------------------------------------------------------------- registry


def test_registry_builds_resnets():
    assert {"resnet18", "resnet34", "resnet50"} <= set(MODELS)
    for name in ("resnet18", "resnet34", "resnet50"):
        assert model_options(name) == ("zero_init_residual", "small_input")
    torch.manual_seed(0)
    model = build_model("resnet50", input_shape=(3, 64, 64), num_classes=10)
    assert isinstance(model, ResNet) and model.block is Bottleneck
    assert model.fc.out_features == 10
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_registry_options_and_channels():
    model = build_model(
        "resnet18", input_shape=(1, 32, 32), num_classes=10, small_input=True,
        zero_init_residual=True,
    )
    assert model.conv1.weight.shape == (64, 1, 3, 3)
    assert torch.all(model.layer1[0].bn2.weight == 0)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert build_model("resnet34", input_shape=(4, 32, 32), num_classes=5).conv1.weight.shape == (
        64, 4, 7, 7,
    )
    with pytest.raises(ValueError, match=r"model 'resnet18' has no option 'width'"):
        build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, width=8)
    with pytest.raises(ValueError, match=r"needs images, input_shape \(C, H, W\)"):
        build_model("resnet18", input_shape=(1, 40), num_classes=10)
    with pytest.raises(ValueError, match=r"num_classes=0 must be an integer >= 1"):
        build_model("resnet50", input_shape=(3, 32, 32), num_classes=0)
    with pytest.raises(ValueError, match=r"small_input='yes' must be true or false"):
        build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, small_input="yes")
