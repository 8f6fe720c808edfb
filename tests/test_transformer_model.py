"""The fairseq-compatible Transformer: state-dict names, sizes, positions, masks, incremental decoding."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.models.transformer import (
    ARCHS,
    TransformerModel,
    build_transformer,
    make_positions,
    sinusoidal_embedding,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, V = 1, 2, 24




def _tiny(**overrides) -> TransformerModel:
    torch.manual_seed(0)
    return build_transformer("transformer_tiny", V, PAD, **overrides).eval()


def _fairseq_names(enc_layers: int, dec_layers: int, pre_norm: bool, shared_output: bool) -> set[str]:
    """The state-dict keys fairseq's TransformerModel has (its version/_float_tensor extras aside)."""
    wb = (".weight", ".bias")
    attn = [f"{p}{s}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for s in wb]
    names = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    for i in range(enc_layers):
        base = f"encoder.layers.{i}."
        names |= {base + "self_attn." + a for a in attn}
        names |= {base + m + s for m in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm") for s in wb}
    for i in range(dec_layers):
        base = f"decoder.layers.{i}."
        names |= {base + "self_attn." + a for a in attn} | {base + "encoder_attn." + a for a in attn}
        names |= {
            base + m + s
            for m in ("self_attn_layer_norm", "encoder_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
            for s in wb
        }
    if pre_norm:
        names |= {f"{side}.layer_norm.{p}" for side in ("encoder", "decoder") for p in ("weight", "bias")}
    if not shared_output:
        names.add("decoder.output_projection.weight")
    return names


@pytest.mark.parametrize("pre_norm", [True, False])
def test_state_dict_names_are_fairseqs(pre_norm):
    model = _tiny(encoder_layers=2, decoder_layers=3, normalize_before=pre_norm)
    assert set(model.state_dict()) == _fairseq_names(2, 3, pre_norm, shared_output=True)
    assert not any("embed_positions" in k for k in model.state_dict())
    assert list(model.buffers()) == []


def test_shared_embedding_is_one_parameter():
    model = _tiny()
    assert model.decoder.embed_tokens.weight is model.encoder.embed_tokens.weight
    params = list(model.parameters())
    assert sum(p is model.encoder.embed_tokens.weight for p in params) == 1
    assert len(params) == len(model.state_dict()) - 1
    assert model.decoder.output_weight() is model.encoder.embed_tokens.weight


def test_unshared_embeddings_have_their_own_output_projection():
    arch = dataclasses.replace(
        ARCHS["transformer_tiny"], share_all_embeddings=False, share_decoder_input_output_embed=False
    )
    model = TransformerModel(arch, src_vocab=20, tgt_vocab=30, padding_idx=PAD)
    assert set(model.state_dict()) == _fairseq_names(1, 1, True, shared_output=False)
    assert model.decoder.output_projection.weight.shape == (30, 32)
    assert model.encoder.embed_tokens.weight.shape == (20, 32)
    logits = model(torch.tensor([[5, 6, EOS]]), None, torch.tensor([[EOS, 7]]))
    assert logits.shape == (1, 2, 30)


def test_big_t2t_has_the_papers_176m_prunable_weights():
    arch = ARCHS["transformer_wmt_en_de_big_t2t"]
    shape = (arch.embed_dim, arch.ffn_dim, arch.heads, arch.encoder_layers, arch.decoder_layers)
    assert shape == (1024, 4096, 16, 6, 6)
    assert arch.normalize_before and arch.share_all_embeddings
    assert (arch.dropout, arch.attention_dropout, arch.activation_dropout) == (0.3, 0.1, 0.1)
    with torch.device("meta"):
        model = build_transformer("transformer_wmt_en_de_big_t2t", 32768)
    matrices = {
        name: p for name, p in model.named_parameters()
        if name.endswith(("_proj.weight", "fc1.weight", "fc2.weight"))
    }
    assert len(matrices) == 96
    assert sum(p.numel() for p in matrices.values()) == 176_160_768
    assert set(model.state_dict()) == _fairseq_names(6, 6, True, shared_output=True)


def _numpy_sinusoid(num: int, dim: int, padding_idx: int) -> np.ndarray:
    """Independent float64 reference of fairseq's table: row p = [sin(p f), cos(p f)], f_i = 10000^(-i/(h-1))."""
    half = dim // 2
    freqs = np.exp(-np.arange(half) * (math.log(10000.0) / (half - 1)))
    table = np.zeros((num, dim))
    for p in range(num):
        table[p, :half] = np.sin(p * freqs)
        table[p, half : 2 * half] = np.cos(p * freqs)
    table[padding_idx] = 0.0
    return table


def _numpy_positions(tokens: np.ndarray, padding_idx: int) -> np.ndarray:
    out = np.full(tokens.shape, padding_idx)
    for b, row in enumerate(tokens):
        seen = 0
        for j, tok in enumerate(row):
            if tok != padding_idx:
                seen += 1
                out[b, j] = padding_idx + seen
    return out


@pytest.mark.parametrize("dim", [32, 33])
def test_sinusoid_matches_independent_numpy_formula(dim):
    positions = torch.arange(0, 300).view(3, 100)
    ours = sinusoidal_embedding(positions, dim, PAD).double().numpy()
    ref = _numpy_sinusoid(300, dim, PAD).reshape(3, 100, dim)
    assert np.abs(ours - ref).max() < 2e-4  # float32 arguments up to 300 rad
    assert np.abs(ours[0, :20] - ref[0, :20]).max() < 1e-6
    assert (ours[0, PAD] == 0).all()


def test_encoder_input_is_scaled_embedding_plus_numpy_positions():
    model = _tiny()
    # left-padded source, as fairseq batches it
    src = torch.tensor([[PAD, PAD, PAD, 5, 6, 7, EOS], [9, 10, 11, 12, 13, 14, EOS], [PAD, PAD, PAD, PAD, PAD, 8, EOS]])
    seen = {}

    def grab(module, args):
        seen["x"] = args[0].detach()

    model.encoder.layers[0].register_forward_pre_hook(grab)
    model.encode(src, torch.tensor([4, 7, 2]))

    tokens = src.numpy()
    positions = _numpy_positions(tokens, PAD)
    assert positions[0].tolist() == [PAD, PAD, PAD, 2, 3, 4, 5]
    assert (make_positions(src, PAD).numpy() == positions).all()
    weights = model.encoder.embed_tokens.weight.detach().double().numpy()
    expected = math.sqrt(32) * weights[tokens] + _numpy_sinusoid(64, 32, PAD)[positions]
    assert np.abs(seen["x"].double().numpy() - expected).max() < 1e-5


def test_left_padding_does_not_change_the_result():
    model = _tiny(encoder_layers=2, decoder_layers=2)
    prev = torch.tensor([[EOS, 4, 5], [EOS, 4, 5]])
    padded = model(torch.tensor([[PAD, PAD, 7, 8, EOS], [3, 6, 7, 8, EOS]]), None, prev)
    alone = model(torch.tensor([[7, 8, EOS]]), None, prev[:1])
    assert (padded[0] - alone[0]).abs().max() < 1e-5
    assert (padded[0] - padded[1]).abs().max() > 1e-3


def test_decoder_is_causal():
    model = _tiny()
    src = torch.tensor([[5, 6, 7, EOS]])
    a = model(src, None, torch.tensor([[EOS, 4, 5, 6]]))
    b = model(src, None, torch.tensor([[EOS, 4, 9, 10]]))
    assert torch.equal(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


@pytest.mark.parametrize("pre_norm", [True, False])
def test_decode_step_equals_forward_on_every_prefix(pre_norm):
    model = _tiny(encoder_layers=2, decoder_layers=2, normalize_before=pre_norm)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (3, 6), generator=g)
    src[0, :2] = PAD
    src[:, -1] = EOS
    prev = torch.randint(3, V, (3, 7), generator=g)
    prev[:, 0] = EOS
    with torch.no_grad():
        full = model(src, None, prev)
        enc, cache = model.encode(src, None), {}
        for t in range(1, prev.size(1) + 1):
            step = model.decode_step(prev[:, :t], enc, cache)
            assert (step - full[:, t - 1]).abs().max() < 1e-5
        assert cache["layers.1.self_attn.k"].shape == (3, 2, 7, 16)
        assert cache["layers.0.encoder_attn.v"].shape == (3, 2, 6, 16)


def test_reorder_selects_beams():
    model = _tiny()
    src = torch.tensor([[PAD, 5, 6, EOS], [7, 8, 9, EOS]])
    prev = torch.tensor([[EOS, 4, 5, 6], [EOS, 10, 11, 12]])
    order = torch.tensor([1, 0, 0])
    with torch.no_grad():
        full = model(src[order], None, prev[order])
        enc, cache = model.encode(src, None), {}
        for t in range(1, 3):
            model.decode_step(prev[:, :t], enc, cache)
        enc = model.reorder(cache, enc, order)
        for t in range(3, 5):
            step = model.decode_step(prev[order, :t], enc, cache)
            assert (step - full[:, t - 1]).abs().max() < 1e-5


def test_decode_step_refuses_a_cache_of_the_wrong_length():
    model = _tiny()
    enc = model.encode(torch.tensor([[5, EOS]]), None)
    with pytest.raises(UserError, match="cache holds 0"):
        model.decode_step(torch.tensor([[EOS, 5]]), enc, {})


def test_dropout_only_in_training_mode():
    model = _tiny(dropout=0.3)
    src, prev = torch.tensor([[5, 6, 7, EOS]]), torch.tensor([[EOS, 4, 5]])
    assert torch.equal(model(src, None, prev), model(src, None, prev))
    model.train()
    assert not torch.equal(model(src, None, prev), model(src, None, prev))


def test_build_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown transformer arch 'nope'; valid: .*transformer_tiny"):
        build_transformer("nope", V)
    with pytest.raises(UserError, match="unknown transformer option 'depth'; valid: .*embed_dim"):
        build_transformer("transformer_tiny", V, depth=3)
    with pytest.raises(UserError, match="heads=5 must divide embed_dim=32"):
        build_transformer("transformer_tiny", V, heads=5)
    with pytest.raises(UserError, match=r"dropout=1.5 must be a number in \[0, 1\)"):
        build_transformer("transformer_tiny", V, dropout=1.5)
    with pytest.raises(UserError, match=r"padding_idx=30 must be an integer in \[0, 23\]"):
        build_transformer("transformer_tiny", V, padding_idx=30)
    with pytest.raises(UserError, match="prev_output_tokens is a 2-d torch.float32"):
        _tiny()(torch.tensor([[5, EOS]]), None, torch.zeros(1, 2))
    with pytest.raises(UserError, match="length 9; this model takes lengths 1..8"):
        _tiny(max_positions=8)(torch.full((1, 9), 5), None, torch.tensor([[EOS]]))
