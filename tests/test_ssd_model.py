"""SSD detectors: NVIDIA SSD300 v1.1 checkpoint layout, feature-map sizes, default boxes, small variants.

The expected state-dict table is written from NVIDIA's constructors
(``NVIDIA/DeepLearningExamples``, ``PyTorch/Detection/SSD/ssd/model.py``: torchvision ResNet-50
``children()[:7]``, ``_build_additional_features`` with channels 256, 256, 128, 128, 128 and
outputs 512, 512, 256, 256, 256, heads with 4, 6, 6, 6, 4, 4 boxes on 1024, 512, 512, 256, 256,
256 channels), not from our code, so a change of any name, order or shape shows up here. The
default boxes are checked against a plain loop over NVIDIA's ``DefaultBoxes`` formulas.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from sparsetrain.errors import UserError
from sparsetrain.models.resnet import resnet50
from sparsetrain.ops import xywh_to_ltrb
from sparsetrain.runner.checkpoint import CheckpointError, load_state_dict_from
from sparsetrain.models.ssd import (
    SSD,
    SSD_MODELS,
    build_ssd,
    dboxes300_coco,
    default_boxes,
    load_backbone,
    ssd300_resnet50,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def _nvidia_ssd300_table(num_classes: int = 81) -> list[tuple[str, tuple[int, ...]]]:
    """NVIDIA SSD300 state-dict keys and shapes, in module order."""
    fe = "feature_extractor.feature_extractor"
    table = [(f"{fe}.0.weight", (64, 3, 7, 7))] + _bn(f"{fe}.1", 64)
    inplanes = 64
    for index, planes, blocks in ((4, 64, 3), (5, 128, 4), (6, 256, 6)):
        for b in range(blocks):
            p = f"{fe}.{index}.{b}"
            table += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1))] + _bn(f"{p}.bn1", planes)
            table += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + _bn(f"{p}.bn2", planes)
            table += [(f"{p}.conv3.weight", (4 * planes, planes, 1, 1))] + _bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                table += [(f"{p}.downsample.0.weight", (4 * planes, inplanes, 1, 1))]
                table += _bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    outs = [1024, 512, 512, 256, 256, 256]
    for i, (c_in, c_out, mid) in enumerate(zip(outs[:-1], outs[1:], [256, 256, 128, 128, 128])):
        p = f"additional_blocks.{i}"
        table += [(f"{p}.0.weight", (mid, c_in, 1, 1))] + _bn(f"{p}.1", mid)
        table += [(f"{p}.3.weight", (c_out, mid, 3, 3))] + _bn(f"{p}.4", c_out)
    for head, per_box in (("loc", 4), ("conf", num_classes)):
        for k, (nd, c) in enumerate(zip([4, 6, 6, 6, 4, 4], outs)):
            table += [(f"{head}.{k}.weight", (nd * per_box, c, 3, 3)), (f"{head}.{k}.bias", (nd * per_box,))]
    return table


@pytest.fixture(scope="module")
def meta_ssd300() -> SSD:
    with torch.device("meta"):
        return build_ssd("ssd300_resnet50")


def test_ssd300_state_dict_equals_nvidia_layout(meta_ssd300):
    table = _nvidia_ssd300_table()
    got = [(k, tuple(v.shape)) for k, v in meta_ssd300.state_dict().items()]
    assert got == table
    assert len(got) == 342
    shapes = dict(got)
    assert shapes["feature_extractor.feature_extractor.6.0.conv1.weight"] == (256, 512, 1, 1)
    assert shapes["additional_blocks.0.0.weight"] == (256, 1024, 1, 1)
    assert shapes["additional_blocks.0.3.weight"] == (512, 256, 3, 3)
    assert shapes["loc.0.weight"] == (16, 1024, 3, 3)
    assert shapes["conf.5.weight"] == (324, 256, 3, 3)
    # torchvision ResNet-50 25,557,032 minus layer4 14,964,736 minus fc 2,049,000 = 8,543,296;
    # additional blocks 3,773,696; loc 497,784; conf 10,080,126 (81 classes).
    n_params = sum(p.numel() for p in meta_ssd300.parameters())
    assert n_params == 8_543_296 + 3_773_696 + 497_784 + 10_080_126 == 22_894_902
    assert all(p.device.type == "meta" for p in meta_ssd300.parameters())
    assert (meta_ssd300.image_size, meta_ssd300.num_classes) == (300, 81)


def test_ssd300_layer3_first_block_runs_at_stride_one(meta_ssd300):
    block = meta_ssd300.feature_extractor.feature_extractor[6][0]
    assert block.conv1.stride == block.conv2.stride == block.downsample[0].stride == (1, 1)
    assert meta_ssd300.feature_extractor.feature_extractor[5][0].conv2.stride == (2, 2)


def test_ssd300_num_classes_changes_only_conf():
    with torch.device("meta"):
        model = build_ssd("ssd300_resnet50", num_classes=21)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _nvidia_ssd300_table(21)


def test_nvidia_checkpoint_loads_strictly(tmp_path):
    """A checkpoint as NVIDIA's training script writes it ({'model': DDP state dict, 'epoch': ...}) read by the
    runner's checkpoint reader (wrapper and ``module.`` removed) loads strictly, in NVIDIA's key order."""
    table = _nvidia_ssd300_table()
    generator = torch.Generator().manual_seed(0)
    state = {f"module.{k}": (torch.full(s, 7, dtype=torch.long) if k.endswith("num_batches_tracked")
                             else torch.randn(s, generator=generator)) for k, s in table}
    model = ssd300_resnet50()
    torch.save({"model": state, "epoch": 65}, tmp_path / "epoch_64.pt")
    sd = load_state_dict_from(tmp_path / "epoch_64.pt")
    assert list(sd) == [k for k, _ in table]
    model.load_state_dict(sd, strict=True)
    for key in ("conf.5.weight", "additional_blocks.2.4.running_var", "feature_extractor.feature_extractor.0.weight"):
        assert torch.equal(model.state_dict()[key], state[f"module.{key}"])
    # A plain state dict without prefixes passes through unchanged.
    plain = {k: v for k, v in sd.items()}
    torch.save(plain, tmp_path / "plain.pt")
    assert list(load_state_dict_from(tmp_path / "plain.pt")) == list(plain)


def test_a_checkpoint_without_a_state_dict_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint '.*list.pt' holds no model state dict"):
        load_state_dict_from(tmp_path / "list.pt")


def test_ssd300_feature_maps_and_outputs_on_meta(meta_ssd300):
    shapes = []
    hooks = [meta_ssd300.feature_extractor.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))]
    hooks += [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
              for b in meta_ssd300.additional_blocks]
    try:
        offsets, logits = meta_ssd300(torch.empty(2, 3, 300, 300, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == [(2, 1024, 38, 38), (2, 512, 19, 19), (2, 512, 10, 10), (2, 256, 5, 5),
                      (2, 256, 3, 3), (2, 256, 1, 1)]
    assert meta_ssd300.feature_sizes == (38, 19, 10, 5, 3, 1)
    assert tuple(offsets.shape) == (2, 4, 8732)
    assert tuple(logits.shape) == (2, 81, 8732)


def _loop_boxes(fig, feat, steps, scales, ratios):
    """NVIDIA's DefaultBoxes formulas as a plain loop (xywh, then float32, then clamp)."""
    boxes = []
    for idx, sfeat in enumerate(feat):
        fk = fig / steps[idx]
        sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
        sizes = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
        for a in ratios[idx]:
            sizes += [(sk1 * math.sqrt(a), sk1 / math.sqrt(a)), (sk1 / math.sqrt(a), sk1 * math.sqrt(a))]
        for w, h in sizes:
            for i, j in itertools.product(range(sfeat), repeat=2):
                boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return torch.tensor(boxes, dtype=torch.float32).clamp(0, 1)


