import itertools
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsetrain.models.reference_shapes import resnet50_weight_shapes
from sparsetrain.models.small_resnet import small_resnet
from sparsetrain.sparsity.errors import SparsityError
from sparsetrain.sparsity.partitions import (
    PRESETS,
    SCHEMES,
    Partition,
    block_key,
    format_partitions,
    ownership,
    partition_owner,
    partition_targets,
    stage_key,
)
from sparsetrain.sparsity.targets import Target, select_targets


# ---- model builders ---------------------------------------------------------------------------
def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(leaf, module)


def resnet50_meta() -> nn.Module:
    """torchvision ResNet-50 names and weight shapes (meta device), plus the BatchNorms."""
    root = nn.Module()
    for name, shape in resnet50_weight_shapes():
        path = name.rsplit(".", 1)[0]
        if len(shape) == 4:
            _put(root, path, nn.Conv2d(shape[1], shape[0], shape[2], bias=False, device="meta"))
            if path == "conv1":
                _put(root, "bn1", nn.BatchNorm2d(shape[0], device="meta"))
            elif path.endswith(".downsample.0"):
                _put(root, path[:-1] + "1", nn.BatchNorm2d(shape[0], device="meta"))
            else:
                _put(root, path[:-5] + "bn" + path[-1], nn.BatchNorm2d(shape[0], device="meta"))
        else:
            _put(root, path, nn.Linear(shape[1], shape[0], device="meta"))
    return root


def fake_transformer(d: int = 4) -> nn.Module:
    root = nn.Module()
    root.add_module("embed", nn.Embedding(10, d))
    for side in ("encoder", "decoder"):
        for i in range(6):
            base = f"{side}.layers.{i}"
            attns = ("self_attn",) if side == "encoder" else ("self_attn", "encoder_attn")
            for attn in attns:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    _put(root, f"{base}.{attn}.{proj}", nn.Linear(d, d))
                _put(root, f"{base}.{attn}_layer_norm", nn.LayerNorm(d))
            _put(root, f"{base}.fc1", nn.Linear(d, 2 * d))
            _put(root, f"{base}.fc2", nn.Linear(2 * d, d))
            _put(root, f"{base}.final_layer_norm", nn.LayerNorm(d))
        _put(root, f"{side}.layer_norm", nn.LayerNorm(d))
    return root


def fake_targets(names_and_sizes) -> list[Target]:
    return [Target(n, n.rsplit(".", 1)[0], nn.Parameter(torch.empty(k, device="meta"))) for n, k in names_and_sizes]


def blocks_of(partitions):
    return [sorted({block_key(n) for n in p.target_names}) for p in partitions]


@pytest.fixture(scope="module")
def r50():
    model = resnet50_meta()
    return model, select_targets(model)


@pytest.fixture(scope="module")
def small():
    model = small_resnet(width=8, blocks_per_stage=(2, 2, 2))
    return model, select_targets(model)


@pytest.fixture(scope="module")
def tfm():
    model = fake_transformer()
    return model, select_targets(model)


# ---- keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, block, stage",
    [
        ("layer1.0.conv1.weight", "layer1.0", "layer1"),
        ("layer2.0.downsample.0.weight", "layer2.0", "layer2"),
        ("layer2.0.downsample.1.running_mean", "layer2.0", "layer2"),
        ("encoder.layers.3.fc1.weight", "encoder.layers.3", "encoder.layers"),
        ("fc.weight", "fc", None),
        ("conv1.weight", "conv1", None),
        ("bn1.running_mean", "bn1", None),
        ("encoder.layer_norm.weight", "encoder.layer_norm", None),
        ("0.weight", "0", ""),
        ("weight", "", None),
        ("blocks.12x.weight", "blocks.12x", None),
    ],
)
def test_block_and_stage_keys(name, block, stage):
    assert block_key(name) == block
    assert stage_key(name) == stage


