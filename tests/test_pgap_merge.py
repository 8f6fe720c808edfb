"""P-GaP merge ownership: every norm comes from the worker that grew the conv feeding it.

Issue 11, section 2. The feeders below are written out by hand per model family (from the model
layouts in their module docstrings), so the tests check :func:`norm_feeders` and
:func:`ownership` against an independent statement of the rule, for every partition scheme.
"""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from torch import nn

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.models import build_model
from sparsetrain.runner import pgap_rounds
from sparsetrain.runner.train import run
from sparsetrain.sparsity import (
    norm_feeders,
    ownership,
    partition_targets,
    select_targets,
    split_block_notes,
    split_blocks,
)
from sparsetrain.sparsity.partitions import block_key

BN = nn.modules.batchnorm._BatchNorm


# ---- hand-written feeders ---------------------------------------------------------------------
def resnet_feeder(norm: str) -> str | None:
    """torchvision layout (ResNet-50, small_resnet): ``bn1`` <- ``conv1``, ``X.bnK`` <- ``X.convK``,
    ``X.downsample.1`` <- ``X.downsample.0``."""
    if norm.endswith("downsample.1"):
        return norm[:-1] + "0"
    head, _, leaf = norm.rpartition(".")
    assert re.fullmatch(r"bn\d", leaf), norm
    return (head + "." if head else "") + "conv" + leaf[2:]


def wrn_feeder(norm: str) -> str | None:
    """Pre-activation WRN: only ``bn2`` is fed by a conv (its block's ``conv1``); a block's ``bn1``
    and the head ``bn1`` normalise residual sums."""
    return norm[:-3] + "conv1" if norm.endswith(".bn2") else None


def mobilenet_feeder(norm: str) -> str | None:
    """``model.i.1`` <- ``model.i.0`` (stem / depthwise), ``model.i.4`` <- ``model.i.3`` (pointwise)."""
    head, _, leaf = norm.rpartition(".")
    conv = {"1": "0", "4": "3"}[leaf]
    return f"{head}.{conv}"


