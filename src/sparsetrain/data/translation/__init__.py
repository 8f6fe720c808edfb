"""Translation data (fairseq-style, e.g. WMT14 En→De): dictionaries, binarized datasets, sentence pairs, corpora.

* :mod:`.dictionary`: :class:`Dictionary`, fairseq's ``dict.txt`` with the four specials first;
* :mod:`.indexed`: :class:`IndexedDataset` / :func:`write_indexed`, ``fairseq-preprocess`` ``.idx``/``.bin``
  files (mmap and legacy formats);
* :mod:`.pairs`: :class:`LanguagePairDataset`, :func:`collate` (fairseq's batch layout) and the readers
  returning :class:`TranslationData`;
* :mod:`.embedded`: an offline English→German corpus generated from ``num2words`` and ``pycountry``.
"""

from sparsetrain.data.translation.dictionary import SPECIALS, Dictionary, post_process
from sparsetrain.data.translation.embedded import (
    embedded_corpus_dir,
    embedded_translation,
    generate_pairs,
    write_embedded_corpus,
)
from sparsetrain.data.translation.indexed import (
    IndexedDataset,
    best_fitting_dtype,
    dataset_exists,
    write_indexed,
)
from sparsetrain.data.translation.pairs import (
    LanguagePairDataset,
    TokenArray,
    TranslationData,
    collate,
    read_bpe_text,
    read_fairseq_binarized,
    read_lines,
    read_raw_text,
    spm_dictionary,
    spm_encoder,
    train_sentencepiece,
)

__all__ = [
    "SPECIALS",
    "Dictionary",
    "IndexedDataset",
    "LanguagePairDataset",
    "TokenArray",
    "TranslationData",
    "best_fitting_dtype",
    "collate",
    "dataset_exists",
    "embedded_corpus_dir",
    "embedded_translation",
    "generate_pairs",
    "post_process",
    "read_bpe_text",
    "read_fairseq_binarized",
    "read_lines",
    "read_raw_text",
    "spm_dictionary",
    "spm_encoder",
    "train_sentencepiece",
    "write_embedded_corpus",
    "write_indexed",
]
