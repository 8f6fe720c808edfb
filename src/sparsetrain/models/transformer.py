"""An encoder-decoder Transformer whose state dict uses fairseq's parameter names.

The GaP authors trained ``transformer_wmt_en_de_big_t2t`` with a fork of NVIDIA's
DeepLearningExamples Transformer, itself a fork of fairseq. Their checkpoints, and fairseq's, are
read into this model by :mod:`sparsetrain.interop.fairseq_checkpoints`; the 96 attention/FFN
matrices the GaP schedules prune are the ``*_proj.weight``, ``fc1.weight`` and ``fc2.weight``
entries here.

Why it is hand-written instead of ``torch.nn.Transformer``: that module names its parameters
differently (fused ``in_proj_weight``, ``linear1``/``norm1``), has no fairseq-style sinusoidal
positions, embedding scale or padding-aware positions, and no incremental decoding cache. The
computation here follows fairseq's (and the fork's):

- embeddings: ``sqrt(embed_dim) * E[token] + P[position]``, then dropout. ``P`` is the fairseq /
  tensor2tensor sinusoid (sine half then cosine half), with no parameters and no buffers, so the
  state dict holds no position entries. Positions count non-pad tokens from ``padding_idx + 1``;
  pad tokens get ``padding_idx`` whose row is zero, so left-padded sources get the same positions
  as unpadded ones.
- attention: separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers, ``q`` scaled by
  ``head_dim ** -0.5``, softmax in float32, dropout on the attention weights.
- post-norm (``normalize_before=False``): ``x = LN(x + dropout(sublayer(x)))``; pre-norm:
  ``x = x + dropout(sublayer(LN(x)))`` and a final ``layer_norm`` after each stack.
- FFN: ``fc2(dropout_act(relu(fc1(x))))``.
- output: logits ``x @ decoder.embed_tokens.weight.T`` when the decoder's input and output
  embeddings are shared (``share_all_embeddings`` implies it), else ``decoder.output_projection``.

Initialisation follows the fork: embeddings ``N(0, embed_dim ** -0.5)`` with a zero pad row,
every Linear Xavier-uniform with zero bias.

Tensors are batch-first here (fairseq works time-first internally; the state dict does not care).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

__all__ = [
    "ARCHS",
    "EncoderOut",
    "TransformerArch",
    "TransformerModel",
    "build_transformer",
    "make_positions",
    "sinusoidal_embedding",
]


@dataclass(frozen=True)
class TransformerArch:
    """Hyper-parameters of one Transformer; the same on the encoder and the decoder side.

    ``ffn_dim`` is the inner FFN width, ``heads`` divides ``embed_dim``; dropouts are
    probabilities in [0, 1): ``dropout`` on embeddings and sub-layer outputs,
    ``attention_dropout`` on attention weights, ``activation_dropout`` after the FFN's ReLU
    (fairseq's ``relu_dropout``). ``share_all_embeddings`` ties encoder input, decoder input and
    decoder output embeddings (one vocabulary); ``share_decoder_input_output_embed`` ties only the
    decoder's two (implied by the former). ``max_positions`` bounds source and target lengths.
    """

    embed_dim: int
    ffn_dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    normalize_before: bool
    dropout: float
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    share_all_embeddings: bool = True
    share_decoder_input_output_embed: bool = True
    max_positions: int = 1024
    scale_embedding: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_dim", "ffn_dim", "heads", "encoder_layers", "decoder_layers", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name}={value!r} must be an integer >= 1")
        if self.embed_dim % self.heads:
            raise UserError(f"heads={self.heads} must divide embed_dim={self.embed_dim}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise UserError(f"{name}={value!r} must be a number in [0, 1)")
        for name in ("normalize_before", "share_all_embeddings", "share_decoder_input_output_embed", "scale_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}={getattr(self, name)!r} must be true or false")

    @property
    def shares_output_embedding(self) -> bool:
        """Whether logits use ``decoder.embed_tokens.weight`` (no ``decoder.output_projection``)."""
        return self.share_all_embeddings or self.share_decoder_input_output_embed


_BIG = {"embed_dim": 1024, "ffn_dim": 4096, "heads": 16, "encoder_layers": 6, "decoder_layers": 6}
_BASE = {"embed_dim": 512, "ffn_dim": 2048, "heads": 8, "encoder_layers": 6, "decoder_layers": 6}

#: Architectures by fairseq's names (values as fairseq's arch functions set them, except that
#: embeddings are shared by default) plus two small ones of ours.
ARCHS: dict[str, TransformerArch] = {
    # tensor2tensor defaults on the big model: the GaP Transformer (its run scripts pass
    # --dropout 0.1 over this arch's 0.3: build it with dropout=0.1 to match them).
    "transformer_wmt_en_de_big_t2t": TransformerArch(
        **_BIG, normalize_before=True, dropout=0.3, attention_dropout=0.1, activation_dropout=0.1
    ),
    "transformer_wmt_en_de_big": TransformerArch(**_BIG, normalize_before=False, dropout=0.3, attention_dropout=0.1),
    "transformer_vaswani_wmt_en_de_big": TransformerArch(**_BIG, normalize_before=False, dropout=0.3),
    "transformer_wmt_en_de": TransformerArch(**_BASE, normalize_before=False, dropout=0.1),
    "transformer_iwslt_de_en": TransformerArch(
        embed_dim=512, ffn_dim=1024, heads=4, encoder_layers=6, decoder_layers=6, normalize_before=False, dropout=0.1
    ),
    # A model that trains on a CPU in minutes (demo configs).
    "transformer_small": TransformerArch(
        embed_dim=128, ffn_dim=256, heads=4, encoder_layers=2, decoder_layers=2, normalize_before=True, dropout=0.1
    ),
    # For tests.
    "transformer_tiny": TransformerArch(
        embed_dim=32, ffn_dim=64, heads=2, encoder_layers=1, decoder_layers=1, normalize_before=True, dropout=0.0
    ),
}


def make_positions(tokens: Tensor, padding_idx: int) -> Tensor:
    """Position numbers of ``tokens`` (B, L) long: non-pad tokens count ``padding_idx + 1``,
    ``padding_idx + 2``, ... along each row, pad tokens get ``padding_idx`` (fairseq's rule, right
    for left- and right-padded rows alike)."""
    not_pad = tokens.ne(padding_idx).long()
    return torch.cumsum(not_pad, dim=1) * not_pad + padding_idx


def sinusoidal_embedding(positions: Tensor, embed_dim: int, padding_idx: int) -> Tensor:
    """fairseq's sinusoidal position vectors for ``positions`` (any shape, long): float32
    ``positions.shape + (embed_dim,)``.

    With ``h = embed_dim // 2`` and ``f_i = exp(-i * ln(10000) / (h - 1))``, the vector of
    position ``p`` is ``[sin(p f_0) .. sin(p f_{h-1}), cos(p f_0) .. cos(p f_{h-1})]``, a zero
    appended when ``embed_dim`` is odd; position ``padding_idx`` maps to the zero vector.
    Computed in the same float32 operations as fairseq's table, so values agree bit for bit.
    """
    half = embed_dim // 2
    step = math.log(10000) / (half - 1) if half > 1 else 0.0  # fairseq divides by zero for embed_dim < 4
    freqs = torch.exp(torch.arange(half, dtype=torch.float, device=positions.device) * -step)
    angles = positions.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if embed_dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.masked_fill(positions.eq(padding_idx).unsqueeze(-1), 0.0)


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _embedding(num: int, dim: int, padding_idx: int) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, mean=0.0, std=dim**-0.5)
    with torch.no_grad():
        emb.weight[padding_idx].zero_()
    return emb


@dataclass
class EncoderOut:
    """The encoder's result: ``out`` (B, S, D) float, ``padding_mask`` (B, S) bool (True at pad)."""

    out: Tensor
    padding_mask: Tensor

    def index_select(self, order: Tensor) -> EncoderOut:
        """Rows ``order`` (B',) long of both tensors."""
        return EncoderOut(self.out.index_select(0, order), self.padding_mask.index_select(0, order))


class MultiheadAttention(nn.Module):
    """fairseq's multi-head attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``."""

    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = embed_dim // heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.q_proj = _linear(embed_dim, embed_dim)
        self.k_proj = _linear(embed_dim, embed_dim)
        self.v_proj = _linear(embed_dim, embed_dim)
        self.out_proj = _linear(embed_dim, embed_dim)

    def _split(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``x`` (B, S, D), each (B, heads, S, head_dim)."""
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(
        self,
        query: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Attend from ``query`` (B, T, D) to ``k``/``v`` (B, heads, S, head_dim) from :meth:`project_kv`.

        ``key_padding_mask`` (B, S) bool hides keys; ``causal`` hides key ``j > i`` from query
        ``i`` (needs T == S). Returns (B, T, D).
        """
        b, t, d = query.shape
        q = self._split(self.q_proj(query) * self.scaling)
        weights = torch.matmul(q, k.transpose(-1, -2))  # (B, heads, T, S)
        if causal:
            future = torch.ones(t, k.size(2), dtype=torch.bool, device=query.device).triu(1)
            weights = weights.masked_fill(future, float("-inf"))
        if key_padding_mask is not None:
            weights = weights.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        probs = F.softmax(weights.float(), dim=-1).type_as(weights)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class _Layer(nn.Module):
    """Shared plumbing of encoder and decoder layers: residual blocks in pre- or post-norm order."""

    def __init__(self, arch: TransformerArch) -> None:
        super().__init__()
        self.normalize_before = arch.normalize_before
        self.dropout = arch.dropout
        self.activation_dropout = arch.activation_dropout

    def _residual(self, x: Tensor, norm: nn.LayerNorm, block) -> Tensor:
        y = block(norm(x) if self.normalize_before else x)
        x = x + F.dropout(y, p=self.dropout, training=self.training)
        return x if self.normalize_before else norm(x)

    def _ffn(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x))
        return self.fc2(F.dropout(h, p=self.activation_dropout, training=self.training))


class TransformerEncoderLayer(_Layer):
    """``self_attn`` + ``self_attn_layer_norm``, ``fc1``/``fc2`` + ``final_layer_norm``."""

    def __init__(self, arch: TransformerArch) -> None:
        super().__init__(arch)
        d = arch.embed_dim
        self.self_attn = MultiheadAttention(d, arch.heads, arch.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = _linear(d, arch.ffn_dim)
        self.fc2 = _linear(arch.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``x`` (B, S, D), ``padding_mask`` (B, S) bool or None -> (B, S, D)."""

        def attend(h: Tensor) -> Tensor:
            return self.self_attn(h, *self.self_attn.project_kv(h), key_padding_mask=padding_mask)

        x = self._residual(x, self.self_attn_layer_norm, attend)
        return self._residual(x, self.final_layer_norm, self._ffn)


class TransformerDecoderLayer(_Layer):
    """``self_attn`` (causal), ``encoder_attn``, FFN; each with its layer norm."""

    def __init__(self, arch: TransformerArch) -> None:
        super().__init__(arch)
        d = arch.embed_dim
        self.self_attn = MultiheadAttention(d, arch.heads, arch.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = MultiheadAttention(d, arch.heads, arch.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = _linear(d, arch.ffn_dim)
        self.fc2 = _linear(arch.ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(
        self,
        x: Tensor,
        encoder_out: EncoderOut,
        cache: dict[str, Tensor] | None = None,
        prefix: str = "",
    ) -> Tensor:
        """``x`` (B, T, D) -> (B, T, D).

        With ``cache`` (incremental decoding), ``x`` is the newest position only (T == 1); the
        self-attention keys/values of earlier positions are read from and appended to
        ``cache[prefix + "self_attn.k"/".v"]`` and the encoder-attention ones computed once into
        ``cache[prefix + "encoder_attn.k"/".v"]``.
        """
        enc_mask = encoder_out.padding_mask  # always applied: no host sync to test for padding

        def self_attend(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            if cache is None:
                return self.self_attn(h, k, v, causal=True)
            if prefix + "self_attn.k" in cache:
                k = torch.cat([cache[prefix + "self_attn.k"], k], dim=2)
                v = torch.cat([cache[prefix + "self_attn.v"], v], dim=2)
            cache[prefix + "self_attn.k"], cache[prefix + "self_attn.v"] = k, v
            return self.self_attn(h, k, v)  # the newest query may see every cached key: no mask

        def cross_attend(h: Tensor) -> Tensor:
            if cache is not None and prefix + "encoder_attn.k" in cache:
                k, v = cache[prefix + "encoder_attn.k"], cache[prefix + "encoder_attn.v"]
            else:
                k, v = self.encoder_attn.project_kv(encoder_out.out)
                if cache is not None:
                    cache[prefix + "encoder_attn.k"], cache[prefix + "encoder_attn.v"] = k, v
            return self.encoder_attn(h, k, v, key_padding_mask=enc_mask)

        x = self._residual(x, self.self_attn_layer_norm, self_attend)
        x = self._residual(x, self.encoder_attn_layer_norm, cross_attend)
        return self._residual(x, self.final_layer_norm, self._ffn)


class _Embedder(nn.Module):
    """``embed_tokens`` plus the parameter-free sinusoidal positions, scale and dropout."""

    def __init__(self, arch: TransformerArch, embed_tokens: nn.Embedding, padding_idx: int) -> None:
        super().__init__()
        self.arch = arch
        self.padding_idx = padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(arch.embed_dim) if arch.scale_embedding else 1.0

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """``embed_scale * E[tokens] + P[positions]`` then dropout; (B, L) long -> (B, L, D)."""
        x = self.embed_scale * self.embed_tokens(tokens)
        x = x + sinusoidal_embedding(positions, self.arch.embed_dim, self.padding_idx).to(x.dtype)
        return F.dropout(x, p=self.arch.dropout, training=self.training)


class TransformerEncoder(_Embedder):
    """``embed_tokens``, ``layers``, and ``layer_norm`` when pre-norm."""

    def __init__(self, arch: TransformerArch, embed_tokens: nn.Embedding, padding_idx: int) -> None:
        super().__init__(arch, embed_tokens, padding_idx)
        self.layers = nn.ModuleList(TransformerEncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.layer_norm = nn.LayerNorm(arch.embed_dim) if arch.normalize_before else None

    def forward(self, src_tokens: Tensor) -> EncoderOut:
        """``src_tokens`` (B, S) long, padded (left or right) with ``padding_idx``."""
        padding_mask = src_tokens.eq(self.padding_idx)
        x = self.embed(src_tokens, make_positions(src_tokens, self.padding_idx))
        for layer in self.layers:  # the mask is applied even without padding: no host sync to test for it
            x = layer(x, padding_mask)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return EncoderOut(x, padding_mask)


class TransformerDecoder(_Embedder):
    """``embed_tokens``, ``layers``, ``layer_norm`` when pre-norm, and ``output_projection`` when
    the output embedding is not shared."""

    def __init__(self, arch: TransformerArch, embed_tokens: nn.Embedding, padding_idx: int) -> None:
        super().__init__(arch, embed_tokens, padding_idx)
        self.layers = nn.ModuleList(TransformerDecoderLayer(arch) for _ in range(arch.decoder_layers))
        self.layer_norm = nn.LayerNorm(arch.embed_dim) if arch.normalize_before else None
        if arch.shares_output_embedding:
            self.output_projection = None
        else:
            vocab = embed_tokens.num_embeddings
            self.output_projection = nn.Linear(arch.embed_dim, vocab, bias=False)
            nn.init.normal_(self.output_projection.weight, mean=0.0, std=arch.embed_dim**-0.5)

    def output_weight(self) -> Tensor:
        """The (V, D) matrix that maps decoder states to logits."""
        if self.output_projection is None:
            return self.embed_tokens.weight
        return self.output_projection.weight

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        encoder_out: EncoderOut,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """``tokens``/``positions`` (B, T) long -> logits (B, T, V)."""
        x = self.embed(tokens, positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, encoder_out, cache, prefix=f"layers.{i}.")
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return F.linear(x, self.output_weight())


def _check_tokens(name: str, tokens: Tensor, max_positions: int) -> None:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        desc = f"a {tokens.dim()}-d {tokens.dtype} tensor" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise UserError(f"{name} is {desc}; expected a 2-d (batch, length) torch.long tensor")
    if tokens.size(1) > max_positions:
        raise UserError(f"{name} has length {tokens.size(1)}; this model takes lengths 1..{max_positions}")


class TransformerModel(nn.Module):
    """Encoder-decoder Transformer with fairseq's state-dict names (see the module docstring).

    ``src_vocab``/``tgt_vocab`` are vocabulary sizes (equal when ``share_all_embeddings``).
    With shared embeddings ``encoder.embed_tokens`` and ``decoder.embed_tokens`` are the same
    module: the state dict holds both keys, ``parameters()`` yields the weight once.
    """

    def __init__(self, arch: TransformerArch, src_vocab: int, tgt_vocab: int, padding_idx: int = 1) -> None:
        super().__init__()
        for name, value in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise UserError(f"{name}={value!r} must be an integer >= 2")
        smallest = min(src_vocab, tgt_vocab)
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not 0 <= padding_idx < smallest:
            raise UserError(f"padding_idx={padding_idx!r} must be an integer in [0, {smallest - 1}]")
        if arch.share_all_embeddings and src_vocab != tgt_vocab:
            raise UserError(
                f"share_all_embeddings needs one vocabulary; got src_vocab={src_vocab}, tgt_vocab={tgt_vocab}"
            )
        self.arch = arch
        self.padding_idx = padding_idx
        enc_embed = _embedding(src_vocab, arch.embed_dim, padding_idx)
        dec_embed = enc_embed if arch.share_all_embeddings else _embedding(tgt_vocab, arch.embed_dim, padding_idx)
        self.encoder = TransformerEncoder(arch, enc_embed, padding_idx)
        self.decoder = TransformerDecoder(arch, dec_embed, padding_idx)

    @property
    def max_positions(self) -> int:
        """Longest source or target sequence the model takes."""
        return self.arch.max_positions

    def encode(self, src_tokens: Tensor, src_lengths: Tensor | None = None) -> EncoderOut:
        """Run the encoder on ``src_tokens`` (B, S) long, left-padded with ``padding_idx``.

        ``src_lengths`` (B,) is accepted for fairseq's signature; padding is read from the tokens.
        """
        _check_tokens("src_tokens", src_tokens, self.max_positions)
        return self.encoder(src_tokens)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor | None, prev_output_tokens: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) float (no softmax).

        ``src_tokens`` (B, S) long, left-padded; ``prev_output_tokens`` (B, T) long, right-padded
        (the target shifted right, starting with eos). Decoder self-attention is causal.
        """
        encoder_out = self.encode(src_tokens, src_lengths)
        _check_tokens("prev_output_tokens", prev_output_tokens, self.max_positions)
        positions = make_positions(prev_output_tokens, self.padding_idx)
        return self.decoder(prev_output_tokens, positions, encoder_out)

    def decode_step(self, prev_output_tokens: Tensor, encoder_out: EncoderOut, cache: dict[str, Tensor]) -> Tensor:
        """Logits (B, V) of the next token after ``prev_output_tokens`` (B, t) long.

        Only the last column is embedded (at position ``padding_idx + t``, as :meth:`forward`
        places it in an unpadded target); earlier columns must have been passed in earlier calls
        with the same ``cache`` (start with an empty dict), which gains each decoder layer's
        keys/values. Equals ``forward(...)[:, -1]`` on the same prefix.
        """
        _check_tokens("prev_output_tokens", prev_output_tokens, self.max_positions)
        t = prev_output_tokens.size(1)
        cached = cache.get("layers.0.self_attn.k")
        if (0 if cached is None else cached.size(2)) != t - 1:
            raise UserError(
                f"decode_step got a prefix of length {t} but the cache holds "
                f"{0 if cached is None else cached.size(2)} positions; it must hold {t - 1}"
            )
        last = prev_output_tokens[:, -1:]
        positions = torch.full_like(last, self.padding_idx + t)
        return self.decoder(last, positions, encoder_out, cache)[:, -1]

    @staticmethod
    def reorder(cache: dict[str, Tensor], encoder_out: EncoderOut, new_order: Tensor) -> EncoderOut:
        """Keep rows ``new_order`` (B',) long of every cached tensor (in place) and of ``encoder_out``
        (returned): selects and reorders beams between :meth:`decode_step` calls."""
        for key, value in cache.items():
            cache[key] = value.index_select(0, new_order)
        return encoder_out.index_select(new_order)


def build_transformer(arch: str, vocab_size: int, padding_idx: int = 1, src_vocab_size: int | None = None,
                      **overrides) -> TransformerModel:
    """:class:`TransformerModel` of architecture ``arch`` (a key of :data:`ARCHS`) with a target vocabulary of
    ``vocab_size`` symbols and a source vocabulary of ``src_vocab_size`` (default: the same, a joined
    dictionary); ``overrides`` replace :class:`TransformerArch` fields."""
    if arch not in ARCHS:
        raise UserError(f"unknown transformer arch {arch!r}; valid: {', '.join(sorted(ARCHS))}")
    fields = {f.name for f in dataclasses.fields(TransformerArch)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown transformer option {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
    spec = dataclasses.replace(ARCHS[arch], **overrides)
    return TransformerModel(spec, src_vocab_size or vocab_size, vocab_size, padding_idx)
