"""Token-budget batching: every pair once per epoch over all ranks, budgets kept, whole steps, determinism."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.data.token_batching import step_batches, token_batches, whole_steps
from sparsetrain.errors import UserError

lengths = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(pairs=lengths, max_tokens=st.integers(40, 300), update_freq=st.sampled_from([1, 2, 4]),
       world=st.sampled_from([1, 2, 4]), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_every_pair_once_per_epoch_across_ranks_with_equal_steps(pairs, max_tokens, update_freq, world, seed, epoch):
    if update_freq % world:
        world = 1
    src, tgt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    batches = token_batches(src, tgt, max_tokens, seed)
    for batch in batches:  # the padded cost of a batch stays within the budget
        assert len(batch) * max(max(src[i], tgt[i]) for i in batch) <= max_tokens
    try:
        batches = whole_steps(batches, update_freq)
    except UserError:  # only when halving cannot reach a multiple: none between the batch and the pair counts
        assert not any(k % update_freq == 0 for k in range(len(batches), len(pairs) + 1))
        return
    assert len(batches) % update_freq == 0
    per_rank = [step_batches(batches, tgt, update_freq, seed, epoch, rank=r, world_size=world) for r in range(world)]
    steps = {len(micro) for micro, _ in per_rank}
    assert steps == {len(batches) // update_freq}  # every rank takes the same number of steps
    seen = [i for micro, _ in per_rank for step in micro for batch in step for i in batch]
    assert sorted(seen) == list(range(len(pairs)))  # each pair exactly once over all ranks
    for rank, (micro, tokens) in enumerate(per_rank):
        assert all(len(step) == update_freq // world for step in micro)
        assert tokens == per_rank[0][1]  # the step's global target tokens, the same on every rank
    for i in range(len(per_rank[0][0])):  # and they count the whole step's target tokens
        assert per_rank[0][1][i] == sum(int(tgt[j]) for micro, _ in per_rank for b in micro[i] for j in b)


def test_the_order_depends_only_on_seed_epoch_and_stream():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    batches = whole_steps(token_batches(src, tgt, 128, seed=3), 2)
    first = step_batches(batches, tgt, 2, seed=3, epoch=1)
    assert first == step_batches(batches, tgt, 2, seed=3, epoch=1)
    assert first != step_batches(batches, tgt, 2, seed=3, epoch=2)
    assert first != step_batches(batches, tgt, 2, seed=3, epoch=1, stream=1)
    assert token_batches(src, tgt, 128, seed=3) == token_batches(src, tgt, 128, seed=3)


def test_batches_are_length_bucketed():
    src = np.array([5, 30, 6, 29, 5, 31, 6, 30])
    batches = token_batches(src, src, 64, seed=0)
    assert sorted(sorted(src[b].tolist()) for b in batches) == [[5, 5, 6, 6], [29, 30], [30, 31]]


def test_bad_budgets_are_one_line_errors_naming_the_value():
    with pytest.raises(UserError, match=r"sentence pair 1 has 50 tokens, more than max_tokens=40"):
        token_batches([3, 50], [3, 2], 40, seed=0)
    with pytest.raises(UserError, match="update_freq=3 token batches per step are divided among WORLD_SIZE=2"):
        step_batches([[0], [1], [2]], [1, 1, 1], 3, 0, 0, rank=0, world_size=2)
    with pytest.raises(UserError, match="update_freq=2: 3 batches of single sentence pairs"):
        whole_steps([[0], [1], [2]], 2)