# ---- ResNet-50 --------------------------------------------------------------------------------
def test_resnet50_blocks_kappa4_is_the_equal_block_split(r50):
    _, targets = r50
    parts = partition_targets(targets, "blocks", 4)
    assert blocks_of(parts) == [
        ["conv1", "layer1.0", "layer1.1", "layer1.2", "layer2.0"],
        ["layer2.1", "layer2.2", "layer2.3", "layer3.0"],
        ["layer3.1", "layer3.2", "layer3.3", "layer3.4"],
        ["fc", "layer3.5", "layer4.0", "layer4.1", "layer4.2"],
    ]
    assert [p.numel for p in parts] == [599_232, 2_342_912, 4_456_448, 18_104_320]
    assert partition_targets(targets, "resnet50_blocks") == parts
    assert partition_targets(targets, "resnet50_blocks", 4) == parts
    assert parts[0].label == "P1 (conv1-layer2.0, 15 tensors, 599,232 weights)"


def test_resnet50_stages_equal_the_preset(r50):
    _, targets = r50
    parts = partition_targets(targets, "stages", 4)
    assert parts == partition_targets(targets, "stages") == partition_targets(targets, "resnet_stages")
    assert [p.numel for p in parts] == [222_400, 1_212_416, 7_077_888, 16_990_208]
    assert parts[0].target_names[0] == "conv1.weight" and parts[-1].target_names[-1] == "fc.weight"


def test_resnet50_presets_without_stem_and_fc(r50):
    model, _ = r50
    targets = select_targets(model, exclude=[r"^conv1\.", r"^fc\."])
    assert partition_targets(targets, "resnet_stages") == partition_targets(targets, "stages")
    parts = partition_targets(targets, "resnet50_blocks")
    assert parts == partition_targets(targets, "blocks", 4)
    assert [p.numel for p in parts] == [589_824, 2_342_912, 4_456_448, 16_056_320]


def test_resnet50_layers_and_balanced(r50):
    _, targets = r50
    layers = partition_targets(targets, "layers", 4)
    assert [len(p.target_indices) for p in layers] == [14, 14, 13, 13]
    balanced = partition_targets(targets, "balanced", 4)
    assert [p.numel for p in balanced] == [6_546_624, 5_898_240, 6_553_600, 6_504_448]
    assert max(p.numel for p in balanced) == _brute_force_max([t.numel for t in targets], 4)


