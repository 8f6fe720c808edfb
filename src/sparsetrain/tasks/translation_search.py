"""Batched beam search and greedy decoding for :class:`~sparsetrain.models.transformer.TransformerModel`.

Hand-written (there is no fairseq here) to reproduce the decoding of fairseq's
``SequenceGenerator``, which produced the GaP paper's BLEU scores:

- the target starts with ``eos`` (fairseq's bos); step ``t`` scores every next token with the
  model's log-softmax, ``pad`` never allowed, ``unk`` optionally forbidden, ``eos`` forbidden
  before ``min_len`` tokens and forced once a sentence reaches its maximum length
  ``min(int(max_len_a * src_len + max_len_b), model.max_positions - 1)`` (tokens before eos);
- a hypothesis' score is the sum of its tokens' log-probabilities (eos included);
- each step takes the ``2 * beam`` best extensions of the live beams; the eos ones among the first
  ``beam`` become finished hypotheses ranked by ``score / length ** len_penalty`` (length counts
  the eos), the first ``beam`` non-eos ones stay live;
- a sentence is done once it has ``beam`` finished hypotheses (fairseq's default early stop), and
  its best finished hypothesis is returned.

One difference: ``src_len`` is each sentence's own length (``src_lengths``), not the padded
width of the batch, so a sentence decodes the same way in any batch.

Work is vectorised over batch x beam; finished sentences leave the batch (their rows are dropped
from the model's cache). Only the finished hypotheses are handled one by one, in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

__all__ = ["beam_search", "greedy_decode"]

_NEG_INF = float("-inf")


@dataclass
class _Limits:
    eos: int
    pad: int
    unk: int | None
    min_len: int


def _check(model, src_tokens: Tensor, src_lengths: Tensor, beam: int, max_len_a: float, max_len_b: int,
           len_penalty: float, eos: int, pad: int, min_len: int, unk: int | None) -> None:
    if not isinstance(src_tokens, Tensor) or src_tokens.dim() != 2 or src_tokens.dtype != torch.long:
        raise UserError("src_tokens must be a 2-d (batch, length) torch.long tensor")
    if not isinstance(src_lengths, Tensor) or src_lengths.shape != src_tokens.shape[:1]:
        raise UserError(f"src_lengths must be a ({src_tokens.size(0)},) tensor of source lengths")
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise UserError(f"beam={beam!r} must be an integer >= 1")
    if not isinstance(max_len_a, (int, float)) or max_len_a < 0:
        raise UserError(f"max_len_a={max_len_a!r} must be a number >= 0")
    if isinstance(max_len_b, bool) or not isinstance(max_len_b, int) or max_len_b < 0:
        raise UserError(f"max_len_b={max_len_b!r} must be an integer >= 0")
    if not isinstance(len_penalty, (int, float)):
        raise UserError(f"len_penalty={len_penalty!r} must be a number")
    if isinstance(min_len, bool) or not isinstance(min_len, int) or min_len < 0:
        raise UserError(f"min_len={min_len!r} must be an integer >= 0")
    vocab = model.decoder.output_weight().size(0)
    for name, value in (("eos", eos), ("pad", pad), ("unk", unk)):
        if value is None and name == "unk":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
            raise UserError(f"{name}={value!r} must be a token index in [0, {vocab - 1}]")
    if eos == pad or eos == unk:
        raise UserError(f"eos={eos} must differ from pad={pad} and unk={unk}")


def _max_lengths(model, src_lengths: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence maximum number of tokens before eos (B,) long."""
    cap = model.max_positions - 1
    return torch.tensor([min(int(a * int(n) + b), cap) for n in src_lengths.tolist()], dtype=torch.long)


