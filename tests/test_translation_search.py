"""Beam search and greedy decoding over the Transformer's incremental API."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sparsetrain.errors import UserError
from sparsetrain.models.transformer import build_transformer
from sparsetrain.tasks.translation_search import beam_search, greedy_decode

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, UNK, V = 1, 2, 3, 20




def _model(seed: int = 0, sharpness: float = 2.0, eos_bias: float = 0.6):
    """A random tiny model with its own output projection (tied random embeddings make it repeat
    its input token), sharpened, with eos nudged up so that some hypotheses end before the limit."""
    torch.manual_seed(seed)
    model = build_transformer(
        "transformer_tiny", V, PAD, encoder_layers=2, decoder_layers=2,
        share_all_embeddings=False, share_decoder_input_output_embed=False,
    ).eval()
    with torch.no_grad():
        model.decoder.output_projection.weight.mul_(sharpness)
        model.decoder.output_projection.weight[EOS].add_(eos_bias)
    return model


def _sources(seed: int = 0, lengths=(5, 2, 7, 4)):
    """Left-padded random sources ending in eos, and their lengths."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    src = torch.full((len(lengths), width), PAD)
    for i, n in enumerate(lengths):
        src[i, width - n :] = torch.randint(4, V, (n,), generator=g)
        src[i, -1] = EOS
    return src, torch.tensor(lengths)


def _score(model, src_row, hyp, len_penalty=1.0):
    """Normalised score of ``hyp`` (eos appended) by one full teacher-forced forward."""
    prev = torch.tensor([[EOS] + hyp])
    target = torch.tensor(hyp + [EOS])
    with torch.no_grad():
        lprobs = F.log_softmax(model(src_row.unsqueeze(0), None, prev)[0].float(), dim=-1)
    return float(lprobs.gather(1, target.unsqueeze(1)).sum()) / (len(hyp) + 1) ** len_penalty


def _reference_greedy(model, src, max_len):
    """Greedy decoding by re-running the full forward at every step (no cache), one sentence at a time."""
    out = []
    for row, limit in zip(src, max_len):
        row = row[row.ne(PAD)]
        hyp = []
        with torch.no_grad():
            while True:
                lprobs = F.log_softmax(model(row.unsqueeze(0), None, torch.tensor([[EOS] + hyp]))[0, -1], dim=-1)
                lprobs[PAD] = float("-inf")
                if not hyp:
                    lprobs[EOS] = float("-inf")  # min_len=1
                if len(hyp) >= limit:
                    break
                token = int(lprobs.argmax())
                if token == EOS:
                    break
                hyp.append(token)
        out.append(hyp)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_a_full_forward_reference(seed):
    model = _model(seed)
    src, lengths = _sources(seed)
    got = greedy_decode(model, src, lengths, max_len_a=1.0, max_len_b=2, eos=EOS, pad=PAD)
    assert got == _reference_greedy(model, src, [n + 2 for n in lengths.tolist()])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_is_greedy(seed):
    model = _model(seed)
    src, lengths = _sources(seed)
    kwargs = {"max_len_a": 1.0, "max_len_b": 3, "eos": EOS, "pad": PAD}
    greedy = greedy_decode(model, src, lengths, **kwargs)
    assert beam_search(model, src, lengths, beam=1, **kwargs) == greedy
    if seed == 0:
        assert any(len(h) < n + 3 for h, n in zip(greedy, lengths.tolist()))  # some stopped on eos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_four_scores_at_least_as_well_as_greedy(seed):
    model = _model(seed)
    src, lengths = _sources(seed)
    kwargs = {"max_len_a": 1.0, "max_len_b": 3, "eos": EOS, "pad": PAD}
    greedy = greedy_decode(model, src, lengths, **kwargs)
    beam = beam_search(model, src, lengths, beam=4, **kwargs)
    assert beam != greedy  # the comparison is not vacuous
    for row, g, b in zip(src, greedy, beam):
        assert _score(model, row, b) >= _score(model, row, g) - 1e-5


def test_outputs_hold_no_pad_nor_forbidden_unk_and_respect_length_limits():
    model = _model(3, eos_bias=-1.0)  # eos unlikely: runs to the limits
    src, lengths = _sources(3)
    with torch.no_grad():
        model.decoder.output_projection.weight[UNK].add_(1.0)  # make unk attractive
    for out in (
        beam_search(model, src, lengths, beam=3, max_len_a=0.5, max_len_b=1, eos=EOS, pad=PAD, unk=UNK, min_len=2),
        greedy_decode(model, src, lengths, max_len_a=0.5, max_len_b=1, eos=EOS, pad=PAD, unk=UNK, min_len=2),
    ):
        for hyp, n in zip(out, lengths.tolist()):
            assert PAD not in hyp and UNK not in hyp and EOS not in hyp
            assert 2 <= len(hyp) <= int(0.5 * n + 1)
    fixed = beam_search(model, src, lengths, beam=2, max_len_b=3, eos=EOS, pad=PAD)
    assert all(len(h) <= 3 for h in fixed)
    model.arch = dataclasses.replace(model.arch, max_positions=8)
    capped = beam_search(model, src, lengths, beam=2, max_len_b=10_000, eos=EOS, pad=PAD)
    assert all(len(h) == 7 for h in capped)


def test_a_sentence_decodes_the_same_alone_and_in_a_batch():
    model = _model(4)
    src, lengths = _sources(4)
    kwargs = {"beam": 3, "max_len_a": 1.0, "max_len_b": 2, "eos": EOS, "pad": PAD}
    batch = beam_search(model, src, lengths, **kwargs)
    for i in range(src.size(0)):
        row = src[i : i + 1, src.size(1) - int(lengths[i]) :]
        assert beam_search(model, row, lengths[i : i + 1], **kwargs) == [batch[i]]


def test_training_mode_is_restored():
    model = _model(0).train()
    src, lengths = _sources(0, (3,))
    beam_search(model, src, lengths, beam=2, max_len_b=3, eos=EOS, pad=PAD)
    assert model.training
    greedy_decode(model.eval(), src, lengths, max_len_b=3, eos=EOS, pad=PAD)
    assert not model.training


def test_bad_arguments_are_user_errors():
    model = _model(0)
    src, lengths = _sources(0, (3,))
    with pytest.raises(UserError, match="beam=0 must be an integer >= 1"):
        beam_search(model, src, lengths, beam=0, eos=EOS, pad=PAD)
    with pytest.raises(UserError, match=r"eos=99 must be a token index in \[0, 19\]"):
        beam_search(model, src, lengths, eos=99, pad=PAD)
    with pytest.raises(UserError, match="src_lengths must be a"):
        greedy_decode(model, src, torch.tensor([3, 4]), eos=EOS, pad=PAD)