def _brute_force_max(weights, k):
    best = None
    n = len(weights)
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(weights[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


# ---- small ResNet -----------------------------------------------------------------------------
def test_small_resnet_each_scheme(small):
    _, targets = small
    names = [t.name for t in targets]
    assert len(names) == 16  # conv1, 6 blocks x 2 convs, 2 downsamples, fc
    assert blocks_of(partition_targets(targets, "blocks", 3)) == [
        ["conv1", "layer1.0", "layer1.1"],
        ["layer2.0", "layer2.1"],
        ["fc", "layer3.0", "layer3.1"],
    ]
    assert blocks_of(partition_targets(targets, "blocks", 4)) == [
        ["conv1", "layer1.0", "layer1.1"],
        ["layer2.0", "layer2.1"],
        ["layer3.0"],
        ["fc", "layer3.1"],
    ]
    stages = partition_targets(targets, "stages")
    assert [len(p.target_indices) for p in stages] == [5, 5, 6]
    assert [len(p.target_indices) for p in partition_targets(targets, "layers", 5)] == [4, 3, 3, 3, 3]
    assert [len(p.target_indices) for p in partition_targets(targets, "layers", 16)] == [1] * 16
    balanced = partition_targets(targets, "balanced", 3)
    assert max(p.numel for p in balanced) == _brute_force_max([t.numel for t in targets], 3)
    assert stages == partition_targets(targets, [r"^(conv1|layer1)\.", r"^layer2\.", r"^(layer3|fc)\."])
    # the small model has 3 stages: resnet_stages' last regex holds only fc, or nothing without fc
    assert [p.target_names for p in partition_targets(targets, "resnet_stages")][3] == ("fc.weight",)
    with pytest.raises(SparsityError, match=r"regex 3 \('\^\(layer4\|fc\)\\\\\.'\) of preset 'resnet_stages'"
                       r" matches no target"):
        partition_targets(targets[:-1], "resnet_stages")


def test_small_resnet_ownership(small):
    model, targets = small
    parts = partition_targets(targets, "blocks", 3)
    keys = list(model.state_dict())
    owners = ownership(keys, parts, model=model)
    assert list(owners) == keys
    assert owners["conv1.weight"] == 0
    # the stem BN follows the stem conv that feeds it (it was an orphan before the model was given)
    assert owners["bn1.weight"] == owners["bn1.running_mean"] == 0
    assert ownership(keys, parts)["bn1.weight"] is None  # without the model: block key bn1 has no target
    assert owners["layer1.0.bn1.running_mean"] == 0
    assert owners["layer2.0.downsample.1.num_batches_tracked"] == 1
    assert owners["layer3.1.bn2.bias"] == 2
    assert owners["fc.bias"] == owners["fc.weight"] == 2
    assert partition_owner("layer2.1.bn1.weight", parts) == 1
    assert partition_owner("nothing.here", parts) is None


def test_split_block_tensors_follow_their_layer_else_the_first_target_of_the_block():
    # Issue 11: the old rule gave every non-target tensor of a split block to the partition of the
    # block's *last* target (a.1.x.bias to P3 although a.1.x is in P2); a layer's bias now follows
    # its weight, and other tensors of the block go to the partition of its first target.
    targets = fake_targets([("a.0.x.weight", 5), ("a.0.y.weight", 5), ("a.1.x.weight", 5), ("a.1.y.weight", 5)])
    parts = partition_targets(targets, "layers", 3)  # [a.0.x, a.0.y] [a.1.x] [a.1.y]
    assert [p.target_indices for p in parts] == [(0, 1), (2,), (3,)]
    assert partition_owner("a.1.x.weight", parts) == 1  # a target is owned by its own partition
    assert partition_owner("a.1.x.bias", parts) == 1  # its layer's weight is in P2
    assert partition_owner("a.1.y.bias", parts) == 2
    assert partition_owner("a.1.norm.weight", parts) == 1  # no model, no pairing: the block's first target
    assert partition_owner("a.0.norm.weight", parts) == 0
    # also for non-contiguous regex partitions
    parts = partition_targets(targets, [r"\.y\.", r"\.x\."])
    assert partition_owner("a.1.bn.weight", parts) == 1  # first target of block a.1 (a.1.x) is in P2
    assert partition_owner("a.1.x.weight", parts) == 1


# ---- Transformer ------------------------------------------------------------------------------
def test_transformer_presets(tfm):
    _, targets = tfm
    assert len(targets) == 6 * 6 + 6 * 10
    p3 = partition_targets(targets, "transformer_3")
    assert blocks_of(p3) == [
        [f"encoder.layers.{i}" for i in range(4)],
        ["decoder.layers.0", "decoder.layers.1", "encoder.layers.4", "encoder.layers.5"],
        [f"decoder.layers.{i}" for i in range(2, 6)],
    ]
    assert p3 == partition_targets(targets, "blocks", 3)
    p6 = partition_targets(targets, "transformer_6", 6)
    assert [len(p.target_indices) for p in p6] == [12, 12, 12, 20, 20, 20]
    assert p6 == partition_targets(targets, "blocks", 6)
    p2 = partition_targets(targets, "transformer_2")
    assert p2 == partition_targets(targets, "stages", 2)
    assert [len(p.target_indices) for p in p2] == [36, 60]
    assert [p.numel for p in p3] == [4 * 128, 2 * 128 + 2 * 192, 4 * 192]  # enc layer 4x16+2x32, dec 8x16+2x32


def test_transformer_presets_accept_a_prefix():
    model = nn.Module()
    model.add_module("model", fake_transformer())
    targets = select_targets(model)
    assert [len(p.target_indices) for p in partition_targets(targets, "transformer_3")] == [24, 32, 40]


def test_transformer_ownership(tfm):
    model, targets = tfm
    p3 = partition_targets(targets, "transformer_3")
    owners = ownership(model.state_dict().keys(), p3)
    assert owners["encoder.layers.0.self_attn_layer_norm.weight"] == 0
    assert owners["encoder.layers.5.final_layer_norm.bias"] == 1
    assert owners["decoder.layers.1.encoder_attn_layer_norm.weight"] == 1
    assert owners["decoder.layers.5.fc2.bias"] == 2
    assert owners["encoder.layer_norm.weight"] is None
    assert owners["decoder.layer_norm.bias"] is None
    assert owners["embed.weight"] is None
    orphans = sorted(k for k, v in owners.items() if v is None)
    assert orphans == sorted(
        ["embed.weight", "encoder.layer_norm.weight", "encoder.layer_norm.bias", "decoder.layer_norm.weight",
         "decoder.layer_norm.bias"]
    )
    assert ownership(model.state_dict().keys(), p3, model=model) == owners  # whole layers: pairing changes nothing


# ---- format -----------------------------------------------------------------------------------
def test_format_partitions(r50):
    _, targets = r50
    text = format_partitions(partition_targets(targets, "blocks", 4), targets)
    lines = text.splitlines()
    assert len(lines) == 4
    assert re.fullmatch(
        r"P1  15 tensors     599,232 weights    2\.35%  conv1\.weight \.\. layer2\.0\.downsample\.0\.weight", lines[0]
    )
    assert lines[3].startswith("P4  14 tensors  18,104,320 weights   70.99%  layer3.5.conv1.weight .. fc.weight")
    single = fake_targets([("a.0.w", 3), ("a.1.w", 1)])
    assert format_partitions(partition_targets(single, "layers", 2), single).splitlines() == [
        "P1  1 tensor   3 weights   75.00%  a.0.w",
        "P2  1 tensor   1 weights   25.00%  a.1.w",
    ]
    with pytest.raises(SparsityError, match=r"P1 names target 'a\.0\.w' at index 0, which is not in these 1 targets"):
        format_partitions(partition_targets(single, "layers", 2), single[1:])


# ---- properties -------------------------------------------------------------------------------
@st.composite
def structured_targets(draw):
    """Stem, stages of numbered blocks of 1-3 tensors, head; random weight counts."""
    items = []
    for s in range(draw(st.integers(0, 2))):
        items.append((f"stem{s}.weight", draw(st.integers(0, 40))))
    for stage in range(draw(st.integers(1, 3))):
        for block in range(draw(st.integers(1, 4))):
            for t in range(draw(st.integers(1, 3))):
                items.append((f"stage{stage}.{block}.conv{t}.weight", draw(st.integers(0, 40))))
    for h in range(draw(st.integers(0, 2))):
        items.append((f"head{h}.weight", draw(st.integers(0, 40))))
    return fake_targets(items)


def _check_invariants(parts, targets, contiguous=True):
    indices = [i for p in parts for i in p.target_indices]
    assert sorted(indices) == list(range(len(targets)))  # disjoint and covering
    assert all(p.target_indices for p in parts)
    assert [p.index for p in parts] == list(range(len(parts)))
    for p in parts:
        assert list(p.target_indices) == sorted(p.target_indices)
        assert p.target_names == tuple(targets[i].name for i in p.target_indices)
        assert p.numel == sum(targets[i].numel for i in p.target_indices)
    assert sum(p.numel for p in parts) == sum(t.numel for t in targets)
    if contiguous:
        assert indices == list(range(len(targets)))


@settings(max_examples=60, deadline=None)
@given(structured_targets(), st.data())
def test_scheme_invariants(targets, data):
    n = len(targets)
    k = data.draw(st.integers(1, n))
    for scheme in ("layers", "balanced"):
        parts = partition_targets(targets, scheme, k)
        assert len(parts) == k
        _check_invariants(parts, targets)
    sizes = [len(p.target_indices) for p in partition_targets(targets, "layers", k)]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)

    blocks = [block_key(t.name) for t in targets if stage_key(t.name) is not None]
    n_blocks = len(dict.fromkeys(blocks))
    kb = data.draw(st.integers(1, n_blocks))
    parts = partition_targets(targets, "blocks", kb)
    assert len(parts) == kb
    _check_invariants(parts, targets)
    counts = [len({block_key(n) for n in p.target_names if stage_key(n) is not None}) for p in parts]
    assert sum(counts) == n_blocks and max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    for p in parts[1:]:  # a block is never split: each later partition starts a new block
        assert stage_key(p.target_names[0]) is not None

    stages = partition_targets(targets, "stages")
    _check_invariants(stages, targets)
    assert len(stages) == len({stage_key(t.name) for t in targets} - {None})

    regexes = [r"^" + re.escape(p.target_names[0].split(".")[0]) + r"\." for p in stages]
    if len(stages) == 1:
        regexes = [r"."]
    elif any(not t.name.startswith("stage") for t in targets):
        return  # stem/head names are not covered by these stage regexes
    assert partition_targets(targets, regexes) == stages


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.data())
def test_balanced_minimises_the_largest_group(weights, data):
    k = data.draw(st.integers(1, len(weights)))
    targets = fake_targets([(f"t{i}.weight", w) for i, w in enumerate(weights)])
    parts = partition_targets(targets, "balanced", k)
    _check_invariants(parts, targets)
    best = _brute_force_max(weights, k)
    assert max(p.numel for p in parts) == best
    # deterministic tie-break: lexicographically largest group sizes among optimal splits
    n = len(weights)
    optimal = []
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        if max(sum(weights[a:b]) for a, b in zip(bounds, bounds[1:])) == best:
            optimal.append([b - a for a, b in zip(bounds, bounds[1:])])
    assert [len(p.target_indices) for p in parts] == max(optimal)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=12), st.integers(1, 4))
