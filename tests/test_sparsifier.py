"""Pruned weights and their optimizer state stay exactly zero through training."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsetrain
from sparsetrain.sparsity import SparsityError

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True),
}


def _conv_net(channels: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(channels * 16, hidden), nn.ReLU(),
        nn.Linear(hidden, 3),
    )


@given(
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    method=st.sampled_from(["gp", "gpmt", "uniform", "erk"]),
    sparsity=st.floats(0.0, 0.95),
    steps=st.integers(1, 6),
    channels=st.integers(1, 6),
    hidden=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_pruned_weights_and_optimizer_state_stay_zero(optimizer, method, sparsity, steps, channels, hidden, seed):
    torch.manual_seed(seed)
    model = _conv_net(channels, hidden)
    masks = sparsetrain.prune(model, sparsity, method=method, min_threshold=1.0 if method == "gpmt" else None)
    sparsifier = sparsetrain.Sparsifier(model, masks)
    opt = OPTIMIZERS[optimizer](model.parameters())
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sparsifier.step(opt)
        for mask, param in zip(masks.masks, masks.params):
            assert torch.count_nonzero(param[~mask]) == 0
            state_tensors = [v for v in opt.state[param].values() if torch.is_tensor(v) and v.shape == param.shape]
            assert state_tensors, "every optimizer here keeps a per-weight state"
            for value in state_tensors:
                assert torch.count_nonzero(value[~mask]) == 0
    assert masks.pruned_count() == sum(masks.target_counts)


def test_surviving_weights_train_exactly_as_with_masked_reference():
    """Kept weights follow the same trajectory as a hand-written mask-after-step loop."""
    torch.manual_seed(0)
    model = _conv_net(4, 8)
    reference = _conv_net(4, 8)
    reference.load_state_dict(model.state_dict())
    masks = sparsetrain.prune(model, 0.7)
    ref_masks = {name: mask.clone() for name, mask in zip(masks.names, masks.masks)}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in ref_masks:
                param.mul_(ref_masks[name])
    sparsifier = sparsetrain.Sparsifier(model, masks)
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_b = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(16, 2, 4, 4), torch.randint(0, 3, (16,))
    for _ in range(5):
        for net, opt in ((model, opt_a), (reference, opt_b)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        sparsifier.step(opt_a)
        with torch.no_grad():
            for name, param in reference.named_parameters():
                if name in ref_masks:
                    param.mul_(ref_masks[name])
                    opt_b.state[param]["momentum_buffer"].mul_(ref_masks[name])
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name


def test_state_dict_keys_are_unchanged_and_load_without_sparsetrain():
    model = _conv_net(3, 5)
    keys = list(model.state_dict())
    masks = sparsetrain.prune(model, 0.8)
    sparsetrain.Sparsifier(model, masks)
    assert list(model.state_dict()) == keys
    plain = _conv_net(3, 5)
    plain.load_state_dict(model.state_dict(), strict=True)
    zeros = sum(int((p == 0).sum()) for n, p in plain.named_parameters() if n in masks.names)
    assert zeros >= masks.pruned_count()


def test_sparsifier_refuses_masks_of_another_model():
    masks = sparsetrain.prune(_conv_net(2, 2), 0.5)
    with pytest.raises(SparsityError, match="not part of Sequential"):
        sparsetrain.Sparsifier(_conv_net(2, 2), masks)


def test_sparsifier_state_round_trip():
    torch.manual_seed(1)
    model = _conv_net(3, 5)
    sparsifier = sparsetrain.Sparsifier(model, sparsetrain.prune(model, 0.5))
    state = sparsifier.state_dict()
    other = _conv_net(3, 5)
    other.load_state_dict(model.state_dict())
    restored = sparsetrain.Sparsifier(other, sparsetrain.prune(other, 0.1))
    restored.load_state_dict(state)
    assert restored.masks.checksum() == sparsifier.masks.checksum()
