import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsetrain
from sparsetrain.sparsity import SparsityError


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 20), nn.Linear(20, 4))


@given(
    method=st.sampled_from(["gp", "gpmt", "uniform", "erk", "profile"]),
    sparsity=st.floats(0.0, 0.999),
    seed=st.integers(0, 500),
    widths=st.lists(st.integers(1, 40), min_size=2, max_size=6),
)
def test_pruned_count_equals_budget(method, sparsity, seed, widths):
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
    arg = {r"^0\.": sparsity, ".*": sparsity / 2} if method == "profile" and len(widths) > 2 else sparsity
    if method == "profile" and len(widths) == 2:
        arg = {".*": sparsity}
    try:
        masks = sparsetrain.prune(model, arg, method=method, min_threshold=2.0 if method == "gpmt" else None)
    except SparsityError as err:
        assert method == "gpmt" and "unreachable" in str(err)
        return
    pruned = [m.numel() - k for m, k in zip(masks.masks, masks.kept_counts())]
    assert pruned == masks.target_counts
    if method in ("gp", "gpmt", "erk"):
        assert sum(pruned) == round(sparsity * masks.numel())
    weights_zero = sum(int((p.detach() == 0).sum()) for p in masks.params)
    assert weights_zero >= sum(pruned)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, r"sparsity=1\.0 is outside \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity=-0\.1 is outside \[0, 1\)"),
        ({"sparsity": math.nan}, r"sparsity=nan is outside \[0, 1\)"),
        ({"sparsity": "0.5"}, r"sparsity='0\.5' must be a number in \[0, 1\)"),
        ({"sparsity": 0.5, "method": "magnitude"}, "method='magnitude' is not one of gp, gpmt, uniform, erk, profile, random"),
        ({"sparsity": 0.5, "method": "gpmt", "min_threshold": -1}, r"min_threshold=-1 is outside \[0, 100\]"),
        ({"sparsity": 0.5, "min_threshold": 0.05}, "min_threshold=0.05 only applies to method='gpmt'"),
        ({"sparsity": 0.5, "include": "nomatch"}, "include selector 'nomatch' matches no parameter"),
        ({"sparsity": 0.5, "exclude": ".*"}, "the selection holds no prunable parameter"),
        ({"sparsity": 0.5, "method": "profile"}, "method='profile' needs sparsity as"),
    ],
)
def test_bad_input_gives_one_line_errors(kwargs, message):
    with pytest.raises(SparsityError, match=message) as info:
        sparsetrain.prune(_model(), **kwargs)
    assert "\n" not in str(info.value)


def test_nan_weights_are_named_and_nothing_is_modified():
    model = _model()
    with torch.no_grad():
        model[2].weight[3, 4] = math.nan
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SparsityError, match="2.weight holds NaN or inf"):
        sparsetrain.prune(model, 0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) or torch.isnan(value).any()


def test_gpmt_default_threshold_and_dense_small_layers():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(100, 100, bias=False))  # 8 + 10,000 weights
    masks = sparsetrain.prune(model, 0.9, method="gpmt", min_threshold=1.0)  # floor = 100 weights
    assert masks.kept_counts()[0] == 8  # smaller than the floor: dense
    assert masks.pruned_count() == round(0.9 * 10_008)


def test_pruning_an_already_sparse_model_further():
    model = _model()
    first = sparsetrain.prune(model, 0.5)
    second = sparsetrain.prune(model, 0.8)
    for a, b in zip(first.masks, second.masks):
        assert not (b & ~a).any()  # magnitude order keeps earlier zeros pruned
    assert second.pruned_count() == round(0.8 * second.numel())


def test_random_pruning_is_seeded_and_exact():
    a, b, c = _model(), _model(), _model()
    ma = sparsetrain.prune(a, 0.6, method="random", seed=3)
    mb = sparsetrain.prune(b, 0.6, method="random", seed=3)
    mc = sparsetrain.prune(c, 0.6, method="random", seed=4)
    assert ma.checksum() == mb.checksum() != mc.checksum()
    assert [m.numel() - k for m, k in zip(ma.masks, ma.kept_counts())] == [round(0.6 * m.numel()) for m in ma.masks]
