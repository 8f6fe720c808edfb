import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsetrain
from sparsetrain.sparsity import MaskSet, SparsityError, select_targets


def _model(seed=0, sizes=(7, 5, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])


@given(
    sizes=st.lists(st.integers(1, 30), min_size=2, max_size=5),
    seed=st.integers(0, 1000),
    sparsity=st.floats(0.0, 0.95),
)
def test_state_dict_round_trip_is_exact(sizes, seed, sparsity):
    model = _model(seed, tuple(sizes))
    masks = sparsetrain.prune(model, sparsity, method="gp")
    state = masks.state_dict()
    assert all(b.dtype == torch.uint8 for b in state["bits"])
    fresh = MaskSet(select_targets(_model(seed, tuple(sizes))))
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(masks.masks, fresh.masks))
    assert fresh.checksum() == masks.checksum()
    assert fresh.target_counts == masks.target_counts


def test_state_dict_survives_torch_save(tmp_path):
    model = _model()
    masks = sparsetrain.prune(model, 0.5)
    torch.save(masks.state_dict(), tmp_path / "m.pt")
    fresh = MaskSet(select_targets(_model()))
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert fresh.checksum() == masks.checksum()


def test_checksum_changes_with_a_single_bit():
    masks = MaskSet(select_targets(_model()))
    before = masks.checksum()
    masks.masks[1][0, 0] = False
    assert masks.checksum() != before


def test_mismatched_state_is_refused_with_the_layer_named():
    state = MaskSet(select_targets(_model(sizes=(7, 5, 3)))).state_dict()
    with pytest.raises(SparsityError, match=r"shape \(4, 5\) for '1.weight' does not match \(3, 5\)"):
        state_bad = dict(state, shapes=[[5, 7], [4, 5]])
        MaskSet(select_targets(_model(sizes=(7, 5, 3)))).load_state_dict(state_bad)
    with pytest.raises(SparsityError, match="target 1 is '<missing>' but this model's target 1 is '1.weight'"):
        MaskSet(select_targets(_model(sizes=(7, 5, 3)))).load_state_dict(
            dict(state, names=state["names"][:1])
        )
    with pytest.raises(SparsityError, match="version 7 is not supported"):
        MaskSet(select_targets(_model())).load_state_dict(dict(state, version=7))
    with pytest.raises(SparsityError, match="holds 1 bytes, expected 2"):
        MaskSet(select_targets(_model())).load_state_dict(dict(state, bits=[state["bits"][0], state["bits"][1][:1]]))


def test_bad_masks_are_refused():
    targets = select_targets(_model())
    with pytest.raises(SparsityError, match="must be bool of shape"):
        MaskSet(targets, [torch.ones(5, 7), torch.ones(3, 5, dtype=torch.bool)])
    with pytest.raises(SparsityError, match="got 1 masks for 2 targets"):
        MaskSet(targets, [torch.ones(5, 7, dtype=torch.bool)])


def test_table_and_sparsities():
    model = _model(sizes=(10, 10, 10))  # 200 target weights, 220 parameters
    masks = sparsetrain.prune(model, 0.25, method="uniform")
    rows = masks.table()
    assert [(r.name, r.numel, r.kept, r.sparsity, r.target) for r in rows] == [
        ("0.weight", 100, 75, 0.25, 0.25),
        ("1.weight", 100, 75, 0.25, 0.25),
    ]
    assert masks.sparsity() == 0.25
    assert masks.sparsity_over_parameters() == 50 / 220
    text = masks.format_table()
    assert "0.weight" in text and "25.00%" in text and "220 parameters: 22.73%" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_is_dtype_agnostic(dtype):
    model = _model().to(dtype)
    masks = sparsetrain.prune(model, 0.6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    masks.apply_()
    for mask, param in zip(masks.masks, masks.params):
        assert param.dtype == dtype
        assert (param[~mask] == 0).all() and (param[mask] != 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_match_cpu_masks():
    cpu = _model(seed=3, sizes=(300, 200, 100))
    gpu = _model(seed=3, sizes=(300, 200, 100)).cuda()
    a = sparsetrain.prune(cpu, 0.9, method="gpmt", min_threshold=1.0)
    b = sparsetrain.prune(gpu, 0.9, method="gpmt", min_threshold=1.0)
    assert a.checksum() == b.checksum()
    assert all(m.is_cuda for m in b.masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_enforce_equals_apply_then_mask_optimizer_state(dtype):
    results = []
    for fused in (False, True):
        model = _model(seed=4, sizes=(9, 6, 4)).to(dtype)
        masks = sparsetrain.prune(model, 0.5)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model(torch.randn(3, 9, dtype=dtype)).sum().backward()
        opt.step()
        if fused:
            masks.enforce_(opt)
        else:
            masks.apply_()
            masks.mask_optimizer_state_(opt)
        results.append([p.detach().clone() for p in model.parameters()] +
                       [v.clone() for p in model.parameters() for v in opt.state[p].values() if v.dim()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
