"""GP and uniform masks equal torch.nn.utils.prune's on models with distinct magnitudes."""

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import sparsetrain


def _random_model(seed: int, widths: list[int], conv_channels: int) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, conv_channels, 3), nn.Conv1d(conv_channels, conv_channels, 1)]
    layers += [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    return nn.Sequential(*layers)


def _distinct(model: nn.Module) -> bool:
    weights = torch.cat([m.weight.detach().abs().flatten() for m in model if hasattr(m, "weight")])
    return weights.unique().numel() == weights.numel()


models = st.builds(
    _random_model,
    seed=st.integers(0, 10_000),
    widths=st.lists(st.integers(1, 40), min_size=2, max_size=5),
    conv_channels=st.integers(1, 8),
)


@given(model=models, sparsity=st.floats(0.0, 0.99))
def test_gp_equals_global_unstructured(model, sparsity):
    assume(_distinct(model))
    reference = copy.deepcopy(model)
    masks = sparsetrain.prune(model, sparsity, method="gp")
    modules = [m for m in reference if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=sparsity
    )
    for mask, module in zip(masks.masks, modules):
        assert torch.equal(mask, module.weight_mask.bool())
    for ours, theirs in zip([m for m in model if hasattr(m, "weight")], modules):
        assert torch.equal(ours.weight, theirs.weight)


@given(model=models, sparsity=st.floats(0.0, 0.99))
def test_uniform_equals_per_layer_l1_unstructured(model, sparsity):
    assume(_distinct(model))
    reference = copy.deepcopy(model)
    masks = sparsetrain.prune(model, sparsity, method="uniform")
    modules = [m for m in reference if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for mask, module in zip(masks.masks, modules):
        torch_prune.l1_unstructured(module, "weight", amount=sparsity)
        assert torch.equal(mask, module.weight_mask.bool())


@pytest.mark.parametrize("method", ["gp", "uniform", "erk"])
def test_exact_counts_with_heavy_ties(method):
    model = nn.Sequential(nn.Linear(50, 40), nn.Linear(40, 30), nn.Linear(30, 5))
    with torch.no_grad():
        for m in model:
            m.weight.copy_(torch.randint(-2, 3, m.weight.shape).float())  # five values only
    masks = sparsetrain.prune(model, 0.7, method=method)
    assert [m.numel() - k for m, k in zip(masks.masks, masks.kept_counts())] == masks.target_counts
    if method != "uniform":
        assert masks.pruned_count() == round(0.7 * masks.numel())
