"""PointNet++ part segmentation: the reference checkpoint layout, forward shapes and determinism.

The expected state-dict tables below are written from the reference constructors' arguments
(``yanx27/Pointnet_Pointnet2_pytorch``, ``models/pointnet2_part_seg_{msg,ssg}.py``: each set
abstraction's ``in_channel`` / ``mlp`` lists, each feature propagation's ``in_channel`` / ``mlp``),
not from our code, so a change of any name, order or shape shows up here.
"""

from __future__ import annotations

import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.models.pointnet2 import (
    POINTNET2_MODELS,
    PointNet2PartSegMSG,
    PointNet2PartSegSSG,
    build_pointnet2,
)
from sparsetrain.ops import farthest_point_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def _layer(prefix: str, c_in: int, c_out: int, conv_dims: int) -> list[tuple[str, tuple[int, ...]]]:
    """A 1x1 conv (``conv_dims`` spatial dims) and its batch norm, as separate prefixes."""
    conv, bn = prefix
    kernel = (1,) * conv_dims
    return [(f"{conv}.weight", (c_out, c_in, *kernel)), (f"{conv}.bias", (c_out,)),
            (f"{bn}.weight", (c_out,)), (f"{bn}.bias", (c_out,)), (f"{bn}.running_mean", (c_out,)),
            (f"{bn}.running_var", (c_out,)), (f"{bn}.num_batches_tracked", ())]


def _chain(conv_prefix: str, bn_prefix: str, c_in: int, widths: list[int], conv_dims: int):
    """Keys of a shared MLP, in the module order: all convs first, then all batch norms."""
    convs, bns, last = [], [], c_in
    for j, width in enumerate(widths):
        layer = _layer((f"{conv_prefix}.{j}", f"{bn_prefix}.{j}"), last, width, conv_dims)
        convs += layer[:2]
        bns += layer[2:]
        last = width
    return convs, bns


def _sa(name: str, in_channel: int, mlp: list[int]):
    convs, bns = _chain(f"{name}.mlp_convs", f"{name}.mlp_bns", in_channel, mlp, 2)
    return convs + bns


def _sa_msg(name: str, in_channel: int, mlp_list: list[list[int]]):
    convs, bns = [], []
    for i, mlp in enumerate(mlp_list):  # each branch sees in_channel + 3 (relative xyz)
        c, b = _chain(f"{name}.conv_blocks.{i}", f"{name}.bn_blocks.{i}", in_channel + 3, mlp, 2)
        convs += c
        bns += b
    return convs + bns


def _fp(name: str, in_channel: int, mlp: list[int]):
    convs, bns = _chain(f"{name}.mlp_convs", f"{name}.mlp_bns", in_channel, mlp, 1)
    return convs + bns


def _head(num_parts: int):
    return [("conv1.weight", (128, 128, 1)), ("conv1.bias", (128,)),
            ("bn1.weight", (128,)), ("bn1.bias", (128,)), ("bn1.running_mean", (128,)),
            ("bn1.running_var", (128,)), ("bn1.num_batches_tracked", ()),
            ("conv2.weight", (num_parts, 128, 1)), ("conv2.bias", (num_parts,))]


def reference_msg_table(normal_channel: bool, num_parts: int = 50):
    extra = 3 if normal_channel else 0
    return (_sa_msg("sa1", 3 + extra, [[32, 32, 64], [64, 64, 128], [64, 96, 128]])
            + _sa_msg("sa2", 128 + 128 + 64, [[128, 128, 256], [128, 196, 256]])
            + _sa("sa3", 512 + 3, [256, 512, 1024])
            + _fp("fp3", 1536, [256, 256])
            + _fp("fp2", 576, [256, 128])
            + _fp("fp1", 150 + extra, [128, 128])
            + _head(num_parts))


def reference_ssg_table(normal_channel: bool, num_parts: int = 50):
    extra = 3 if normal_channel else 0
    return (_sa("sa1", 6 + extra, [64, 64, 128])
            + _sa("sa2", 128 + 3, [128, 128, 256])
            + _sa("sa3", 256 + 3, [256, 512, 1024])
            + _fp("fp3", 1280, [256, 256])
            + _fp("fp2", 384, [256, 128])
            + _fp("fp1", 128 + 16 + 6 + extra, [128, 128, 128])
            + _head(num_parts))