def test_ssd300_default_boxes(meta_ssd300):
    boxes = meta_ssd300.default_boxes()
    assert boxes.shape == (8732, 4) and boxes.dtype == torch.float32 and boxes.device.type == "cpu"
    assert torch.equal(boxes, dboxes300_coco())
    expected = _loop_boxes(300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300],
                           [21, 45, 99, 153, 207, 261, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]])
    assert torch.equal(boxes, expected)
    c = 0.5 / 37.5  # (j + 0.5) / fk with fk = 300 / 8
    assert boxes[0].tolist() == torch.tensor([c, c, 0.07, 0.07]).tolist()
    assert boxes[1].tolist() == torch.tensor([3 * c, c, 0.07, 0.07]).tolist()
    assert boxes[38].tolist() == torch.tensor([c, 3 * c, 0.07, 0.07]).tolist()
    s3 = math.sqrt(0.07 * 0.15)
    assert boxes[1444].tolist() == torch.tensor([c, c, s3, s3]).tolist()
    assert boxes[2 * 1444].tolist() == torch.tensor([c, c, 0.07 * math.sqrt(2), 0.07 / math.sqrt(2)]).tolist()
    # Map 2 (10x10, step 32: fk = 9.375) starts after 4 * 38**2 + 6 * 19**2 = 7942 boxes.
    assert boxes[7942].tolist() == torch.tensor([0.5 / 9.375, 0.5 / 9.375, 0.33, 0.33]).tolist()
    # The last box: 1x1 map, ratio-2 tall box, width 0.87 * sqrt(2) clamped to 1.
    assert boxes[-1].tolist() == torch.tensor([0.5, 0.5, 0.87 / math.sqrt(2), 1.0]).tolist()
    assert boxes.min() >= 0 and boxes.max() <= 1
    ltrb = xywh_to_ltrb(boxes[:1])
    assert ltrb.tolist() == torch.tensor([[c - 0.035, c - 0.035, c + 0.035, c + 0.035]]).tolist()


