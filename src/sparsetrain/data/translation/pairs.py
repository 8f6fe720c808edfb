"""Parallel (source, target) token datasets for translation, their batch layout, and the corpus readers.

:class:`LanguagePairDataset` pairs two sequences of token-id tensors; :func:`collate` pads a list of
its items into fairseq's batch dictionary. Three readers turn a directory into a
:class:`TranslationData` (splits + dictionaries):

* :func:`read_fairseq_binarized`: a ``fairseq-preprocess`` output directory (``dict.{lang}.txt``
  and ``{split}.{src}-{tgt}.{lang}.{bin,idx}``, either binary format, see :mod:`.indexed`);
* :func:`read_bpe_text`: whitespace-tokenized (BPE'd) text, one sentence per line, plus a dictionary;
* :func:`read_raw_text`: raw text encoded with a ``sentencepiece`` model (see :func:`train_sentencepiece`).

Every token sequence ends in ``</s>`` (as ``fairseq-preprocess`` writes them); sizes count it.
Written by hand because fairseq is not a dependency; the item and batch layouts follow fairseq's
``LanguagePairDataset`` so models and losses written against fairseq's conventions work unchanged.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_write
from ...errors import UserError
from .dictionary import SPECIALS, Dictionary, read_utf8
from .indexed import IndexedDataset, checked_index, dataset_exists

SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------------------------------
# token storage


class TokenArray(Sequence):
    """Many 1-D token sequences stored as one flat ``int32`` array plus offsets (compact for WMT-sized text).

    ``arr[i]`` is sequence ``i`` as a 1-D ``torch.long`` tensor (a copy); ``arr.sizes`` the
    ``numpy.int64`` lengths.
    """

    def __init__(self, flat: np.ndarray, sizes: np.ndarray) -> None:
        self.flat = np.ascontiguousarray(flat, dtype=np.int32)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        if self.offsets[-1] != len(self.flat):
            raise ValueError("sizes do not add up to the flat array's length")

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> TokenArray:
        sizes = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(sizes.sum()))
        return cls(flat, sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        i = checked_index(i, len(self.sizes))
        return torch.from_numpy(self.flat[self.offsets[i]:self.offsets[i + 1]].astype(np.int64))


def _sizes_of(seqs: Sequence) -> np.ndarray:
    sizes = getattr(seqs, "sizes", None)
    if sizes is not None and len(sizes) == len(seqs):
        return np.asarray(sizes, dtype=np.int64)
    return np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))


# --------------------------------------------------------------------------------------------------
# the dataset and its batches


class LanguagePairDataset(torch.utils.data.Dataset):
    """Sentence pairs: ``ds[i] == {"id": i, "source": LongTensor (S_i,), "target": LongTensor (T_i,)}``.

    ``src`` and ``tgt`` are equally long sequences of 1-D integer tensors (an
    :class:`~.indexed.IndexedDataset`, a :class:`TokenArray`, or a list), each ending in
    ``eos()``. ``src_sizes``/``tgt_sizes`` are ``numpy.int64`` arrays of the lengths (eos included).
    An item not ending in eos raises a one-line ``UserError`` when it is read.
    """

    def __init__(self, src: Sequence, tgt: Sequence, src_dict: Dictionary, tgt_dict: Dictionary,
                 name: str = "dataset") -> None:
        if len(src) != len(tgt):
            raise UserError(f"{name}: {len(src)} source sentences but {len(tgt)} target sentences; "
                            "they must pair up one to one")
        self.src, self.tgt = src, tgt
        self.src_dict, self.tgt_dict = src_dict, tgt_dict
        self.name = name
        self.src_sizes = _sizes_of(src)
        self.tgt_sizes = _sizes_of(tgt)

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict:
        source, target = _as_long(self.src[i]), _as_long(self.tgt[i])
        for side, t, d in (("source", source, self.src_dict), ("target", target, self.tgt_dict)):
            if len(t) == 0 or int(t[-1]) != d.eos():
                raise UserError(f"{self.name}: {side} sentence {i} does not end in </s> (id {d.eos()}); "
                                "every sequence must end in eos")
        return {"id": int(i), "source": source, "target": target}

    def num_tokens(self, i: int) -> int:
        """``max(source length, target length)`` of pair ``i``: what a token budget counts."""
        return int(max(self.src_sizes[i], self.tgt_sizes[i]))

    def size(self, i: int) -> tuple[int, int]:
        return int(self.src_sizes[i]), int(self.tgt_sizes[i])

    def collater(self, samples: Sequence[dict]) -> dict:
        """:func:`collate` with this dataset's pad and eos ids (the target dictionary's)."""
        return collate(samples, self.src_dict.pad(), self.tgt_dict.eos())


def _as_long(t) -> torch.Tensor:
    return t.long() if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.long)


def _pad(seqs: Sequence[torch.Tensor], pad_idx: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_idx, dtype=torch.long)
    for row, s in enumerate(seqs):
        if left:
            out[row, width - len(s):] = s
        else:
            out[row, :len(s)] = s
    return out


def collate(samples: Sequence[dict], pad_idx: int, eos_idx: int) -> dict:
    """Pad ``samples`` (items of :class:`LanguagePairDataset`) into one batch, fairseq's layout.

    Returns (``B = len(samples)``, ``S``/``T`` the longest source/target, eos included)::

        {"id": LongTensor (B,),
         "nsentences": B,
         "ntokens": int, the number of target tokens (eos included, padding not),
         "net_input": {"src_tokens": LongTensor (B, S), LEFT-padded with pad_idx,
                       "src_lengths": LongTensor (B,),
                       "prev_output_tokens": LongTensor (B, T), RIGHT-padded: eos, then target[:-1]},
         "target": LongTensor (B, T), RIGHT-padded}

    Unlike fairseq's ``collate``, rows are NOT re-sorted by descending source length: row ``b`` is
    ``samples[b]``, so the batch sampler alone decides the order. An empty ``samples`` gives ``{}``
    (as fairseq).
    """
    if len(samples) == 0:
        return {}
    sources = [s["source"] for s in samples]
    targets = [s["target"] for s in samples]
    shifted = [torch.cat([torch.tensor([eos_idx], dtype=torch.long), t[:-1]]) for t in targets]
    target = _pad(targets, pad_idx, left=False)
    return {
        "id": torch.tensor([int(s["id"]) for s in samples], dtype=torch.long),
        "nsentences": len(samples),
        "ntokens": int(sum(len(t) for t in targets)),
        "net_input": {
            "src_tokens": _pad(sources, pad_idx, left=True),
            "src_lengths": torch.tensor([len(s) for s in sources], dtype=torch.long),
            "prev_output_tokens": _pad(shifted, pad_idx, left=False),
        },
        "target": target,
    }


# --------------------------------------------------------------------------------------------------
# what a reader returns


@dataclass
class TranslationData:
    """A translation corpus: up to three splits, the two dictionaries, and what is needed to score BLEU.

    ``train``/``valid``/``test`` are ``None`` where the split is absent. ``joined`` is True when
    source and target share one dictionary (the same object or identical symbol lists).
    ``raw_refs[split]`` are the untokenized target sentences of a split (one per pair, in order)
    when known: BLEU is computed against these after detokenizing the model's output with
    ``tgt_dict.string(ids, bpe_symbol)`` (and ``spm_model`` when the text was sentencepiece'd).
    """

    train: LanguagePairDataset | None
    valid: LanguagePairDataset | None
    test: LanguagePairDataset | None
    src_dict: Dictionary
    tgt_dict: Dictionary
    src_lang: str
    tgt_lang: str
    joined: bool
    raw_refs: dict[str, list[str]] = field(default_factory=dict)
    bpe_symbol: str | None = None
    spm_model: Path | None = None

    def split(self, name: str) -> LanguagePairDataset | None:
        if name not in SPLITS:
            raise UserError(f"split={name!r} is not a split; use one of {list(SPLITS)}")
        return getattr(self, name)

    def reference_text(self, split: str) -> list[str]:
        """The raw target sentences of ``split``; a ``UserError`` when the reader had none."""
        if split not in self.raw_refs:
            raise UserError(f"no raw reference text for split {split!r}; available: {sorted(self.raw_refs)} "
                            "(give the reader a references file)")
        return self.raw_refs[split]


# --------------------------------------------------------------------------------------------------
# text files


def read_lines(path: Path, allow_empty: bool = False) -> list[str]:
    """The lines of a UTF-8 text file (split on ``\\n`` only, a final newline optional, ``\\r`` dropped).

    Each line is stripped of surrounding whitespace; an empty line is a ``UserError`` naming the
    file and the (1-based) line unless ``allow_empty``.
    """
    text = read_utf8(path, "text file", "give a file with one sentence per line")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.strip() for line in lines]
    if not allow_empty:
        for n, line in enumerate(lines, start=1):
            if not line:
                raise UserError(f"text file {str(path)!r} line {n} is empty; every line must hold a sentence")
    return lines


def _check_counts(src_path: Path, n_src: int, tgt_path: Path, n_tgt: int) -> None:
    if n_src != n_tgt:
        raise UserError(f"{str(src_path)!r} has {n_src} lines but {str(tgt_path)!r} has {n_tgt}; "
                        "parallel files must have equally many lines")
    if n_src == 0:
        raise UserError(f"{str(src_path)!r} and {str(tgt_path)!r} are empty; a split needs at least one pair")


def _check_dir(data_dir: str | os.PathLike[str]) -> Path:
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"data directory {str(d)!r} {'is a file' if d.exists() else 'does not exist'}; "
                        "give the directory holding the corpus files")
    return d


def _check_lang(name: str, lang) -> str:
    if not isinstance(lang, str) or not re.fullmatch(r"[A-Za-z0-9_]+", lang):
        raise UserError(f"{name}={lang!r} is not a language code; use letters, digits or '_' (e.g. 'en')")
    return lang


def _references(data_dir: Path, tgt_lang: str, given: Mapping[str, str | os.PathLike[str]] | None,
                data: dict[str, LanguagePairDataset | None]) -> dict[str, list[str]]:
    """Raw target references: the files given per split, else ``{split}.raw.{tgt}`` found in data_dir."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        p = data_dir / f"{split}.raw.{tgt_lang}"
        if p.is_file():
            found[split] = p
    for split, p in (given or {}).items():
        if split not in SPLITS:
            raise UserError(f"references key {split!r} is not a split; use {list(SPLITS)}")
        found[split] = Path(p)
    refs = {}
    for split, p in found.items():
        ds = data.get(split)
        if ds is None:
            raise UserError(f"reference file {str(p)!r} is for split {split!r}, which the corpus lacks")
        lines = read_lines(p, allow_empty=True)
        if len(lines) != len(ds):
            raise UserError(f"reference file {str(p)!r} has {len(lines)} lines but split {split!r} has "
                            f"{len(ds)} sentence pairs; they must match")
        refs[split] = lines
    return refs


# --------------------------------------------------------------------------------------------------
# fairseq-preprocess output

_BIN_NAME = re.compile(r"^(train|valid|test)\.([A-Za-z0-9_]+)-([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)\.idx$")


def read_fairseq_binarized(data_dir: str | os.PathLike[str], src_lang: str | None = None,
                           tgt_lang: str | None = None, bpe_symbol: str | None = "@@ ",
                           references: Mapping[str, str | os.PathLike[str]] | None = None) -> TranslationData:
    """A ``fairseq-preprocess`` output directory (mmap or legacy binary format, detected per file).

    Reads ``dict.{src}.txt``, ``dict.{tgt}.txt`` (``joined`` when the two files are byte-identical,
    as ``--joined-dictionary`` writes them) and, for each of train/valid/test present,
    ``{split}.{src}-{tgt}.{lang}.{bin,idx}`` (the reversed pair name ``{tgt}-{src}`` is accepted, so a
    de-en direction reads an en-de directory). Languages not given are inferred from the file
    names; more than one candidate pair is an error listing them. Sharded splits (``train1``...)
    are not read. ``bpe_symbol`` is recorded for detokenizing (``"@@ "``: subword-nmt, as the WMT14
    scripts use). Raw references come from ``references`` (split -> file) or ``{split}.raw.{tgt}``
    files in the directory (the GaP scripts copy ``valid.raw.de``/``test.raw.de`` there).
    """
    d = _check_dir(data_dir)
    pairs = sorted({(m[2], m[3]) for p in d.iterdir() if (m := _BIN_NAME.match(p.name)) and m[4] in (m[2], m[3])})
    listed = ", ".join(f"{a}-{b}" for a, b in pairs) or "none"
    if src_lang is not None:
        _check_lang("src_lang", src_lang)
    if tgt_lang is not None:
        _check_lang("tgt_lang", tgt_lang)
    candidates = [(a, b) for a, b in pairs
                  if (src_lang is None or src_lang in (a, b)) and (tgt_lang is None or tgt_lang in (a, b))
                  and not (src_lang is not None and src_lang == tgt_lang)]
    if src_lang is not None and tgt_lang is not None and (src_lang, tgt_lang) in candidates:
        candidates = [(src_lang, tgt_lang)]
    if len(candidates) != 1:
        what = "no" if not candidates else "more than one"
        raise UserError(f"{str(d)!r}: {what} language pair matches src_lang={src_lang!r} tgt_lang={tgt_lang!r}; "
                        f"pairs found in '{{split}}.{{src}}-{{tgt}}.{{lang}}.idx' files: {listed}"
                        + ("; give src_lang and tgt_lang" if candidates else ""))
    a, b = candidates[0]
    if src_lang is None and tgt_lang is None:
        src_lang, tgt_lang = a, b
    elif src_lang is None:
        src_lang = a if tgt_lang == b else b
    elif tgt_lang is None:
        tgt_lang = b if src_lang == a else a
    dict_paths = [d / f"dict.{src_lang}.txt", d / f"dict.{tgt_lang}.txt"]
    src_dict = Dictionary.load(dict_paths[0])
    joined = dict_paths[0].read_bytes() == dict_paths[1].read_bytes()
    tgt_dict = src_dict if joined else Dictionary.load(dict_paths[1])
    data: dict[str, LanguagePairDataset | None] = {}
    for split in SPLITS:
        prefixes = [d / f"{split}.{a}-{b}.{lang}" for lang in (src_lang, tgt_lang)]
        have = [dataset_exists(p) for p in prefixes]
        if not any(have) and not any(Path(f"{p}.idx").exists() or Path(f"{p}.bin").exists() for p in prefixes):
            data[split] = None
            continue
        src, tgt = IndexedDataset(prefixes[0]), IndexedDataset(prefixes[1])
        if len(src) != len(tgt):
            raise UserError(f"{str(prefixes[0])!r} holds {len(src)} sentences but {str(prefixes[1])!r} holds "
                            f"{len(tgt)}; parallel splits must have equally many")
        for ds, dictionary, p in ((src, src_dict, prefixes[0]), (tgt, tgt_dict, prefixes[1])):
            _check_ids(ds, dictionary, f"{p}.bin")
        data[split] = LanguagePairDataset(src, tgt, src_dict, tgt_dict, name=f"{d.name}/{split}")
    if all(v is None for v in data.values()):
        raise UserError(f"{str(d)!r} holds no split for {src_lang}-{tgt_lang}")
    return TranslationData(**data, src_dict=src_dict, tgt_dict=tgt_dict, src_lang=src_lang, tgt_lang=tgt_lang,
                           joined=joined, raw_refs=_references(d, tgt_lang, references, data),
                           bpe_symbol=bpe_symbol)


def _check_ids(ds: IndexedDataset, dictionary: Dictionary, name: str) -> None:
    data = ds._data
    if len(data) == 0:
        return
    shift = ds._shift
    lo, hi = int(data.min()) - shift, int(data.max()) - shift
    if lo < 0 or hi >= len(dictionary):
        raise UserError(f"{name!r} holds token ids {lo}..{hi} but its dictionary has {len(dictionary)} "
                        f"symbols (ids 0..{len(dictionary) - 1}); the data and dictionary do not match")


# --------------------------------------------------------------------------------------------------
# tokenized (BPE) text


def read_bpe_text(data_dir: str | os.PathLike[str], src_lang: str, tgt_lang: str,
                  dict_path: str | os.PathLike[str] | None = None, bpe_symbol: str | None = "@@ ",
                  references: Mapping[str, str | os.PathLike[str]] | None = None) -> TranslationData:
    """Whitespace-tokenized text ``{split}.{lang}`` (one sentence per line) in ``data_dir``.

    The dictionary is, in order of preference: ``dict_path`` (joined); ``dict.txt`` in the directory
    (joined); ``dict.{src}.txt`` and ``dict.{tgt}.txt`` (joined if byte-identical); else one joined
    dictionary built from the train split of both languages (:meth:`Dictionary.build`, threshold
    1, padded to a multiple of 8). Tokens missing from the dictionary become ``<unk>``. The text is
    held in memory while it is encoded (fine for corpora of up to a few million tokens); for WMT-sized
    data binarize once with ``fairseq-preprocess`` (or :func:`~.indexed.write_indexed`) and use
    :func:`read_fairseq_binarized`.
    ``references`` / ``{split}.raw.{tgt}`` as in :func:`read_fairseq_binarized`.
    """
    d = _check_dir(data_dir)
    _check_lang("src_lang", src_lang)
    _check_lang("tgt_lang", tgt_lang)
    texts = _read_parallel(d, src_lang, tgt_lang)
    if dict_path is not None:
        src_dict = tgt_dict = Dictionary.load(dict_path)
        joined = True
    elif (d / "dict.txt").is_file():
        src_dict = tgt_dict = Dictionary.load(d / "dict.txt")
        joined = True
    elif (d / f"dict.{src_lang}.txt").is_file() or (d / f"dict.{tgt_lang}.txt").is_file():
        paths = d / f"dict.{src_lang}.txt", d / f"dict.{tgt_lang}.txt"
        src_dict = Dictionary.load(paths[0])
        joined = paths[0].read_bytes() == Path(paths[1]).read_bytes() if paths[1].is_file() else False
        tgt_dict = src_dict if joined else Dictionary.load(paths[1])
    else:
        if "train" not in texts:
            raise UserError(f"{str(d)!r} has no dictionary (dict.txt or dict.{src_lang}.txt) and no train split "
                            "to build one from")
        s, t = texts["train"]
        src_dict = tgt_dict = Dictionary.build(line.split() for lines in (s, t) for line in lines)
        joined = True
    data: dict[str, LanguagePairDataset | None] = dict.fromkeys(SPLITS)
    for split, (s, t) in texts.items():
        src = TokenArray.from_lists([src_dict.encode_tokens(line.split()) for line in s])
        tgt = TokenArray.from_lists([tgt_dict.encode_tokens(line.split()) for line in t])
        data[split] = LanguagePairDataset(src, tgt, src_dict, tgt_dict, name=f"{d.name}/{split}")
    return TranslationData(**data, src_dict=src_dict, tgt_dict=tgt_dict, src_lang=src_lang, tgt_lang=tgt_lang,
                           joined=joined, raw_refs=_references(d, tgt_lang, references, data),
                           bpe_symbol=bpe_symbol)


def _read_parallel(d: Path, src_lang: str, tgt_lang: str) -> dict[str, tuple[list[str], list[str]]]:
    texts = {}
    for split in SPLITS:
        sp, tp = d / f"{split}.{src_lang}", d / f"{split}.{tgt_lang}"
        if not sp.exists() and not tp.exists():
            continue
        for p in (sp, tp):
            if not p.is_file():
                other = tp if p is sp else sp
                raise UserError(f"{str(p)!r} is missing but {str(other)!r} exists; each split needs both "
                                "languages")
        s, t = read_lines(sp), read_lines(tp)
        _check_counts(sp, len(s), tp, len(t))
        texts[split] = (s, t)
    if not texts:
        raise UserError(f"{str(d)!r} holds no '{{train,valid,test}}.{src_lang}' / '.{tgt_lang}' text files")
    return texts


# --------------------------------------------------------------------------------------------------
# raw text + sentencepiece


def _sentences(files: Sequence[Path]):
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    yield line


def _load_spm(model: str | os.PathLike[str]):
    import sentencepiece as spm

    path = Path(model)
    if not path.is_file():
        raise UserError(f"sentencepiece model {str(path)!r} {'is a directory' if path.is_dir() else 'does not exist'}")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise UserError(f"sentencepiece model {str(path)!r} cannot be read: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return sp


def spm_dictionary(model: str | os.PathLike[str]) -> Dictionary:
    """The :class:`Dictionary` of a sentencepiece model: fairseq's four specials, then every piece.

    Pieces are taken in the model's id order, skipping its control and unknown pieces (its own
    ``<s>``/``</s>``/``<pad>``/``<unk>``), and the size is padded to a multiple of 8. A model from
    :func:`train_sentencepiece` reserves ids 0-3 for fairseq's specials, so there the dictionary id
    of a piece equals its sentencepiece id. The ids depend on the model only, never on the corpus.
    """
    sp = _load_spm(model)
    d = Dictionary()
    for i in range(sp.GetPieceSize()):
        if sp.IsControl(i) or sp.IsUnknown(i):
            continue
        piece = sp.IdToPiece(i)
        if piece in SPECIALS or piece in d:
            continue
        d.add_symbol(piece)
    d.pad_to_multiple_(8)
    return d


def spm_encoder(model: str | os.PathLike[str], dictionary: Dictionary) -> Callable[[list[str]], list[list[int]]]:
    """A function mapping raw sentences to dictionary ids (each list ending in eos) via the model."""
    sp = _load_spm(model)
    table = np.full(sp.GetPieceSize(), dictionary.unk(), dtype=np.int64)
    for i in range(sp.GetPieceSize()):
        if not (sp.IsControl(i) or sp.IsUnknown(i)):
            table[i] = dictionary.index(sp.IdToPiece(i))
    eos = dictionary.eos()

    def encode(lines: list[str]) -> list[list[int]]:
        return [table[np.asarray(ids, dtype=np.int64)].tolist() + [eos] for ids in sp.Encode(lines)]

    return encode


def read_raw_text(data_dir: str | os.PathLike[str], src_lang: str, tgt_lang: str,
                  spm_model: str | os.PathLike[str]) -> TranslationData:
    """Raw parallel text ``{split}.{lang}`` in ``data_dir``, encoded with the sentencepiece model ``spm_model``.

    Source and target share the model's dictionary (:func:`spm_dictionary`; ``joined`` is True).
    ``raw_refs`` holds every split's raw target lines; ``bpe_symbol`` is ``"sentencepiece"``, so
    ``tgt_dict.string(ids, "sentencepiece")`` decodes ids back to text.
    """
    d = _check_dir(data_dir)
    _check_lang("src_lang", src_lang)
    _check_lang("tgt_lang", tgt_lang)
    texts = _read_parallel(d, src_lang, tgt_lang)
    dictionary = spm_dictionary(spm_model)
    encode = spm_encoder(spm_model, dictionary)
    data: dict[str, LanguagePairDataset | None] = dict.fromkeys(SPLITS)
    for split, (s, t) in texts.items():
        data[split] = LanguagePairDataset(TokenArray.from_lists(encode(s)), TokenArray.from_lists(encode(t)),
                                          dictionary, dictionary, name=f"{d.name}/{split}")
    return TranslationData(**data, src_dict=dictionary, tgt_dict=dictionary, src_lang=src_lang, tgt_lang=tgt_lang,
                           joined=True, raw_refs={split: t for split, (_, t) in texts.items()},
                           bpe_symbol="sentencepiece", spm_model=Path(spm_model))


def train_sentencepiece(input_files: Sequence[str | os.PathLike[str]], model_prefix: str | os.PathLike[str],
                        vocab_size: int, model_type: str = "bpe", character_coverage: float = 1.0,
                        seed: int = 0, threads: int = 1) -> Path:
    """Train a sentencepiece model on ``input_files``; write ``<model_prefix>.model`` and ``.vocab``; return the model path.

    Deterministic: the whole input is used in file order (no sampling or shuffling), one thread,
    the library's random generator seeded with ``seed``, and the sentences are streamed to the
    trainer (so no file path is recorded in the model): equal text gives byte-equal models.
    Ids 0-3 are fairseq's specials (``<s>``, ``<pad>``, ``</s>``, ``<unk>``), so model ids equal
    :func:`spm_dictionary` ids. Each file is written atomically (``.vocab``, then ``.model``:
    ``piece<TAB>score`` per line). The equivalent command line (sentencepiece's
    ``spm_train``)::

        spm_train --input=a.txt,b.txt --model_prefix=PREFIX --vocab_size=V --model_type=bpe \\
            --character_coverage=1.0 --input_sentence_size=0 --shuffle_input_sentence=false \\
            --num_threads=1 --random_seed=0 --bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3 \\
            --bos_piece='<s>' --pad_piece='<pad>' --eos_piece='</s>' --unk_piece='<unk>'
    """
    import sentencepiece as spm

    files = [Path(f) for f in input_files]
    if not files:
        raise UserError("train_sentencepiece: input_files is empty; give at least one text file")
    for f in files:
        if not f.is_file():
            raise UserError(f"sentencepiece training file {str(f)!r} does not exist")
    if model_type not in ("bpe", "unigram", "char", "word"):
        raise UserError(f"model_type={model_type!r} is not a sentencepiece model type; use bpe, unigram, char or word")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
        raise UserError(f"vocab_size={vocab_size!r} must be an integer >= 8")
    if not 0.0 < character_coverage <= 1.0:
        raise UserError(f"character_coverage={character_coverage!r} must be in (0, 1]")
    prefix = Path(model_prefix)
    model = io.BytesIO()
    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_sentences(files), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, input_sentence_size=0,
            shuffle_input_sentence=False, num_threads=threads, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
            bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    except RuntimeError as e:
        raise UserError(f"sentencepiece training on {[str(f) for f in files]} failed: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from None
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{sp.IdToPiece(i)}\t{sp.GetScore(i):g}\n" for i in range(sp.GetPieceSize()))
    atomic_write(f"{prefix}.vocab", vocab)
    atomic_write(f"{prefix}.model", model.getvalue())
    return Path(f"{prefix}.model")

