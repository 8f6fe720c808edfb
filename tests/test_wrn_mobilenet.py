"""WRN-28-8 and MobileNet-V1 in the GPMT reference layouts: prunable-layer counts, keys, forward
shapes, registry builders, and GPMT's minimum threshold keeping WRN-28-8's three small layers dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.models import build_model, model_options
from sparsetrain.models.mobilenet import MobileNetV1
from sparsetrain.models.wide_resnet import WideResNet

WRN_28_8_WEIGHTS = 23_340_464
MOBILENET_V1_WEIGHTS = 4_209_088
WRN_SMALL_LAYERS = {"conv1": 432, "block1.layer.0.convShortcut": 2_048, "fc": 5_120}


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.fixture(scope="module")
def wrn() -> WideResNet:
    torch.manual_seed(0)
    return build_model("wrn28_8", input_shape=(3, 32, 32), num_classes=10)


@pytest.fixture(scope="module")
def mobilenet() -> MobileNetV1:
    torch.manual_seed(0)
    return build_model("mobilenet_v1", input_shape=(3, 224, 224), num_classes=1000)


# ----------------------------------------------------------------------------- WRN-28-8


def test_wrn28_8_prunable_layers_and_counts(wrn):
    layers = prunable(wrn)
    assert len(layers) == 29
    sizes = {n: m.weight.numel() for n, m in layers}
    assert sum(sizes.values()) == WRN_28_8_WEIGHTS
    # modules() order: stem first, fc last, shortcut after the block's two convs.
    names = [n for n, _ in layers]
    assert names[:4] == ["conv1", "block1.layer.0.conv1", "block1.layer.0.conv2", "block1.layer.0.convShortcut"]
    assert names[-1] == "fc"
    mt = round(0.05 / 100 * WRN_28_8_WEIGHTS)
    assert mt == 11_670
    assert {n: s for n, s in sizes.items() if s < mt} == WRN_SMALL_LAYERS
    assert all(m.bias is None for _, m in layers if isinstance(m, nn.Conv2d))
    assert wrn.fc.bias is not None and wrn.fc.bias.shape == (10,)
    shortcuts = [n for n in names if n.endswith("convShortcut")]
    assert shortcuts == [f"block{g}.layer.0.convShortcut" for g in (1, 2, 3)]
    assert [wrn.block1.layer[0].conv1.stride, wrn.block2.layer[0].conv1.stride, wrn.block3.layer[0].conv1.stride] == [
        (1, 1), (2, 2), (2, 2)
    ]
    assert "bn1.running_mean" in wrn.state_dict() and "block3.layer.3.bn2.weight" in wrn.state_dict()


def test_wrn_forward_logits_and_dropout(wrn):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    wrn.eval()
    with torch.no_grad():
        out = wrn(x)
        assert out.shape == (2, 10)
        # Plain logits, not log_softmax (rows need not be normalised).
        assert not torch.allclose(out.logsumexp(1), torch.zeros(2), atol=1e-3)
        assert torch.equal(out, wrn(x))
    assert wrn.drop_rate == 0.3 and all(b.drop_rate == 0.3 for b in wrn.modules() if hasattr(b, "equal_in_out"))


def test_wrn_small_variant_and_options():
    assert model_options("wrn28_8") == ("depth", "widen_factor", "drop_rate")
    assert model_options("wide_resnet") == ("depth", "widen_factor", "drop_rate")
    model = build_model("wide_resnet", input_shape=(1, 16, 16), num_classes=3, depth=10, widen_factor=1, drop_rate=0.0)
    assert isinstance(model, WideResNet) and model.conv1.in_channels == 1
    # One block per group; widen_factor=1 makes block1 16 -> 16, so it has no shortcut conv.
    assert model.block1.layer[0].convShortcut is None
    assert len(prunable(model)) == 1 + 2 + 3 + 3 + 1
    model.train()
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 3)
    out.sum().backward()
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)
    with pytest.raises(ValueError, match="needs images"):
        build_model("wrn28_8", input_shape=(3, 32), num_classes=10)
    with pytest.raises(ValueError, match="has no option 'width_mult'"):
        build_model("wrn28_8", input_shape=(3, 32, 32), num_classes=10, width_mult=2)


def test_gpmt_keeps_the_three_small_wrn_layers_dense():
    torch.manual_seed(1)
    model = build_model("wrn28_8", input_shape=(3, 32, 32), num_classes=10)
    masks = sparsetrain.prune(model, 0.9, method="gpmt", min_threshold=0.05)
    assert masks.numel() == WRN_28_8_WEIGHTS
    assert masks.pruned_count() == round(0.9 * WRN_28_8_WEIGHTS)
    names = [n for n, _ in prunable(model)]
    kept = dict(zip(names, masks.kept_counts()))
    dense = {n for n, m in prunable(model) if kept[n] == m.weight.numel()}
    assert dense == set(WRN_SMALL_LAYERS)
    assert all(kept[n] >= 11_670 for n in names if n not in WRN_SMALL_LAYERS)


# ----------------------------------------------------------------------------- MobileNet-V1


def test_mobilenet_v1_prunable_layers_and_counts(mobilenet):
    layers = prunable(mobilenet)
    assert len(layers) == 28
    assert sum(m.weight.numel() for _, m in layers) == MOBILENET_V1_WEIGHTS
    assert all(m.bias is None for _, m in layers)
    assert isinstance(mobilenet.fc, nn.Linear) and mobilenet.fc.weight.shape == (1000, 1024)
    assert sum(p.numel() for p in mobilenet.parameters()) == MOBILENET_V1_WEIGHTS + 21_888
    convs = [m for _, m in layers if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 13 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert [c.stride[0] for c in [convs[0], *depthwise]] == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [c.out_channels for c in convs[2::2]] == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    keys = mobilenet.state_dict().keys()
    assert {"model.0.0.weight", "model.1.0.weight", "model.1.3.weight", "model.13.4.running_var", "fc.weight"} <= keys
    assert "fc.bias" not in keys


def test_mobilenet_v1_forward(mobilenet):
    mobilenet.eval()
    with torch.no_grad():
        assert mobilenet(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert mobilenet(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_mobilenet_v1_width_mult_and_channels():
    assert model_options("mobilenet_v1") == ("width_mult",)
    model = build_model("mobilenet_v1", input_shape=(1, 32, 32), num_classes=5, width_mult=0.25)
    assert model.model[0][0].in_channels == 1 and model.model[0][0].out_channels == 8
    assert model.fc.in_features == 256 and len(prunable(model)) == 28
    model.train()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 5)
    out.sum().backward()
    with pytest.raises(ValueError, match="needs images"):
        build_model("mobilenet_v1", input_shape=(3, 32), num_classes=10)
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV1(width_mult=0)