def test_default_boxes_reject_inconsistent_lengths():
    with pytest.raises(UserError, match=r"^default boxes need one step"):
        default_boxes(300, [38, 19], [8], [21, 45, 99], [[2], [2]])


def test_small_models_outputs_match_default_boxes():
    torch.manual_seed(0)
    small = build_ssd("ssd_small", num_classes=5)
    assert (small.image_size, small.num_classes) == (128, 5)
    assert small.feature_sizes == (16, 8, 4, 2, 1) and small.num_defaults == (4, 6, 6, 4, 4)
    assert small.num_boxes == 4 * 256 + 6 * 64 + 6 * 16 + 4 * 4 + 4 == 1524
    assert sum(p.numel() for p in small.parameters()) < 1_000_000
    boxes = small.default_boxes()
    expected = _loop_boxes(128, [16, 8, 4, 2, 1], [8, 16, 32, 64, 128],
                           [128 * f for f in (0.07, 0.15 + 0.2 * 0.18, 0.33 + 0.4 * 0.18,
                                              0.51 + 0.6 * 0.18, 0.69 + 0.8 * 0.18, 1.05)],
                           [[2], [2, 3], [2, 3], [2], [2]])
    assert torch.allclose(boxes, expected, atol=1e-6, rtol=0)
    with torch.device("meta"):
        offsets, logits = build_ssd("ssd_small", num_classes=5)(torch.empty(3, 3, 128, 128))
    assert tuple(offsets.shape) == (3, 4, 1524) and tuple(logits.shape) == (3, 5, 1524)

    tiny = build_ssd("ssd_tiny", num_classes=3)
    assert tiny.feature_sizes == (8, 4, 2, 1) and tiny.num_boxes == 372 == len(tiny.default_boxes())
    offsets, logits = tiny(torch.randn(2, 3, 64, 64))
    assert tuple(offsets.shape) == (2, 4, 372) and tuple(logits.shape) == (2, 3, 372)
    (offsets.sum() + logits.sum()).backward()
    assert all(p.grad is not None for p in tiny.parameters())


def test_head_columns_follow_default_box_order():
    """Column k*f*f + i*f + j of map 0 holds box shape k at cell (i, j); coordinate r is channel r*nd + k."""
    tiny = build_ssd("ssd_tiny", num_classes=3).eval()
    with torch.no_grad():
        head = tiny.loc[0]
        head.weight.zero_()
        head.bias.copy_(torch.arange(head.out_channels, dtype=torch.float32))
        offsets, _ = tiny(torch.zeros(1, 3, 64, 64))
    nd, f = 4, 8
    for r in range(4):
        for k in range(nd):
            assert offsets[0, r, k * f * f:(k + 1) * f * f].eq(r * nd + k).all()


def test_xavier_init_of_blocks_and_heads():
    torch.manual_seed(0)
    tiny = build_ssd("ssd_tiny", num_classes=3)
    for layer in [*tiny.additional_blocks, *tiny.loc, *tiny.conf]:
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                bound = math.sqrt(6.0 / (w.shape[1] * w[0, 0].numel() + w.shape[0] * w[0, 0].numel()))
                assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
            elif isinstance(m, nn.BatchNorm2d):
                assert m.weight.eq(1).all() and m.bias.eq(0).all()