def test_regex_partitions_need_not_be_contiguous(labels, n_regex):
    labels = [x % n_regex for x in labels]
    targets = fake_targets([(f"g{lab}.m{i}.weight", 1) for i, lab in enumerate(labels)])
    regexes = [rf"^g{j}\." for j in range(n_regex)]
    if set(labels) != set(range(n_regex)):
        with pytest.raises(SparsityError, match="matches no target"):
            partition_targets(targets, regexes)
        return
    parts = partition_targets(targets, regexes)
    _check_invariants(parts, targets, contiguous=False)
    for j, p in enumerate(parts):
        assert all(n.startswith(f"g{j}.") for n in p.target_names)


# ---- errors -----------------------------------------------------------------------------------
def test_scheme_errors(small):
    _, targets = small
    with pytest.raises(SparsityError, match=r"partition scheme 'rows' is unknown; valid: 'layers', 'balanced', "
                       r"'blocks', 'stages', 'resnet_stages', .*'pointnet2_4', 'ssd_2', 'ssd_3', 'ssd_4', or a list of regexes"):
        partition_targets(targets, "rows", 2)
    with pytest.raises(SparsityError, match=r"partition scheme 5 must be a scheme name or a list of regexes"):
        partition_targets(targets, 5, 2)
    with pytest.raises(SparsityError, match="must be a scheme name"):
        partition_targets(targets, b"layers", 2)
    assert set(SCHEMES) == {"layers", "balanced", "blocks", "stages"}
    assert set(PRESETS) == {"resnet_stages", "resnet50_blocks", "transformer_2", "transformer_3", "transformer_3_forward",
                            "transformer_6", "pointnet2_2", "pointnet2_3", "pointnet2_4", "ssd_2", "ssd_3", "ssd_4"}


