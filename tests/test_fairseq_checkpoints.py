"""Reading fairseq and GaP-fork Transformer checkpoints (written here with torch.save; no fairseq)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types

import pytest
import torch

from sparsetrain.errors import UserError
from sparsetrain.interop.fairseq_checkpoints import (
    arch_from_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    to_fairseq_names,
)
from sparsetrain.models.transformer import ARCHS, TransformerModel, build_transformer

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS, V = 1, 2, 20
SRC = torch.tensor([[PAD, 5, 6, 7, EOS], [8, 9, 10, 11, EOS]])
PREV = torch.tensor([[EOS, 4, 5], [EOS, 12, 13]])




def _model(zero_attention_bias: bool = False, **overrides) -> TransformerModel:
    """A tiny 2+2-layer model with every parameter perturbed, so a swapped tensor changes the logits."""
    torch.manual_seed(0)
    model = build_transformer("transformer_tiny", V, PAD, encoder_layers=2, decoder_layers=2, **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if zero_attention_bias and re.search(r"attn\.\w+_proj\.bias$", name):
                p.zero_()
    return model


def _args(**extra) -> argparse.Namespace:
    base = {
        "arch": "transformer", "dropout": 0.0, "attention_dropout": 0.0, "relu_dropout": 0.0,
        "share_all_embeddings": True, "share_decoder_input_output_embed": True,
        "max_source_positions": 1024, "max_target_positions": 1024,
    }
    for side in ("encoder", "decoder"):
        base.update({f"{side}_embed_dim": 32, f"{side}_ffn_embed_dim": 64, f"{side}_attention_heads": 2,
                     f"{side}_layers": 2, f"{side}_normalize_before": True, f"{side}_learned_pos": False})
    return argparse.Namespace(**{**base, **extra})


def _fork_names(state: dict, with_bias: bool) -> dict:
    """``state`` renamed the way the GaP/NVIDIA fork names it (its modules, read from its source)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(.*)\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            prefix, part, kind = m.groups()
            if kind == "weight":
                out[f"{prefix}.in_proj_weight_{part}"] = value.t().clone()  # the fork computes x @ W
            elif with_bias:
                out[f"{prefix}.in_proj_bias_{part}"] = value.clone()
            continue
        if key.endswith("out_proj.bias") and not with_bias:
            continue
        key = re.sub(r"^(encoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.maybe_ln1.ln.", key)
        key = re.sub(r"^(encoder\.layers\.\d+)\.final_layer_norm\.", r"\1.maybe_ln2.ln.", key)
        key = re.sub(r"^(decoder\.layers\.\d+)\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)\.",
                     r"\1.\2.ln.", key)
        out[key] = value.clone()
    for side in ("encoder", "decoder"):
        out[f"{side}.embed_positions._float_tensor"] = torch.zeros(1)
        out[f"{side}.embed_positions.positions_buffer"] = torch.arange(PAD + 1, 1024 + PAD + 1)
    out["decoder.embed_out"] = out["decoder.embed_tokens.weight"]
    return out


def _fake_fairseq_dictionary(symbols):
    """An object that pickles as ``fairseq.data.dictionary.Dictionary``, and the modules it needs."""
    modules = {name: types.ModuleType(name) for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}

    class Dictionary:
        pass

    Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    modules["fairseq.data.dictionary"].Dictionary = Dictionary
    d = Dictionary()
    d.symbols, d.count, d.indices = list(symbols), [1] * len(symbols), {s: i for i, s in enumerate(symbols)}
    d.pad_index, d.eos_index, d.unk_index, d.nspecial = PAD, EOS, 3, 4
    return d, modules


def _save(path, payload, monkeypatch=None, modules=None):
    if modules:
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
    torch.save(payload, path)
    if modules:
        for name in modules:
            monkeypatch.delitem(sys.modules, name)
    return path


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(SRC, None, PREV)