def test_load_backbone_from_torchvision_resnet50():
    torch.manual_seed(0)
    source = resnet50().state_dict()
    model = ssd300_resnet50()
    before_heads = model.conf[0].weight.clone()
    load_backbone(model, source)
    sd = model.state_dict()
    prefix = "feature_extractor.feature_extractor."
    for tv, idx in (("conv1", "0"), ("bn1", "1"), ("layer1", "4"), ("layer2", "5"), ("layer3", "6")):
        keys = [k for k in source if k.startswith(tv + ".")]
        assert keys
        for key in keys:
            assert torch.equal(sd[prefix + idx + key[len(tv):]], source[key]), key
    assert torch.equal(model.conf[0].weight, before_heads)

    missing = {k: v for k, v in source.items() if k != "layer3.5.bn3.running_var"}
    with pytest.raises(UserError, match=r"^backbone state dict lacks 1 ResNet entries, e\.g\. 'layer3\.5\.bn3\.running_var'$"):
        load_backbone(model, missing)
    bad = dict(source, **{"layer1.0.conv1.weight": torch.zeros(64, 3, 1, 1)})
    with pytest.raises(UserError, match=r"^backbone key 'layer1\.0\.conv1\.weight' has shape \(64, 3, 1, 1\); "
                                        r"this SSD needs \(64, 64, 1, 1\)$"):
        load_backbone(model, bad)
    with pytest.raises(UserError, match=r"^backbone key 'head\.weight' is not a ResNet"):
        load_backbone(model, dict(source, **{"head.weight": torch.zeros(1)}))


def test_build_ssd_errors():
    assert list(SSD_MODELS) == ["ssd300_resnet50", "ssd_small", "ssd_tiny"]
    with pytest.raises(UserError, match=r"^unknown SSD model 'ssd512' \(models: ssd300_resnet50, ssd_small, ssd_tiny\)$"):
        build_ssd("ssd512")
    with pytest.raises(UserError, match=r"^model 'ssd_small' has no option 'depth' \(options: image_size, width, stride\)$"):
        build_ssd("ssd_small", depth=3)
    with pytest.raises(UserError, match=r"^model 'ssd300_resnet50' has no option 'width' \(options: none\)$"):
        build_ssd("ssd300_resnet50", width=3)
    with pytest.raises(UserError, match=r"^num_classes=1 must be an integer >= 2$"):
        build_ssd("ssd_tiny", num_classes=1)
    with pytest.raises(UserError, match=r"^image_size=8 must be an integer in \[16, 2048\]$"):
        build_ssd("ssd_tiny", image_size=8)
    with pytest.raises(UserError, match=r"^width=True must be an integer >= 2$"):
        build_ssd("ssd_small", width=True)
    tiny = build_ssd("ssd_tiny", num_classes=3)
    with pytest.raises(UserError, match=r"^images must have shape \(B, 3, 64, 64\); got \(1, 3, 32, 32\)$"):
        tiny(torch.zeros(1, 3, 32, 32))


def test_ssd_small_stride_4_has_a_finer_first_map_and_the_same_names():
    """stride=4 replaces the stem's max-pool by an identity: the same parameter names (presets still apply), the first
    map 4x finer, one more additional block to reach 1x1."""
    coarse = build_ssd("ssd_small", num_classes=7, image_size=64, width=4)
    fine = build_ssd("ssd_small", num_classes=7, image_size=64, width=4, stride=4)
    assert coarse.feature_sizes == (8, 4, 2, 1) and fine.feature_sizes == (16, 8, 4, 2, 1)
    backbone = [k for k in fine.state_dict() if k.startswith("feature_extractor.")]
    assert backbone == [k for k in coarse.state_dict() if k.startswith("feature_extractor.")]
    offsets, logits = fine(torch.zeros(2, 3, 64, 64))
    assert offsets.shape == (2, 4, fine.default_boxes().shape[0]) and logits.shape[1] == 7
    with pytest.raises(UserError, match=r"^ssd_small stride=2 is not valid; valid: 4 .* or 8"):
        build_ssd("ssd_small", num_classes=7, stride=2)