TABLES = {"pointnet2_part_seg_msg": reference_msg_table, "pointnet2_part_seg_ssg": reference_ssg_table}


@pytest.mark.parametrize("normal_channel", [False, True])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_state_dict_is_the_reference_layout(name, normal_channel):
    model = build_pointnet2(name, normal_channel=normal_channel)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == TABLES[name](normal_channel)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_reference_checkpoint_loads_strictly_and_is_used(name):
    g = torch.Generator().manual_seed(0)
    table = TABLES[name](True)
    checkpoint = {"model_state_dict": {
        key: (torch.tensor(7) if key.endswith("num_batches_tracked") else torch.rand(shape, generator=g) + 0.5)
        for key, shape in table}}
    model = build_pointnet2(name, normal_channel=True)
    assert model.load_state_dict(checkpoint["model_state_dict"], strict=True) is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model_state_dict"][key])


def test_state_dict_with_other_num_parts():
    table = reference_ssg_table(False, num_parts=4)
    assert [(k, tuple(v.shape)) for k, v in build_pointnet2("pointnet2_part_seg_ssg", num_parts=4).state_dict().items()] == table


def test_weight_layers_are_convolutions():
    model = build_pointnet2("pointnet2_part_seg_tiny")
    weights = {name for name, module in model.named_modules() if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d))}
    assert "conv2" in weights and "sa1.mlp_convs.0" in weights and "fp1.mlp_convs.2" in weights
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def _inputs(batch: int, n: int, normal_channel: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, 6 if normal_channel else 3, n, generator=g) * 2 - 1
    category = torch.nn.functional.one_hot(torch.randint(0, 16, (batch,), generator=g), 16).float()
    return points, category


def _tiny_msg(**kwargs):
    return PointNet2PartSegMSG(width=1 / 16, npoint=(32, 8), nsample=((4, 8, 8), (4, 8)), **kwargs)


@pytest.mark.parametrize("normal_channel", [False, True])
@pytest.mark.parametrize("make", [lambda **kw: build_pointnet2("pointnet2_part_seg_tiny", **kw), _tiny_msg],
                         ids=["tiny_ssg", "tiny_msg"])
def test_forward_shapes_and_probabilities(make, normal_channel):
    model = make(normal_channel=normal_channel)
    points, category = _inputs(2, 64, normal_channel)
    log_probs, global_feature = model(points, category)
    assert log_probs.shape == (2, 64, 50)
    assert global_feature.shape == (2, model.sa3.out_channels, 1)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 64))
    log_probs.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_small_model_at_512_points():
    model = build_pointnet2("pointnet2_part_seg_small").eval()
    assert model.npoint == (128, 32) and model.sa1.nsample == 16 and model.sa2.nsample == 32
    assert model.sa1.mlp_convs[0].out_channels == 16 and model.sa3.out_channels == 256
    with torch.no_grad():
        log_probs, global_feature = model(*_inputs(1, 512))
    assert log_probs.shape == (1, 512, 50) and global_feature.shape == (1, 256, 1)


def test_full_size_forward_once():
    torch.manual_seed(0)
    for name in ("pointnet2_part_seg_ssg", "pointnet2_part_seg_msg"):
        model = build_pointnet2(name).eval()
        with torch.no_grad():
            log_probs, global_feature = model(*_inputs(1, 512))
        assert log_probs.shape == (1, 512, 50) and global_feature.shape == (1, 1024, 1)
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(1, 512))


def test_training_forward_is_reproducible_from_the_global_seed():
    model = build_pointnet2("pointnet2_part_seg_tiny")
    inputs = _inputs(2, 64)
    outputs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        outputs.append(model(*inputs)[0])
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_eval_forward_starts_sampling_at_index_0_whatever_the_rng():
    model = build_pointnet2("pointnet2_part_seg_tiny").eval()
    points, category = _inputs(2, 64)
    torch.manual_seed(1)
    first = model(points, category)[0]
    torch.manual_seed(2)
    assert torch.equal(first, model(points, category)[0])
    xyz = points.transpose(1, 2)
    l1_xyz, _ = model.sa1(points, points)
    expected = farthest_point_sample(xyz, 32, start=torch.zeros(2, dtype=torch.long))
    assert torch.equal(l1_xyz.transpose(1, 2), xyz[torch.arange(2)[:, None], expected])