def test_fairseq_named_checkpoint_with_extras_round_trips(tmp_path):
    model = _model()
    state = dict(model.state_dict())
    embed = state["encoder.embed_tokens.weight"]
    state.update({
        "encoder.version": torch.tensor([3.0]), "decoder.version": torch.tensor([3.0]),
        "encoder.embed_positions._float_tensor": torch.zeros(1),
        "decoder.embed_positions._float_tensor": torch.zeros(1),
        "decoder.output_projection.weight": embed,
    })
    path = _save(tmp_path / "checkpoint_best.pt", {
        "args": _args(), "model": state, "optimizer_history": [{"num_updates": 10}], "extra_state": {"val_loss": 3.0},
        "last_optimizer_state": {},
    })
    ckpt = read_checkpoint(path)
    assert set(ckpt.state) == set(model.state_dict())
    assert ckpt.arch == "transformer" and ckpt.share_all_embeddings is True and ckpt.normalize_before is True
    assert ckpt.src_dict is None and ckpt.padding_idx == PAD
    name, overrides = arch_from_checkpoint(ckpt)
    assert name == "transformer_wmt_en_de"
    assert overrides == {"embed_dim": 32, "ffn_dim": 64, "heads": 2, "encoder_layers": 2, "decoder_layers": 2,
                             "normalize_before": True, "dropout": 0.0}
    loaded = model_from_checkpoint(ckpt)
    loaded.load_state_dict(ckpt.state, strict=True)
    assert loaded.decoder.embed_tokens.weight is loaded.encoder.embed_tokens.weight
    assert torch.equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize("with_bias", [True, False])
def test_gap_fork_checkpoint_loads_strictly_with_identical_logits(tmp_path, monkeypatch, with_bias):
    model = _model(zero_attention_bias=not with_bias)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(V - 4)]
    dictionary, modules = _fake_fairseq_dictionary(symbols)
    args = _args(arch="transformer_wmt_en_de_big_t2t", dropout=0.1, attention_dropout=0.1, relu_dropout=0.1)
    payload = {
        "args": args, "model": _fork_names(model.state_dict(), with_bias),
        "extra_state": {"src_dict": dictionary, "tgt_dict": dictionary, "best": 3.9, "train_iterator": {"epoch": 2}},
        "optimizer_history": [], "last_optimizer_state": {},
    }
    assert "encoder.layers.1.maybe_ln2.ln.weight" in payload["model"]
    assert "decoder.layers.0.encoder_attn_layer_norm.ln.bias" in payload["model"]
    ckpt = read_checkpoint(_save(tmp_path / "checkpoint_last.pt", payload, monkeypatch, modules))
    assert "fairseq" not in sys.modules
    assert ckpt.src_dict == symbols and ckpt.tgt_dict == symbols and ckpt.padding_idx == PAD
    assert set(ckpt.state) == set(model.state_dict())
    name, overrides = arch_from_checkpoint(ckpt)
    assert name == "transformer_wmt_en_de_big_t2t"
    dims = {"embed_dim": 32, "ffn_dim": 64, "heads": 2, "encoder_layers": 2, "decoder_layers": 2}
    assert overrides == {**dims, "dropout": 0.1}
    loaded = model_from_checkpoint(ckpt)
    assert torch.equal(_logits(loaded), _logits(model))


def test_fork_q_projection_is_x_times_w():
    """The fork's QueryLinear computes ``scaling * x @ in_proj_weight_q`` (an addmm with the weight
    on the right); after renaming, fairseq's ``q_proj(x) * scaling`` must give the same."""
    torch.manual_seed(1)
    w, x, scaling = torch.randn(8, 8), torch.randn(5, 8), 0.5
    fork = torch.addmm(x, x, w, beta=0.0, alpha=scaling)
    state = to_fairseq_names({"encoder.layers.0.self_attn.in_proj_weight_q": w})
    ours = torch.nn.functional.linear(x, state["encoder.layers.0.self_attn.q_proj.weight"]) * scaling
    assert torch.allclose(ours, fork, atol=1e-6)


