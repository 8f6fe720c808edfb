"""Masking gradients before optimizer.step(): pruned weights and optimizer state stay exactly zero, and the kept
weights follow exactly the trajectory of the post-step enforcement, for every optimizer of the SGD/Adam family."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsetrain.sparsity import MaskSet, Sparsifier, select_targets

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True),
}


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _masks(model: nn.Module, seed: int, sparsity: float) -> MaskSet:
    g = torch.Generator().manual_seed(seed)
    targets = select_targets(model)
    return MaskSet(targets, [torch.rand(t.shape, generator=g) >= sparsity for t in targets])


def _train(name: str, seed: int, sparsity: float, steps: int, route: str, clip: float | None = None):
    model = _model(seed)
    masks = _masks(model, seed + 1, sparsity)
    sparsifier = Sparsifier(model, masks)
    optimizer = OPTIMIZERS[name](model.parameters())
    g = torch.Generator().manual_seed(seed + 2)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(5, 2, 6, 6, generator=g)
        y = torch.randint(0, 3, (5,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        if route == "grads":
            sparsifier.mask_grads()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if route == "weights":
            sparsifier.step(optimizer)
        if route == "grads":
            for target, mask in zip(masks.targets, masks.masks):
                assert not target.param.detach()[~mask].any(), (name, target.name)
                for value in optimizer.state[target.param].values():
                    if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                        assert not value[~mask].any(), (name, target.name)
    return model, masks


@given(name=st.sampled_from(sorted(OPTIMIZERS)), seed=st.integers(0, 2**16), sparsity=st.sampled_from([0.3, 0.8, 0.95]),
       steps=st.integers(1, 6))
def test_masked_gradients_keep_pruned_weights_and_state_zero_on_the_same_trajectory(name, seed, sparsity, steps):
    ours, masks = _train(name, seed, sparsity, steps, "grads")
    reference, _ = _train(name, seed, sparsity, steps, "weights")
    for (key, value), other in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(value, other), (name, key)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_clipping_sees_the_masked_gradients(name):
    """With clipping the norm is over masked gradients (the trajectory differs from post-step enforcement, by
    design), and pruned weights and state still stay zero (checked inside _train)."""
    _train(name, seed=3, sparsity=0.8, steps=4, route="grads", clip=0.05)


def test_non_finite_pruned_gradients_become_zero_and_kept_bits_are_untouched():
    model = _model(0)
    masks = _masks(model, 1, 0.5)
    sparsifier = Sparsifier(model, masks)
    for target, mask in zip(masks.targets, masks.masks):
        grad = torch.randn(target.shape)
        grad[~mask] = float("nan")
        grad.view(-1)[0] = float("inf")
        target.param.grad = grad.clone()
        sparsifier.mask_grads()
        assert torch.equal(target.param.grad[~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(target.param.grad[mask], grad[mask])  # inf included, bit for bit


def test_a_changed_mask_is_used_at_the_next_call():
    """The cached integer masks follow set_, grow_ and in-place writes to a mask."""
    model = _model(0)
    masks = _masks(model, 1, 0.9)
    sparsifier = Sparsifier(model, masks)

    def masked_grad_zeros() -> list[torch.Tensor]:
        for target in masks.targets:
            target.param.grad = torch.ones(target.shape)
        sparsifier.mask_grads()
        return [target.param.grad == 0 for target in masks.targets]

    assert all(torch.equal(z, ~m) for z, m in zip(masked_grad_zeros(), masks.masks))
    masks.grow_([0])
    assert not masked_grad_zeros()[0].any()
    new = torch.zeros(masks.targets[1].shape, dtype=torch.bool)
    new.view(-1)[:7] = True
    masks.set_(1, new)
    assert torch.equal(masked_grad_zeros()[1], ~new)
    masks.masks[1].view(-1)[7] = True  # a method writing into the mask in place
    assert not masked_grad_zeros()[1].view(-1)[7]


def test_the_runner_zeroes_pruned_weights_at_each_event_whatever_the_method_did(tmp_path, monkeypatch):
    """The step masks only gradients, so the runner itself zeroes the pruned weights after every mask event: a
    method that sets masks without zeroing its weights (here GP, made to put the old values back) still ends with
    exactly zero pruned weights."""
    import yaml
    from conftest import assert_pruned_weights_zero
    from tiny_config import tiny_config

    from sparsetrain.config import load_config
    from sparsetrain.methods import oneshot
    from sparsetrain.runner.train import run

    real = oneshot.apply

    def forgetful(event, masks, ctx=None):
        before = [t.param.detach().clone() for t in masks.targets]
        real(event, masks, ctx)
        for target, values in zip(masks.targets, before):
            target.param.data.copy_(values)  # the masks changed, the weights did not

    monkeypatch.setattr(oneshot, "apply", forgetful)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(output_dir=str(tmp_path / "run"))))
    result = run(load_config(path), log=lambda line: None)
    assert result.masks is not None and not all(bool(m.all()) for m in result.masks.masks)
    assert_pruned_weights_zero(result.masks)


def test_the_runner_clips_masked_gradients(tmp_path, monkeypatch):
    """In the runner's step, training.grad_clip sees the gradients after masking: at every clip after the prune
    event, the gradient at every pruned (zero) weight is already zero."""
    import yaml
    from tiny_config import tiny_config

    from sparsetrain.config import load_config
    from sparsetrain.runner.train import run

    real = nn.utils.clip_grad_norm_
    pruned_seen = []

    def checking(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        for p in parameters:
            if p.dim() == 2 and p.grad is not None:
                zero = p.detach() == 0
                pruned_seen.append(int(zero.sum()))
                assert not p.grad[zero].any()
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", checking)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(output_dir=str(tmp_path / "run"), training={"progress": False,
                                                                                           "grad_clip": 0.5})))
    run(load_config(path), log=lambda line: None)
    assert max(pruned_seen) > 0  # the fine-tuning steps after GP 0.5 were checked