@pytest.mark.parametrize("kappa", [0, -1, True, 1.5, "2"])
def test_kappa_type_errors(small, kappa):
    _, targets = small
    with pytest.raises(SparsityError, match=rf"kappa={re.escape(repr(kappa))} must be an integer >= 1"):
        partition_targets(targets, "layers", kappa)


def test_kappa_range_errors(small):
    _, targets = small
    with pytest.raises(SparsityError, match=r"kappa=17 exceeds the 16 targets \(valid: 1\.\.16\)"):
        partition_targets(targets, "layers", 17)
    with pytest.raises(SparsityError, match=r"kappa=17 exceeds the 16 targets"):
        partition_targets(targets, "balanced", 17)
    with pytest.raises(SparsityError, match=r"kappa=7 exceeds the 6 blocks of these targets \(valid: 1\.\.6\)"):
        partition_targets(targets, "blocks", 7)
    for scheme, what in (("layers", "1..16"), ("balanced", "1..16"), ("blocks", "1..6")):
        with pytest.raises(SparsityError, match=rf"scheme '{scheme}' needs kappa, an integer in {re.escape(what)} \(the number of (targets|blocks)\)"):
            partition_targets(targets, scheme)
    with pytest.raises(SparsityError, match=r"kappa=4 does not match the 3 stages of these targets "
                       r"\('layer1', 'layer2', 'layer3'\); scheme 'stages' makes one partition per stage"):
        partition_targets(targets, "stages", 4)
    with pytest.raises(SparsityError, match=r"kappa=4 does not match the 3 partition regexes of preset 'transformer_3'"):
        partition_targets(targets, "transformer_3", 4)
    with pytest.raises(SparsityError, match=r"kappa=3 does not match the 2 partition regexes of the regex list"):
        partition_targets(targets, [r"^layer1", r"."], 3)