def _log_probs(logits: Tensor, step: int, max_lens: Tensor, lim: _Limits) -> Tensor:
    """Masked next-token log-probabilities (rows, V) float32 at ``step`` (tokens generated so far)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    lprobs = lprobs.masked_fill(torch.isnan(lprobs), _NEG_INF)
    eos_lp = lprobs[:, lim.eos].clone()
    lprobs[:, lim.pad] = _NEG_INF
    if lim.unk is not None:
        lprobs[:, lim.unk] = _NEG_INF
    if step < lim.min_len:
        lprobs[:, lim.eos] = _NEG_INF
    forced = step >= max_lens.to(lprobs.device)
    if bool(forced.any()):
        # at the length limit only eos remains, with the model's own log-probability
        lprobs[forced] = _NEG_INF
        lprobs[forced, lim.eos] = eos_lp[forced]
    return lprobs


class _EvalMode:
    """``with _EvalMode(model):`` runs under eval mode and no_grad, then restores the training flag."""

    def __init__(self, model) -> None:
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def beam_search(
    model,
    src_tokens: Tensor,
    src_lengths: Tensor,
    *,
    beam: int = 4,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    len_penalty: float = 1.0,
    eos: int,
    pad: int,
    min_len: int = 1,
    unk: int | None = None,
) -> list[list[int]]:
    """Best hypothesis per sentence of ``src_tokens`` (B, S) long (left-padded with ``pad``).

    ``src_lengths`` (B,) holds each sentence's length in tokens (eos included, as fairseq counts
    it); it sets the sentence's maximum output length. Returns B lists of token ids, eos removed.
    See the module docstring for the search rules.
    """
    _check(model, src_tokens, src_lengths, beam, max_len_a, max_len_b, len_penalty, eos, pad, min_len, unk)
    lim = _Limits(eos, pad, unk, min_len)
    bsz, k = src_tokens.size(0), beam
    device = src_tokens.device
    max_lens = _max_lengths(model, src_lengths, max_len_a, max_len_b)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(bsz)]
    with _EvalMode(model):
        encoder_out = model.encode(src_tokens, src_lengths)
        cache: dict[str, Tensor] = {}
        encoder_out = model.reorder(cache, encoder_out, torch.arange(bsz, device=device).repeat_interleave(k))
        alive = torch.arange(bsz)  # original index of each sentence still in the batch
        tokens = torch.full((bsz * k, int(max_lens.max()) + 2), pad, dtype=torch.long, device=device)
        tokens[:, 0] = eos
        # beams 1..k-1 start dead so that step 0 expands beam 0 only (all beams are equal then)
        scores = torch.full((bsz, k), _NEG_INF, device=device)
        scores[:, 0] = 0.0
        for step in range(int(max_lens.max()) + 1):
            b = alive.numel()
            logits = model.decode_step(tokens[:, : step + 1], encoder_out, cache)
            lprobs = _log_probs(logits, step, max_lens[alive].repeat_interleave(k), lim)
            vocab = lprobs.size(1)
            cand = (lprobs.view(b, k, vocab) + scores.unsqueeze(2)).view(b, k * vocab)
            cand_scores, cand_idx = cand.topk(2 * k, dim=1)
            cand_beams, cand_tokens = cand_idx // vocab, cand_idx % vocab
            live = cand_scores > _NEG_INF
            is_eos = cand_tokens.eq(eos) & live

            done = torch.zeros(b, dtype=torch.bool)
            done_here = is_eos[:, :k].nonzero().tolist()
            if done_here:
                rows = torch.tensor([s * k + int(cand_beams[s, j]) for s, j in done_here], device=device)
                seqs = tokens[rows, 1 : step + 1].tolist()
                for (s, j), seq in zip(done_here, seqs):
                    sent = int(alive[s])
                    if len(finished[sent]) < k:
                        norm = float(cand_scores[s, j]) / (step + 1) ** len_penalty
                        finished[sent].append((norm, seq))
                    done[s] = len(finished[sent]) >= k

            # the first k candidates that are neither eos nor impossible stay live
            order = torch.arange(2 * k, device=device).expand(b, 2 * k)
            active = torch.where(is_eos | ~live, order + 2 * k, order).topk(k, dim=1, largest=False).indices
            new_beams = cand_beams.gather(1, active)
            new_tokens = cand_tokens.gather(1, active)
            new_scores = cand_scores.gather(1, active)
            done |= (step >= max_lens[alive]) | ~(new_scores > _NEG_INF).any(dim=1).cpu()
            keep = (~done).nonzero().view(-1).to(device)
            if keep.numel() == 0:
                break
            rows = (keep.unsqueeze(1) * k + new_beams.index_select(0, keep)).view(-1)
            tokens = tokens.index_select(0, rows)
            tokens[:, step + 1] = new_tokens.index_select(0, keep).view(-1)
            scores = new_scores.index_select(0, keep)
            encoder_out = model.reorder(cache, encoder_out, rows)
            alive = alive[keep.cpu()]
    # ties keep the order of finishing (fairseq sorts stably)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def greedy_decode(
    model,
    src_tokens: Tensor,
    src_lengths: Tensor,
    *,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    eos: int,
    pad: int,
    min_len: int = 1,
    unk: int | None = None,
) -> list[list[int]]:
    """The most likely next token at every step until eos or the length limit; the same rules
    as :func:`beam_search` with ``beam=1``. Returns B lists of token ids, eos removed."""
    _check(model, src_tokens, src_lengths, 1, max_len_a, max_len_b, 1.0, eos, pad, min_len, unk)
    lim = _Limits(eos, pad, unk, min_len)
    bsz, device = src_tokens.size(0), src_tokens.device
    max_lens = _max_lengths(model, src_lengths, max_len_a, max_len_b)
    results: list[list[int]] = [[] for _ in range(bsz)]
    with _EvalMode(model):
        encoder_out = model.encode(src_tokens, src_lengths)
        cache: dict[str, Tensor] = {}
        alive = torch.arange(bsz)
        tokens = torch.full((bsz, int(max_lens.max()) + 2), pad, dtype=torch.long, device=device)
        tokens[:, 0] = eos
        for step in range(int(max_lens.max()) + 1):
            logits = model.decode_step(tokens[:, : step + 1], encoder_out, cache)
            best = _log_probs(logits, step, max_lens[alive], lim).argmax(dim=1)
            tokens[:, step + 1] = best
            done = best.eq(eos).cpu()
            for s in done.nonzero().view(-1).tolist():
                results[int(alive[s])] = tokens[s, 1 : step + 1].tolist()
            keep = (~done).nonzero().view(-1)
            if keep.numel() == 0:
                break
            tokens = tokens.index_select(0, keep.to(device))
            encoder_out = model.reorder(cache, encoder_out, keep.to(device))
            alive = alive[keep]
    return results
