"""Corpus BLEU and chrF of decoded translations, as the GaP reference and WMT report them.

Hypotheses arrive as token ids; :func:`detokenize` turns them into plain text the way the data was
made: sentencepiece pieces are joined back (``▁`` marks a word start), subword-nmt BPE loses its
``@@`` joins and is then Moses-detokenized (``sacremoses``), and plain tokenized text is
Moses-detokenized. Scores come from ``sacrebleu`` (``BLEU`` and ``CHRF`` on detokenized text
against plain references, its default ``13a`` tokenization), both lowercased (the reference's
``sacrebleu -lc``, GaP's published numbers) and cased, each with sacrebleu's signature so a
number can be traced to its exact settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

BPE_KINDS = ("sentencepiece", "subword_nmt", "none")


@lru_cache(maxsize=4)
def _moses_detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(text: str, bpe: str, lang: str) -> str:
    """Plain text of one decoded sentence ``text`` (its symbols joined by single spaces)."""
    if bpe == "sentencepiece":
        return text.replace(" ", "").replace("\u2581", " ").strip()
    if bpe == "subword_nmt":
        text = (text + " ").replace("@@ ", "").rstrip()
    elif bpe != "none":
        raise ValueError(f"bpe={bpe!r}; valid: {', '.join(BPE_KINDS)}")
    return _moses_detokenizer(lang).detokenize(text.split())


@dataclass(frozen=True)
class Scores:
    """Corpus scores in sacrebleu's units (BLEU and chrF in 0-100) and the signatures that produced them."""

    bleu: float
    """lowercased BLEU (``sacrebleu -lc``), the reference's protocol"""
    bleu_cased: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def metrics(self) -> dict[str, float]:
        return {"bleu": self.bleu, "bleu_cased": self.bleu_cased, "chrf": self.chrf}


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """sacrebleu's corpus BLEU (lowercased and cased) and chrF of ``hypotheses`` against one reference each."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    hyps, refs = list(hypotheses), [list(references)]
    lowercase, cased, chrf = BLEU(lowercase=True), BLEU(), CHRF()
    return Scores(lowercase.corpus_score(hyps, refs).score, cased.corpus_score(hyps, refs).score,
                  chrf.corpus_score(hyps, refs).score, str(lowercase.get_signature()), str(chrf.get_signature()))