def _meta(name: str, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    with torch.device("meta"):  # structure and names only: no memory, no init cost
        return build_model(name, input_shape=input_shape, num_classes=num_classes, **options)


MODELS = {
    "resnet50": (lambda: _meta("resnet50", (3, 224, 224), 1000), resnet_feeder),
    "demo": (lambda: _meta("small_resnet", (1, 40), 10, width=8), resnet_feeder),
    "wrn": (lambda: _meta("wide_resnet", (3, 32, 32), 10, depth=16, widen_factor=2), wrn_feeder),
    "mobilenet": (lambda: _meta("mobilenet_v1", (3, 224, 224), 1000), mobilenet_feeder),
}

SCHEMES_FOR = {  # (scheme, kappa) per model; every scheme, several kappas where kappa is free
    "resnet50": [("layers", k) for k in (2, 3, 4, 6)] + [("balanced", k) for k in (2, 3, 4, 6)]
    + [("blocks", k) for k in (2, 3, 4, 6)] + [("stages", None), ("resnet_stages", None), ("resnet50_blocks", None)],
    "demo": [("layers", k) for k in (2, 3, 4, 6)] + [("balanced", k) for k in (2, 3, 4)]
    + [("blocks", k) for k in (2, 3)] + [("stages", None), ("resnet_stages", None)],
    "wrn": [("layers", k) for k in (2, 3, 4, 5)] + [("balanced", k) for k in (2, 3, 4)]
    + [("blocks", k) for k in (2, 3, 6)] + [("stages", None), ([r"^(conv1|block1)\.", r"^block2\.", r"^(block3|fc)\."], None)],
    "mobilenet": [("layers", k) for k in (2, 3, 4, 6)] + [("balanced", k) for k in (2, 3, 4, 6)]
    + [("blocks", k) for k in (2, 3, 4, 6)] + [("stages", None)],
}


@pytest.fixture(scope="module")
def models():
    return {name: (build(), feeder) for name, (build, feeder) in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_norm_feeders_match_the_model_layouts(models, name):
    model, feeder = models[name]
    norms = [n for n, m in model.named_modules() if isinstance(m, BN)]
    expected = {n: feeder(n) for n in norms if feeder(n) is not None}
    assert norm_feeders(model) == expected
    if name != "wrn":
        assert len(expected) == len(norms)  # every BN of a post-activation net has its conv
    else:
        assert len(expected) == 6 and "bn1" not in expected  # WRN-16-2: one bn2 per block


def _first_target_partition(parts) -> dict[str, int]:
    first: dict[str, int] = {}
    for _, p_index, name in sorted((i, p.index, n) for p in parts for i, n in zip(p.target_indices, p.target_names)):
        first.setdefault(block_key(name), p_index)
    return first


@pytest.mark.parametrize("name, scheme, kappa",
                         [(name, s, k) for name, cases in SCHEMES_FOR.items() for s, k in cases])
def test_every_tensor_comes_from_the_worker_of_its_conv(models, name, scheme, kappa):
    model, feeder = models[name]
    targets = select_targets(model)
    parts = partition_targets(targets, scheme, kappa)
    keys = list(model.state_dict())
    owners = ownership(keys, parts, model=model)
    assert list(owners) == keys
    of_target = {n: p.index for p in parts for n in p.target_names}
    first = _first_target_partition(parts)
    modules = dict(model.named_modules())
    for key in keys:
        path, _, leaf = key.rpartition(".")
        module = modules[path]
        if key in of_target:  # 1. a target: its partition
            assert owners[key] == of_target[key], key
        elif isinstance(module, BN) and feeder(path) is not None:  # 2. a norm: the conv feeding it
            assert owners[key] == owners[feeder(path) + ".weight"] == of_target[feeder(path) + ".weight"], key
        elif isinstance(module, (nn.Conv2d, nn.Linear)):  # 2. a bias: its layer
            assert leaf == "bias" and owners[key] == owners[path + ".weight"], key
        elif block_key(key) in first:  # 3. its block: the partition of the block's first target
            assert owners[key] == first[block_key(key)], key
        else:  # 4. no block with a target: no partition (the merge takes it from P1's worker)
            assert owners[key] is None, key
    unowned = {k for k, v in owners.items() if v is None}
    assert unowned == ({"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"}
                       if name == "wrn" else set())  # only WRN's head norm (after block3's residual sum)


@pytest.mark.parametrize("scheme, kappa, block", [("layers", 4, "layer2.0"), ("layers", 6, "layer1.2"),
                                                  ("balanced", 3, "layer4.0"), ("balanced", 4, "layer3.4")])
def test_resnet50_blocks_the_old_rule_merged_from_two_workers(models, scheme, kappa, block):
    # The old rule gave a block's norms the partition of the block's *last* target; these blocks are
    # split, so bn1 came from another worker than conv1 (issue 11). Now each norm follows its conv.
    model, _ = models["resnet50"]
    parts = partition_targets(select_targets(model), scheme, kappa)
    owners = ownership(list(model.state_dict()), parts, model=model)
    assert owners[f"{block}.bn1.running_var"] == owners[f"{block}.conv1.weight"]
    _, last = max((i, p.index) for p in parts for i, n in zip(p.target_indices, p.target_names)
                  if block_key(n) == block)
    assert owners[f"{block}.conv1.weight"] != last  # the old owner of bn1 was another worker
    assert any(key == block for key, _ in split_blocks(parts))
    for k in (2, 3):
        assert owners[f"{block}.bn{k}.weight"] == owners[f"{block}.conv{k}.weight"]


def test_without_a_model_norms_fall_back_to_their_block(models):
    model, _ = models["demo"]
    parts = partition_targets(select_targets(model), "layers", 4)
    owners = ownership(list(model.state_dict()), parts)
    assert owners["fc.bias"] == owners["fc.weight"] == 3  # a layer's bias needs no model
    assert owners["layer3.0.downsample.1.weight"] == 2  # no pairing: the block's first target (conv1, P3)
    assert owners["bn1.weight"] is None
    assert ownership(list(model.state_dict()), parts, model=model)["layer3.0.downsample.1.weight"] == 3


def test_split_block_notes(models):
    model, _ = models["demo"]
    targets = select_targets(model)
    assert split_block_notes(partition_targets(targets, "layers", 4)) == [
        "note: P3/P4 split block layer3.0 (conv1, conv2 in P3; downsample.0 in P4)"]
    assert split_block_notes(partition_targets(targets, "blocks", 3)) == []
    r50 = select_targets(models["resnet50"][0])
    for scheme in ("blocks", "stages", "resnet_stages", "resnet50_blocks"):
        assert split_blocks(partition_targets(r50, scheme, 4 if scheme == "blocks" else None)) == []
    notes = split_block_notes(partition_targets(r50, "layers", 6))
    assert "note: P1/P2 split block layer1.2 (conv1 in P1; conv2, conv3 in P2)" in notes
    assert all(re.fullmatch(r"note: P\d(/P\d)+ split block layer\d\.\d \(.+ in P\d(; .+ in P\d)+\)", n) for n in notes)


# ---- a real P-GaP run ---------------------------------------------------------------------------
PGAP_CONFIG = {
    "seed": 2,
    "threads": 1,
    "task": {"dataset": {"name": "mnist1d", "options": {"num_samples": 300}},
             "model": {"name": "small_resnet", "options": {"width": 8}}},
    "data": {"batch_size": 48},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "training": {"progress": False},
    # the demo's partitions: layers, kappa 4 splits layer3.0 (conv1, conv2 in P3; downsample.0 in P4)
    "stages": [{"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 4},
                "epochs_per_step": 1, "rounds": 1, "finetune_epochs": 1}],
}

HAND_OWNERS = (  # module prefix -> the worker (partition) it is merged from, written out by hand
    ("conv1.", 0), ("bn1.", 0), ("layer1.0.", 0),
    ("layer2.0.", 1),
    ("layer3.0.conv1.", 2), ("layer3.0.bn1.", 2), ("layer3.0.conv2.", 2), ("layer3.0.bn2.", 2),
    ("layer3.0.downsample.", 3), ("fc.", 3),
)


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


def test_pgap_merge_equals_the_hand_assembled_model(tmp_path, monkeypatch, capsys):
    path = tmp_path / "pgap.yaml"
    path.write_text(yaml.safe_dump(dict(PGAP_CONFIG, name="pgap", output_dir=str(tmp_path / "run"))))
    assert main(["plan", str(path)]) == 0
    assert "note: P3/P4 split block layer3.0 (conv1, conv2 in P3; downsample.0 in P4)" in capsys.readouterr().out

    workers: dict[int, dict[str, torch.Tensor]] = {}  # each worker's model at the end of its epochs
    merged: list[dict[str, torch.Tensor]] = []
    start_worker, merge = pgap_rounds._start_worker, pgap_rounds._merge

    def capture_start(run_, span, round_index, worker):
        if worker > 0:  # the model still holds the previous worker's trained state
            workers[worker - 1] = _clone(run_.model.state_dict())
        start_worker(run_, span, round_index, worker)

    def capture_merge(run_, span, round_index, owners, groups):
        workers[span.gap.kappa - 1] = _clone(run_.model.state_dict())
        merge(run_, span, round_index, owners, groups)
        merged.append(_clone(run_.model.state_dict()))

    monkeypatch.setattr(pgap_rounds, "_start_worker", capture_start)
    monkeypatch.setattr(pgap_rounds, "_merge", capture_merge)
    result = run(load_config(path), log=lambda line: None)

    parts = partition_targets(select_targets(result.model), "layers", 4)
    assert [len(p.target_indices) for p in parts] == [3, 3, 2, 2]  # what HAND_OWNERS spells out
    assert sorted(workers) == [0, 1, 2, 3] and len(merged) == 1
    assembled = {}
    for key in merged[0]:
        owner = next(w for prefix, w in HAND_OWNERS if key.startswith(prefix))
        assembled[key] = workers[owner][key]
    assert assembled.keys() == merged[0].keys()
    for key, value in merged[0].items():
        assert torch.equal(value, assembled[key]), key
    # the workers really differ where the old rule went wrong (layer3.0's norms came from P4's worker)
    for key in ("layer3.0.bn1.running_mean", "layer3.0.bn2.weight"):
        assert not torch.equal(workers[2][key], workers[3][key]), key