def test_builders_and_options():
    assert set(POINTNET2_MODELS) == {"pointnet2_part_seg_msg", "pointnet2_part_seg_ssg",
                                     "pointnet2_part_seg_small", "pointnet2_part_seg_tiny"}
    assert isinstance(build_pointnet2("pointnet2_part_seg_msg"), PointNet2PartSegMSG)
    small = build_pointnet2("pointnet2_part_seg_small", num_parts=6, num_categories=3, width=0.5)
    assert isinstance(small, PointNet2PartSegSSG) and small.sa1.mlp_convs[0].out_channels == 32
    assert small.conv2.out_channels == 6 and small.fp1.mlp_convs[0].in_channels == 3 + 6 + 64
    with pytest.raises(UserError, match="unknown PointNet"):
        build_pointnet2("pointnet3")
    with pytest.raises(UserError, match="no option 'depth'"):
        build_pointnet2("pointnet2_part_seg_ssg", depth=3)
    with pytest.raises(UserError, match="width"):
        build_pointnet2("pointnet2_part_seg_ssg", width=0)
    with pytest.raises(UserError, match="npoint"):
        build_pointnet2("pointnet2_part_seg_ssg", npoint=(8, 16))


def test_forward_rejects_bad_inputs():
    model = build_pointnet2("pointnet2_part_seg_tiny")
    points, category = _inputs(2, 64)
    with pytest.raises(UserError, match=r"\(B, 3, N\)"):
        model(torch.rand(2, 6, 64), category)
    with pytest.raises(UserError, match="N >= 32"):
        model(points[:, :, :16], category)
    with pytest.raises(UserError, match=r"\(2, 16\)"):
        model(points, category[:, :10])


def _xyz_selecting(convs, norms, first_channel: int) -> None:
    """Make a one-conv MLP output relu(x-coordinate) read from input channel ``first_channel``."""
    conv = convs[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, first_channel] = 1.0
    norms.eval()


@pytest.mark.parametrize("msg", [False, True], ids=["ssg", "msg"])
def test_set_abstraction_channel_order(msg):
    """SSG groups [relative xyz, features]; MSG groups [features, relative xyz] (the reference's orders)."""
    from sparsetrain.models.pointnet2 import SetAbstraction, SetAbstractionMSG
    from sparsetrain.ops import ball_query, index_points

    d = 4
    sa = SetAbstractionMSG(6, [0.5], [5], d, [[2]]) if msg else SetAbstraction(6, 0.5, 5, 3 + d, [2], False)
    convs, norms = (sa.conv_blocks[0], sa.bn_blocks[0]) if msg else (sa.mlp_convs, sa.mlp_bns)
    _xyz_selecting(convs, norms, d if msg else 0)
    sa.eval()
    g = torch.Generator().manual_seed(0)
    xyz, feats = torch.rand(2, 20, 3, generator=g), torch.randn(2, 20, d, generator=g) * 10
    new_xyz, out = sa(xyz.transpose(1, 2), feats.transpose(1, 2))
    new_xyz = new_xyz.transpose(1, 2)
    relative_x = (index_points(xyz, ball_query(0.5, 5, xyz, new_xyz)) - new_xyz.unsqueeze(2))[..., 0]
    torch.testing.assert_close(out[:, 0], relative_x.relu().amax(-1))


def test_fp1_input_is_category_xyz_points_then_interpolated():
    model = build_pointnet2("pointnet2_part_seg_tiny", normal_channel=True).eval()
    points, category = _inputs(2, 64, normal_channel=True)
    seen = {}

    def keep_input(module, args, output):
        seen["x"] = args[0]

    hook = model.fp1.mlp_convs[0].register_forward_hook(keep_input)
    with torch.no_grad():
        model(points, category)
    hook.remove()
    x = seen["x"]
    assert x.shape[1] == 16 + 3 + 6 + model.fp2.out_channels
    assert torch.equal(x[:, :16], category.unsqueeze(2).expand(2, 16, 64))
    assert torch.equal(x[:, 16:19], points[:, :3])
    assert torch.equal(x[:, 19:25], points)