def test_module_prefix_and_older_fused_in_proj_names_load(tmp_path):
    model = _model()
    state = {}
    for key, value in model.state_dict().items():
        m = re.match(r"(.*)\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            prefix, part, kind = m.groups()
            if part == "q":  # older fairseq: one (3d, d) matrix, rows q, k, v
                parts = [model.state_dict()[f"{prefix}.{p}_proj.{kind}"] for p in "qkv"]
                state[f"module.{prefix}.in_proj_{kind}"] = torch.cat(parts)
            continue
        key = re.sub(r"^(encoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.layer_norms.0.", key)
        key = re.sub(r"^(encoder\.layers\.\d+)\.final_layer_norm\.", r"\1.layer_norms.1.", key)
        state["module." + key] = value
    ckpt = read_checkpoint(_save(tmp_path / "ddp.pt", {"args": _args(), "model": state}))
    assert set(ckpt.state) == set(model.state_dict())
    assert torch.equal(_logits(model_from_checkpoint(ckpt)), _logits(model))


def test_unshared_output_matrix_becomes_output_projection(tmp_path):
    torch.manual_seed(0)
    arch = dataclasses.replace(
        ARCHS["transformer_tiny"], share_all_embeddings=False, share_decoder_input_output_embed=False
    )
    model = TransformerModel(arch, 20, 24, PAD).eval()
    state = dict(model.state_dict())
    state["decoder.embed_out"] = state.pop("decoder.output_projection.weight")
    args = _args(encoder_layers=1, decoder_layers=1, share_all_embeddings=False,
                 share_decoder_input_output_embed=False)
    ckpt = read_checkpoint(_save(tmp_path / "c.pt", {"args": args, "model": state}))
    assert "decoder.output_projection.weight" in ckpt.state and "decoder.embed_out" not in ckpt.state
    loaded = model_from_checkpoint(ckpt)
    src = torch.tensor([[5, 6, EOS]])
    with torch.no_grad():
        assert torch.equal(loaded(src, None, PREV[:1]), model(src, None, PREV[:1]))


def test_shapes_alone_give_the_architecture(tmp_path):
    model = _model(normalize_before=False, ffn_dim=48)
    ckpt = read_checkpoint(_save(tmp_path / "bare.pt", {"model": model.state_dict()}))
    assert ckpt.args == {} and ckpt.arch is None and ckpt.share_all_embeddings is None
    name, overrides = arch_from_checkpoint(ckpt)
    arch = dataclasses.replace(ARCHS[name], **overrides)
    assert (arch.embed_dim, arch.ffn_dim, arch.encoder_layers, arch.decoder_layers) == (32, 48, 2, 2)
    assert arch.normalize_before is False and arch.share_all_embeddings is True
    model_from_checkpoint(ckpt)  # loads strictly (heads are not in the shapes: the base arch's)


def test_new_fairseq_cfg_dicts_are_read(tmp_path):
    model = _model()
    cfg = {"model": {"_name": "transformer_wmt_en_de_big_t2t", "dropout": 0.2, "share_all_embeddings": True,
                     "encoder": {"embed_dim": 32, "ffn_embed_dim": 64, "layers": 2, "attention_heads": 2,
                                 "normalize_before": True, "learned_pos": False},
                     "decoder": {"embed_dim": 32, "ffn_embed_dim": 64, "layers": 2, "attention_heads": 2,
                                 "normalize_before": True, "learned_pos": False}},
           "task": {"_name": "translation"}}
    ckpt = read_checkpoint(_save(tmp_path / "new.pt", {"args": None, "cfg": cfg, "model": model.state_dict()}))
    assert ckpt.arch == "transformer_wmt_en_de_big_t2t" and ckpt.args["encoder_attention_heads"] == 2
    assert arch_from_checkpoint(ckpt)[1]["dropout"] == 0.2
    assert torch.equal(_logits(model_from_checkpoint(ckpt)), _logits(model))


def test_a_file_without_a_model_entry_is_a_one_line_error(tmp_path):
    path = _save(tmp_path / "opt.pt", {"args": _args(), "last_optimizer_state": {}})
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "has no 'model' entry" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="has no 'model' entry"):
        read_checkpoint(_save(tmp_path / "list.pt", [1, 2]))


def test_an_omegaconf_config_is_refused_in_one_line(tmp_path, monkeypatch):
    modules = {name: types.ModuleType(name) for name in ("omegaconf", "omegaconf.dictconfig")}

    class DictConfig:
        pass

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    modules["omegaconf.dictconfig"].DictConfig = DictConfig
    path = _save(tmp_path / "hydra.pt", {"cfg": DictConfig(), "model": {}}, monkeypatch, modules)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "omegaconf" in str(err.value) and "\n" not in str(err.value)


def test_mismatched_weights_are_a_one_line_error(tmp_path):
    model = _model()
    state = dict(model.state_dict())
    state["encoder.layers.0.fc1.extra"] = torch.zeros(1)
    ckpt = read_checkpoint(_save(tmp_path / "x.pt", {"args": _args(), "model": state}))
    with pytest.raises(UserError, match=r"unexpected \['encoder.layers.0.fc1.extra'\]") as err:
        model_from_checkpoint(ckpt)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="encoder_learned_pos=True"):
        arch_from_checkpoint(dataclasses.replace(ckpt, args={**ckpt.args, "encoder_learned_pos": True}))
