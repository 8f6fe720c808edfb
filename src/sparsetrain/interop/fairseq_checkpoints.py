"""Reading fairseq and GaP-fork Transformer checkpoints into :mod:`sparsetrain.models.transformer`.

The GaP authors' Transformer checkpoints come from their fork of NVIDIA DeepLearningExamples'
fairseq (github ``boone891214/GaP``, ``Transformer/``): a ``torch.save`` dict with ``args`` (an
``argparse.Namespace``), ``model`` (the state dict), ``extra_state`` (``src_dict``/``tgt_dict`` as
fairseq ``Dictionary`` objects), and optimizer entries. Upstream fairseq writes the same layout,
with ``cfg`` (plain dicts) instead of ``args`` in newer versions. Files are read with
:func:`~sparsetrain.safe_pickle.safe_torch_load`, never plain ``torch.load``.

Key names differ by origin; :func:`to_fairseq_names` maps all of them onto current fairseq's:

- the fork's attention keeps ``in_proj_weight_q|k|v`` and multiplies ``x @ W`` (see its
  ``SelfAttentionLinears``/``QueryLinear``/``KeyValueLinears``), so ``W`` is the *transpose* of
  ``q_proj.weight``; its attention has no biases (``bias=False``, also on ``out_proj``), which
  become zero biases here (the same function). Optional ``in_proj_bias_q|k|v`` map to
  ``*_proj.bias``;
- the fork's encoder layers wrap their norms as ``maybe_ln1.ln`` (around self-attention) and
  ``maybe_ln2.ln`` (around the FFN); decoder norms are ``self_attn_layer_norm.ln`` etc.;
- the fork registers ``decoder.embed_out``: the decoder's embedding when shared (dropped), else the
  output matrix (``decoder.output_projection.weight``); upstream fairseq always writes
  ``decoder.output_projection.weight`` (dropped when it equals the embedding);
- older fairseq fuses ``in_proj_weight`` (3d x d, rows q, k, v; used as ``F.linear``) and names
  encoder norms ``layer_norms.0|1``;
- position buffers (``embed_positions._float_tensor``, ``positions_buffer``), ``*.version``
  entries and a leading DDP ``module.`` are dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError, UserOSError, os_error_message
from ..models.transformer import ARCHS, TransformerArch, TransformerModel
from ..safe_pickle import UnsafePickleError, safe_torch_load

__all__ = [
    "FairseqCheckpoint",
    "arch_from_checkpoint",
    "model_from_checkpoint",
    "read_checkpoint",
    "to_fairseq_names",
]

_ATTN_IN_PROJ = re.compile(r"^(.*\.(?:self_attn|encoder_attn))\.in_proj_(weight|bias)(?:_([qkv]))?$")
_RENAMES = [
    (re.compile(r"^(encoder\.layers\.\d+)\.(?:maybe_ln1\.ln|layer_norms\.0)\."), r"\1.self_attn_layer_norm."),
    (re.compile(r"^(encoder\.layers\.\d+)\.(?:maybe_ln2\.ln|layer_norms\.1)\."), r"\1.final_layer_norm."),
    (re.compile(r"\.(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm)\.ln\."), r".\1."),
]
_DROPPED = re.compile(r"(^|\.)version$|(^|\.)embed_positions\.(_float_tensor|positions_buffer)$")


def to_fairseq_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with GaP-fork, older-fairseq and DDP names mapped to current fairseq's (see the
    module docstring). Keys it does not know stay as they are, so strict loading reports them."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if _DROPPED.search(key):
            continue
        match = _ATTN_IN_PROJ.match(key)
        if match:
            prefix, kind, which = match.groups()
            if which is not None:
                out[f"{prefix}.{which}_proj.{kind}"] = value.t().contiguous() if kind == "weight" else value
            else:
                for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}.{part}_proj.{kind}"] = chunk.contiguous()
            continue
        for pattern, replacement in _RENAMES:
            key = pattern.sub(replacement, key)
        out[key] = value

    embed = out.get("decoder.embed_tokens.weight")
    for name in ("decoder.embed_out", "decoder.output_projection.weight"):
        weight = out.pop(name, None)
        if weight is None:
            continue
        if embed is not None and weight.shape == embed.shape and torch.equal(weight, embed):
            continue
        out["decoder.output_projection.weight"] = weight

    for key in [k for k in out if k.endswith(".q_proj.weight")]:
        prefix = key[: -len("q_proj.weight")]
        biases = [f"{prefix}{p}_proj.bias" for p in ("q", "k", "v", "out")]
        if not any(b in out for b in biases):  # the fork's bias-free attention
            for b in biases:
                out[b] = out[key].new_zeros(out[key].size(0))
    return out


@dataclass
class FairseqCheckpoint:
    """A fairseq / GaP-fork Transformer checkpoint.

    ``state``: the model's state dict in fairseq's current names; ``args``: the training
    options as a flat dict (``cfg.model`` entries of newer files flattened to fairseq's argparse
    names); ``src_dict``/``tgt_dict``: the symbols of the stored dictionaries, or None;
    ``padding_idx``: the dictionaries' pad index (fairseq's 1 when none is stored).
    """

    path: str
    state: dict[str, Tensor]
    args: dict[str, Any]
    src_dict: list[str] | None
    tgt_dict: list[str] | None
    arch: str | None
    share_all_embeddings: bool | None
    normalize_before: bool | None
    padding_idx: int = 1


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, dict):
        return dict(obj)
    return {}


def _args_of(payload: dict[str, Any]) -> dict[str, Any]:
    args = _as_dict(payload.get("args"))
    if args:
        return args
    cfg = _as_dict(payload.get("cfg"))
    model = _as_dict(cfg.get("model"))
    flat: dict[str, Any] = {}
    for key, value in model.items():
        if key in ("encoder", "decoder") and isinstance(value, dict):  # fairseq's TransformerConfig
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    if "arch" not in flat and isinstance(flat.get("_name"), str):
        flat["arch"] = flat["_name"]
    return flat


def _symbols(dictionary: Any) -> list[str] | None:
    symbols = dictionary.get("symbols") if isinstance(dictionary, dict) else getattr(dictionary, "symbols", None)
    if isinstance(symbols, (list, tuple)) and all(isinstance(s, str) for s in symbols):
        return list(symbols)
    return None


def _pad_index(*dictionaries: Any) -> int:
    for d in dictionaries:
        pad = d.get("pad_index") if isinstance(d, dict) else getattr(d, "pad_index", None)
        if isinstance(pad, int) and not isinstance(pad, bool):
            return pad
    return 1


def _load(path: str) -> Any:
    if os.path.isdir(path):
        raise UserError(f"checkpoint {path!r} is a directory; give the checkpoint file")
    try:
        return safe_torch_load(path)
    except UnsafePickleError as exc:
        if "omegaconf" in str(exc):
            raise UserError(
                f"checkpoint {path!r} stores its fairseq config as an omegaconf object, which sparsetrain does not "
                "unpickle; re-save it with cfg converted to plain dicts (OmegaConf.to_container)"
            ) from None
        raise
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "read checkpoint")) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {path!r} is corrupt or not a torch file ({reason})") from None


def read_checkpoint(path: str | os.PathLike[str]) -> FairseqCheckpoint:
    """Read the fairseq or GaP-fork checkpoint at ``path`` (see the module docstring)."""
    path = os.fspath(path)
    payload = _load(path)
    if not isinstance(payload, dict) or "model" not in payload:
        held = sorted(map(str, payload))[:6] if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"checkpoint {path!r} has no 'model' entry (it holds {held}); expected a fairseq checkpoint")
    model = payload["model"]
    if not isinstance(model, dict) or not all(isinstance(v, Tensor) for v in model.values()):
        raise UserError(f"checkpoint {path!r}: 'model' is not a state dict of tensors")
    args = _args_of(payload)
    extra = payload.get("extra_state") if isinstance(payload.get("extra_state"), dict) else {}
    src, tgt = extra.get("src_dict"), extra.get("tgt_dict")
    share = args.get("share_all_embeddings")
    before = args.get("encoder_normalize_before", args.get("decoder_normalize_before"))
    return FairseqCheckpoint(
        path=path,
        state=to_fairseq_names(model),
        args=args,
        src_dict=_symbols(src),
        tgt_dict=_symbols(tgt),
        arch=args.get("arch") if isinstance(args.get("arch"), str) else None,
        share_all_embeddings=bool(share) if share is not None else None,
        normalize_before=bool(before) if before is not None else None,
        padding_idx=_pad_index(tgt, src),
    )


# fairseq argparse name -> TransformerArch field, for options equal on both sides
_ARG_FIELDS = {
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "share_all_embeddings": "share_all_embeddings",
    "share_decoder_input_output_embed": "share_decoder_input_output_embed",
}
_SIDED = {
    "embed_dim": "embed_dim",
    "ffn_embed_dim": "ffn_dim",
    "attention_heads": "heads",
    "normalize_before": "normalize_before",
}
_ALIASES = {"transformer": "transformer_wmt_en_de"}  # fairseq's base arch


def _layer_count(state: dict[str, Tensor], side: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{side}\.layers\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def arch_from_checkpoint(ckpt: FairseqCheckpoint) -> tuple[str, dict[str, Any]]:
    """An :data:`~sparsetrain.models.transformer.ARCHS` name and the field overrides that rebuild
    ``ckpt``'s model: ``build_transformer(name, vocab, **overrides)`` (or :func:`model_from_checkpoint`).

    Values come from ``ckpt.args`` when present; the state dict's shapes (embedding width,
    layer counts, FFN width, final layer norms, shared embeddings) take precedence over them.
    The number of heads is not in the shapes: without args it is the base arch's. An arch name
    we do not know starts from fairseq's base (``transformer_wmt_en_de``). Options this model
    lacks (learned positions, GELU, adaptive softmax, ...) raise a one-line :class:`UserError`.
    """
    args, state = ckpt.args, ckpt.state
    name = _ALIASES.get(ckpt.arch or "", ckpt.arch or "")
    if name not in ARCHS:
        name = "transformer_wmt_en_de"
    for option in ("encoder_learned_pos", "decoder_learned_pos", "no_token_positional_embeddings",
                   "layernorm_embedding", "adaptive_softmax_cutoff", "cross_self_attention"):
        if args.get(option):
            raise UserError(
                f"checkpoint {ckpt.path!r} uses {option}={args[option]!r}, which this Transformer does not support"
            )
    if args.get("activation_fn", "relu") != "relu":
        raise UserError(f"checkpoint {ckpt.path!r} uses activation_fn={args['activation_fn']!r}; supported: 'relu'")

    found: dict[str, Any] = {}
    for arg, field in _ARG_FIELDS.items():
        if args.get(arg) is not None:
            found[field] = args[arg]
    dropout_act = args.get("activation_dropout", args.get("relu_dropout"))
    if dropout_act is not None:
        found["activation_dropout"] = dropout_act
    if args.get("max_source_positions") is not None:
        found["max_positions"] = max(int(args["max_source_positions"]), int(args.get("max_target_positions") or 0))
    if args.get("no_scale_embedding") is not None:
        found["scale_embedding"] = not args["no_scale_embedding"]
    for side in ("encoder", "decoder"):
        if args.get(f"{side}_layers") is not None:
            found[f"{side}_layers"] = args[f"{side}_layers"]
    for arg, field in _SIDED.items():
        enc, dec = args.get(f"encoder_{arg}"), args.get(f"decoder_{arg}")
        if enc is not None and dec is not None and enc != dec:
            raise UserError(
                f"checkpoint {ckpt.path!r} has encoder_{arg}={enc!r} but decoder_{arg}={dec!r}; "
                "this Transformer needs them equal"
            )
        if enc is not None or dec is not None:
            found[field] = enc if enc is not None else dec

    embed = state.get("encoder.embed_tokens.weight")
    if embed is not None:
        found["embed_dim"] = embed.size(1)
        dec_embed = state.get("decoder.embed_tokens.weight")
        if dec_embed is not None:
            found["share_all_embeddings"] = dec_embed.shape == embed.shape and bool(torch.equal(dec_embed, embed))
        found["share_decoder_input_output_embed"] = "decoder.output_projection.weight" not in state
        if found["share_all_embeddings"]:
            found["share_decoder_input_output_embed"] = True
    for side in ("encoder", "decoder"):
        layers = _layer_count(state, side)
        if layers:
            found[f"{side}_layers"] = layers
    if "encoder.layers.0.fc1.weight" in state:
        found["ffn_dim"] = state["encoder.layers.0.fc1.weight"].size(0)
    if embed is not None:
        found["normalize_before"] = "encoder.layer_norm.weight" in state

    base = ARCHS[name]
    fields = {f.name for f in dataclasses.fields(TransformerArch)}
    overrides = {k: v for k, v in found.items() if k in fields and getattr(base, k) != v}
    try:
        dataclasses.replace(base, **overrides)
    except UserError as exc:
        raise UserError(f"checkpoint {ckpt.path!r}: {exc}") from None
    return name, overrides


def model_from_checkpoint(ckpt: FairseqCheckpoint, strict: bool = True) -> TransformerModel:
    """The :class:`TransformerModel` of ``ckpt`` with its weights loaded, in training mode like
    any new module (``strict`` as in ``load_state_dict``; a mismatch raises a one-line
    :class:`UserError` naming the first keys). Vocabulary sizes come from the embeddings,
    ``padding_idx`` from the stored dictionaries."""
    name, overrides = arch_from_checkpoint(ckpt)
    arch = dataclasses.replace(ARCHS[name], **overrides)
    src = ckpt.state.get("encoder.embed_tokens.weight")
    tgt = ckpt.state.get("decoder.embed_tokens.weight")
    if src is None or tgt is None:
        raise UserError(f"checkpoint {ckpt.path!r} has no encoder/decoder embed_tokens.weight; not a Transformer")
    model = TransformerModel(arch, src.size(0), tgt.size(0), ckpt.padding_idx)
    try:
        result = model.load_state_dict(ckpt.state, strict=False)
    except RuntimeError as exc:  # shape mismatches: torch lists every one, one per line
        detail = " ".join(str(exc).split("\n")[1:2]).strip()
        raise UserError(f"checkpoint {ckpt.path!r} does not fit {name} {overrides}: {detail[:200]}") from None
    if strict and (result.missing_keys or result.unexpected_keys):
        raise UserError(
            f"checkpoint {ckpt.path!r} does not match {name} {overrides}: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model