def test_unnumbered_targets_errors():
    targets = fake_targets([("stem.weight", 3), ("head.weight", 2)])
    for scheme, what in (("blocks", "blocks"), ("stages", "stages")):
        with pytest.raises(SparsityError, match=rf"scheme '{scheme}' found 0 {what} in these 2 targets"):
            partition_targets(targets, scheme, 1)
    assert len(partition_targets(targets, "layers", 2)) == 2


def test_target_list_errors():
    with pytest.raises(SparsityError, match="there are no targets to partition"):
        partition_targets([], "layers", 1)
    targets = fake_targets([("a.0.w", 1), ("a.0.w", 1)])
    with pytest.raises(SparsityError, match=r"target 'a\.0\.w' is listed twice"):
        partition_targets(targets, "layers", 1)


def test_regex_errors(small):
    _, targets = small
    with pytest.raises(SparsityError, match=r"target 'conv1\.weight' matches none of the 2 partition regexes of the regex list"):
        partition_targets(targets, [r"^layer", r"^fc\."])
    with pytest.raises(SparsityError, match=r"target 'layer1\.0\.conv1\.weight' matches partition regexes 0 \('\^layer1'\) "
                       r"and 2 \('conv'\) of the regex list; each target must match exactly one"):
        partition_targets(targets, [r"^layer1", r"^(layer[23]|fc)", r"conv"])
    with pytest.raises(SparsityError, match=r"partition regex 2 \('\^layer9'\) of the regex list matches no target"):
        partition_targets(targets, [r"^(conv1|layer1)", r"^(layer[23]|fc)", r"^layer9"])
    with pytest.raises(SparsityError, match=r"partition regex 1 \('\('\) of the regex list is not a valid regex"):
        partition_targets(targets, [r".", r"("])
    with pytest.raises(SparsityError, match=r"partition regex 0 of the regex list is 3; regexes must be strings"):
        partition_targets(targets, [3])
    with pytest.raises(SparsityError, match="the partition regex list is empty"):
        partition_targets(targets, [])
    parts = partition_targets(targets, (r"^(conv1|layer1)\.", r"^(layer[23]|fc)\."), 2)
    assert [len(p.target_indices) for p in parts] == [5, 11]


def test_partition_and_ownership_errors(small):
    with pytest.raises(SparsityError, match="partition P2 is empty"):
        Partition(1, (), (), 0)
    with pytest.raises(SparsityError, match="partition P1 has 2 indices but 1 names"):
        Partition(0, (0, 1), ("a",), 0)
    overlapping = [Partition(0, (0,), ("a.0.w",), 1), Partition(1, (0,), ("a.0.w",), 1)]
    with pytest.raises(SparsityError, match=r"target 'a\.0\.w' is in partitions P1 and P2; partitions must be disjoint"):
        ownership(["a.0.b"], overlapping)
    assert Partition(0, (0,), ("fc.weight",), 10).label == "P1 (fc, 1 tensor, 10 weights)"
