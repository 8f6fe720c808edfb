"""Token-budget batches of sentence pairs, as fairseq's ``--max-tokens`` makes them, made deterministic.

A batch holds sentence pairs of similar length: pairs are ordered by source length, then target
length (ties by a seeded permutation, fairseq's ``ordered_indices``), and cut greedily so that
``batch size x longest side in the batch`` (the padded tokens a batch costs) stays within
``max_tokens`` and, when given, the pair count within ``max_sentences``. Batches are made once per
run; each epoch visits them in an order that depends only on (seed, epoch, stream).

An optimizer step takes ``update_freq`` consecutive batches of that order (fairseq's
``--update-freq`` times its number of GPUs): under data parallelism rank ``r`` of ``W`` takes the
``r``-th of ``W`` equal runs of them, so every rank takes the same number of steps and the ranks'
union is the one-process step. To make every step whole, the batch list is first brought to a
multiple of ``update_freq`` by halving the batches with the most pairs (each half still within the
budget), so every pair is trained exactly once per epoch.

Hand-written because fairseq is not a dependency and its iterator is stateful (its epoch order
lives in an object); here the order is a pure function of the step, which exact resume and P-GaP's
worker streams rely on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UserError
from .batching import derived_seed


def token_batches(src_sizes: Sequence[int], tgt_sizes: Sequence[int], max_tokens: int, seed: int,
                  max_sentences: int | None = None) -> list[list[int]]:
    """Length-bucketed batches of pair indices (each pair once), in length order.

    ``src_sizes``/``tgt_sizes``: tokens per sentence, end-of-sentence included. A pair costs
    ``max(src, tgt)`` tokens; a batch of ``n`` pairs whose costliest pair costs ``c`` costs ``n * c``
    ``<= max_tokens``. A pair that alone exceeds ``max_tokens`` is an error naming it.
    """
    src = np.asarray(src_sizes, dtype=np.int64)
    tgt = np.asarray(tgt_sizes, dtype=np.int64)
    if src.shape != tgt.shape:
        raise UserError(f"{src.size} source sentences but {tgt.size} target sentences; they must pair up")
    if max_tokens < 1:
        raise UserError(f"max_tokens={max_tokens} must be >= 1")
    if max_sentences is not None and max_sentences < 1:
        raise UserError(f"max_sentences={max_sentences} must be >= 1 (or null: no limit)")
    cost = np.maximum(src, tgt)
    if cost.size and int(cost.max()) > max_tokens:
        worst = int(cost.argmax())
        raise UserError(f"sentence pair {worst} has {int(cost[worst])} tokens, more than max_tokens={max_tokens}; "
                        f"valid: max_tokens >= {int(cost.max())}, or drop longer pairs from the data")
    order = np.random.default_rng(seed).permutation(src.size)
    order = order[np.argsort(tgt[order], kind="stable")]
    order = order[np.argsort(src[order], kind="stable")]
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        longest_with = max(longest, int(cost[index]))
        full = (len(current) + 1) * longest_with > max_tokens or (
            max_sentences is not None and len(current) + 1 > max_sentences)
        if current and full:
            batches.append(current)
            current, longest_with = [], int(cost[index])
        current.append(index)
        longest = longest_with
    if current:
        batches.append(current)
    return batches


def whole_steps(batches: list[list[int]], update_freq: int) -> list[list[int]]:
    """``batches`` with the largest ones halved until their number is a multiple of ``update_freq``.

    The batch with the most pairs (the first of ties) splits into its first and second half, in place
    of it. Every pair stays in exactly one batch, and no batch grows.
    """
    result = [list(b) for b in batches]
    while len(result) % update_freq:
        largest = max(range(len(result)), key=lambda i: (len(result[i]), -i))
        batch = result[largest]
        if len(batch) < 2:
            raise UserError(f"update_freq={update_freq}: {len(result)} batches of single sentence pairs cannot be "
                            f"split into whole steps; valid: an update_freq dividing {len(result)}, or a smaller "
                            "max_tokens")
        half = (len(batch) + 1) // 2
        result[largest: largest + 1] = [batch[:half], batch[half:]]
    return result


def step_batches(batches: list[list[int]], tgt_sizes: Sequence[int], update_freq: int, seed: int, epoch: int,
                 stream: int = 0, rank: int = 0, world_size: int = 1) -> tuple[list[list[list[int]]], list[int]]:
    """``(micro, target_tokens)`` of epoch ``epoch`` for rank ``rank`` of ``world_size``.

    ``batches`` must number a multiple of ``update_freq`` (:func:`whole_steps`), and ``world_size``
    must divide ``update_freq``. ``micro[i]`` lists this rank's ``update_freq // world_size`` batches
    of step ``i``; ``target_tokens[i]`` counts the target tokens of the whole step (all ranks). The
    visit order is a permutation seeded by (seed, epoch, stream).
    """
    if update_freq % world_size:
        raise UserError(f"training.update_freq={update_freq} token batches per step are divided among "
                        f"WORLD_SIZE={world_size} processes; valid: a multiple of {world_size}")
    if len(batches) % update_freq:
        raise ValueError(f"{len(batches)} batches are not whole steps of {update_freq}; call whole_steps first")
    per_rank = update_freq // world_size
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, stream))
    order = torch.randperm(len(batches), generator=generator).tolist()
    tgt = np.asarray(tgt_sizes, dtype=np.int64)
    micro, tokens = [], []
    for start in range(0, len(order), update_freq):
        step = [batches[b] for b in order[start: start + update_freq]]
        micro.append(step[rank * per_rank: (rank + 1) * per_rank])
        tokens.append(int(sum(int(tgt[b].sum()) for b in step)))
    return micro, tokens
