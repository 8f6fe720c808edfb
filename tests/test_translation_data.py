"""Translation data layer: fairseq dictionaries, binarized datasets (checked against hand-built bytes),
sentence pairs and their batches, the three corpus readers, and the embedded En-De corpus."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from sparsetrain.data.translation import (
    Dictionary,
    IndexedDataset,
    LanguagePairDataset,
    collate,
    embedded_translation,
    generate_pairs,
    read_bpe_text,
    read_fairseq_binarized,
    read_raw_text,
    train_sentencepiece,
    write_embedded_corpus,
    write_indexed,
)
from sparsetrain.errors import UserError


def one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


# ------------------------------------------------------------------------------------------------
# Dictionary


def test_dictionary_specials_and_fairseq_file(tmp_path):
    p = tmp_path / "dict.txt"
    p.write_text("der 10\nHaus 7\nHa@@ 3\nus 2 #fairseq:overwrite\n", encoding="utf-8")
    d = Dictionary.load(p)
    assert [d.bos(), d.pad(), d.eos(), d.unk()] == [0, 1, 2, 3]
    assert [d[i] for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert len(d) == 8 and d.index("der") == 4 and d.index("us") == 7
    assert d.index("nope") == d.unk() and d[1000] == "<unk>"
    ids = d.encode_line("  der Ha@@ us  nope ")
    assert ids.dtype == torch.long and ids.tolist() == [4, 6, 7, 3, 2]
    assert d.encode_line("der", add_eos=False).tolist() == [4]
    assert d.string(ids) == "der Ha@@ us <unk>"
    assert d.string(ids, bpe_symbol="@@ ") == "der Haus <unk>"
    assert d.string(torch.tensor([4, 2, 1, 1]), strip_pad_eos=False) == "der </s> <pad> <pad>"
    # save -> load round trip, byte-equal to the input for a plain file
    d.save(tmp_path / "out" / "dict.txt")
    assert Dictionary.load(tmp_path / "out" / "dict.txt") == d
    plain = tmp_path / "plain.txt"
    plain.write_text("a 5\nb 3\n", encoding="utf-8")
    Dictionary.load(plain).save(tmp_path / "plain2.txt")
    assert (tmp_path / "plain2.txt").read_bytes() == plain.read_bytes()


def test_dictionary_errors_are_one_line(tmp_path):
    dup = tmp_path / "dict.dup.txt"
    dup.write_text("a 1\nb 2\na 3\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        Dictionary.load(dup)
    one_line(e, "dict.dup.txt", "line 3", "'a'")
    bad = tmp_path / "dict.bad.txt"
    bad.write_text("a 1\nnocount\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        Dictionary.load(bad)
    one_line(e, "dict.bad.txt", "line 2")
    with pytest.raises(UserError) as e:
        Dictionary.load(tmp_path / "missing.txt")
    one_line(e, "missing.txt")
    with pytest.raises(UserError) as e:
        Dictionary.from_symbols(["<pad>", "<s>", "</s>", "<unk>", "x"])
    one_line(e)


def test_dictionary_build_pad_and_from_symbols():
    sents = [["b", "a", "c"], ["a", "c"], ["a", "d"]]
    d = Dictionary.build(sents, threshold=1, padding_factor=8)
    # count descending, ties by symbol: a(3), c(2), b(1), d(1); then padding to 8
    assert d.symbols == ["<s>", "<pad>", "</s>", "<unk>", "a", "c", "b", "d"]
    d2 = Dictionary.build(sents, threshold=2, padding_factor=8)
    assert d2.symbols[4:] == ["a", "c", "madeupword0000", "madeupword0001"]
    d3 = Dictionary.from_symbols(d2.symbols)
    assert d3 == d2 and d3.index("madeupword0001") == 7
    d3.pad_to_multiple_(5)
    assert len(d3) == 10 and d3.symbols[8:] == ["madeupword0002", "madeupword0003"]


def test_dictionary_string_sentencepiece():
    d = Dictionary.from_symbols(["<s>", "<pad>", "</s>", "<unk>", "\u2581Das", "\u2581Ha", "us", "."])
    assert d.string(torch.tensor([4, 5, 6, 7, 2]), bpe_symbol="sentencepiece") == "Das Haus."
    assert d.string(torch.tensor([[4, 2, 1], [5, 6, 2]]), bpe_symbol="sentencepiece") == "Das\nHaus"


# ------------------------------------------------------------------------------------------------
# binarized datasets

SEQS = [[5, 6, 2], [7, 2], [2], [9, 8, 7, 6, 2]]


@pytest.mark.parametrize("fmt", ["mmap", "legacy"])
@pytest.mark.parametrize("dtype", [None, np.uint16, np.int32, np.int64])
def test_writer_reader_round_trip(tmp_path, fmt, dtype):
    prefix = tmp_path / "train.en-de.en"
    write_indexed(prefix, [torch.tensor(s) for s in SEQS], format=fmt, dtype=dtype)
    ds = IndexedDataset(prefix)
    assert ds.format == fmt and len(ds) == 4
    assert [ds[i].tolist() for i in range(4)] == SEQS and ds[-1].tolist() == SEQS[-1]
    assert ds[0].dtype == torch.long
    assert ds.sizes.dtype == np.int64 and ds.sizes.tolist() == [3, 2, 1, 5]
    again = pickle.loads(pickle.dumps(ds))
    assert again[3].tolist() == SEQS[3]
    with pytest.raises(IndexError):
        ds[4]


def test_mmap_bytes_by_hand(tmp_path):
    """fairseq's MMIDIDX layout written byte by byte: uint16 (code 8), byte pointers, no doc index."""
    seqs = [[4, 5, 2], [70000 % 65536, 2]]
    data = np.array([4, 5, 2, 4464, 2], dtype="<u2").tobytes()
    idx = (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8) + struct.pack("<Q", 2)
           + struct.pack("<2i", 3, 2) + struct.pack("<2q", 0, 6))
    (tmp_path / "x.bin").write_bytes(data)
    (tmp_path / "x.idx").write_bytes(idx)
    ds = IndexedDataset(tmp_path / "x")
    assert ds.format == "mmap" and ds.dtype == np.uint16
    assert [ds[i].tolist() for i in range(2)] == seqs and ds.sizes.tolist() == [3, 2]
    # our writer produces exactly these bytes
    write_indexed(tmp_path / "y", seqs, format="mmap", dtype=np.uint16)
    assert (tmp_path / "y.idx").read_bytes() == idx and (tmp_path / "y.bin").read_bytes() == data
    # Megatron's variant (doc count after n, doc_idx at the end) reads the same
    megatron = idx[:26] + struct.pack("<Q", 2) + idx[26:] + struct.pack("<2q", 0, 2)
    (tmp_path / "m.idx").write_bytes(megatron)
    (tmp_path / "m.bin").write_bytes(data)
    assert [IndexedDataset(tmp_path / "m")[i].tolist() for i in range(2)] == seqs


def test_legacy_bytes_by_hand(tmp_path):
    """TNTIDX layout: int32 (code 4, element size 4), element offsets, ids stored plus one."""
    data = np.array([5, 6, 3, 8, 3], dtype="<i4").tobytes()  # ids 4 5 2 | 7 2, each + 1
    idx = (b"TNTIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<QQ", 4, 4) + struct.pack("<QQ", 2, 2)
           + struct.pack("<3q", 0, 1, 2) + struct.pack("<3q", 0, 3, 5) + struct.pack("<2q", 3, 2))
    (tmp_path / "x.bin").write_bytes(data)
    (tmp_path / "x.idx").write_bytes(idx)
    ds = IndexedDataset(tmp_path / "x")
    assert ds.format == "legacy" and ds.dtype == np.int32
    assert [ds[0].tolist(), ds[1].tolist()] == [[4, 5, 2], [7, 2]] and ds.sizes.tolist() == [3, 2]
    write_indexed(tmp_path / "y", [[4, 5, 2], [7, 2]], format="legacy")
    assert (tmp_path / "y.idx").read_bytes() == idx and (tmp_path / "y.bin").read_bytes() == data


def test_indexed_errors_name_the_file(tmp_path):
    write_indexed(tmp_path / "ok", SEQS, format="mmap", dtype=np.int32)
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "absent")
    one_line(e, "absent.idx")
    (tmp_path / "bad.idx").write_bytes(b"NOTMAGIC" + bytes(40))
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "bad")
    one_line(e, "bad.idx")
    idx = (tmp_path / "ok.idx").read_bytes()
    (tmp_path / "short.idx").write_bytes(idx[:-5])
    (tmp_path / "short.bin").write_bytes((tmp_path / "ok.bin").read_bytes())
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "short")
    one_line(e, "short.idx", "truncated")
    (tmp_path / "cut.idx").write_bytes(idx)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:-8])
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "cut")
    one_line(e, "cut.bin")
    write_indexed(tmp_path / "leg", SEQS, format="legacy")
    (tmp_path / "leg.idx").write_bytes((tmp_path / "leg.idx").read_bytes()[:30])
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "leg")
    one_line(e, "leg.idx")


# ------------------------------------------------------------------------------------------------
# pairs and batches


def _dict(n=12):
    return Dictionary.from_symbols(["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(n - 4)])


def test_collate_layout_fairseq():
    d = _dict()
    src = [torch.tensor([5, 6, 2]), torch.tensor([7, 8, 9, 10, 2])]
    tgt = [torch.tensor([4, 5, 6, 2]), torch.tensor([7, 2])]
    ds = LanguagePairDataset(src, tgt, d, d)
    assert ds.src_sizes.tolist() == [3, 5] and ds.tgt_sizes.tolist() == [4, 2] and ds.src_sizes.dtype == np.int64
    item = ds[1]
    assert item["id"] == 1 and item["source"].tolist() == [7, 8, 9, 10, 2] and item["target"].tolist() == [7, 2]
    b = ds.collater([ds[0], ds[1]])  # shorter source first: kept in this order (fairseq would swap)
    assert b["id"].tolist() == [0, 1] and b["nsentences"] == 2 and b["ntokens"] == 6
    assert b["net_input"]["src_tokens"].tolist() == [[1, 1, 5, 6, 2], [7, 8, 9, 10, 2]]
    assert b["net_input"]["src_lengths"].tolist() == [3, 5]
    assert b["net_input"]["prev_output_tokens"].tolist() == [[2, 4, 5, 6], [2, 7, 1, 1]]
    assert b["target"].tolist() == [[4, 5, 6, 2], [7, 2, 1, 1]]
    assert collate([], 1, 2) == {}
    with pytest.raises(UserError) as e:
        LanguagePairDataset([torch.tensor([5, 6])], [torch.tensor([2])], d, d)[0]
    one_line(e, "source sentence 0")
    with pytest.raises(UserError):
        LanguagePairDataset(src, tgt[:1], d, d)


# ------------------------------------------------------------------------------------------------
# readers

EN = ["the house", "a small cat sits", "good morning"]
DE = ["das Ha@@ us", "eine kleine Katze sitzt", "guten Morgen"]


def _write_text(d, split, en, de, src="en", tgt="de"):
    (d / f"{split}.{src}").write_text("".join(s + "\n" for s in en), encoding="utf-8")
    (d / f"{split}.{tgt}").write_text("".join(s + "\n" for s in de), encoding="utf-8")


def test_read_bpe_text_builds_joined_dictionary(tmp_path):
    _write_text(tmp_path, "train", EN, DE)
    _write_text(tmp_path, "test", EN[:1], ["das Haus Maus"])
    (tmp_path / "test.raw.de").write_text("Das Haus Maus.\n", encoding="utf-8")
    data = read_bpe_text(tmp_path, "en", "de")
    assert data.joined and data.src_dict is data.tgt_dict and data.valid is None
    assert len(data.train) == 3 and len(data.src_dict) % 8 == 0
    t = data.train[0]["target"]
    assert t[-1].item() == 2 and data.tgt_dict.string(t, "@@ ") == "das Haus"
    assert data.test[0]["target"][-2].item() == data.tgt_dict.unk()  # "Maus" never seen in train
    assert data.reference_text("test") == ["Das Haus Maus."] and data.bpe_symbol == "@@ "
    # an explicit dict.txt wins
    Dictionary.build([s.split() for s in EN + DE]).save(tmp_path / "dict.txt")
    assert read_bpe_text(tmp_path, "en", "de").src_dict == Dictionary.load(tmp_path / "dict.txt")


def test_text_errors(tmp_path):
    _write_text(tmp_path, "train", EN, DE[:2])
    with pytest.raises(UserError) as e:
        read_bpe_text(tmp_path, "en", "de")
    one_line(e, "train.en", "train.de", "3", "2")
    _write_text(tmp_path, "train", EN, ["das", "", "gut"])
    with pytest.raises(UserError) as e:
        read_bpe_text(tmp_path, "en", "de")
    one_line(e, "train.de", "line 2")
    (tmp_path / "train.de").unlink()
    with pytest.raises(UserError) as e:
        read_bpe_text(tmp_path, "en", "de")
    one_line(e, "train.de")


@pytest.mark.parametrize("fmt", ["mmap", "legacy"])
def test_read_fairseq_binarized(tmp_path, fmt):
    d = Dictionary.build([s.split() for s in EN + DE])
    d.save(tmp_path / "dict.en.txt")
    d.save(tmp_path / "dict.de.txt")
    for split in ("train", "valid"):
        for lang, text in (("en", EN), ("de", DE)):
            write_indexed(tmp_path / f"{split}.en-de.{lang}", [d.encode_line(s) for s in text], format=fmt)
    data = read_fairseq_binarized(tmp_path)
    assert (data.src_lang, data.tgt_lang, data.joined) == ("en", "de", True) and data.test is None
    assert data.tgt_dict.string(data.valid[1]["target"]) == DE[1]
    assert data.train.src_sizes.tolist() == [3, 5, 3]
    # the reversed direction reads the same files
    rev = read_fairseq_binarized(tmp_path, src_lang="de")
    assert rev.tgt_lang == "en" and rev.tgt_dict.string(rev.train[0]["target"]) == EN[0]
    # a second pair makes inference ambiguous
    write_indexed(tmp_path / "train.en-fr.fr", [d.encode_line(s) for s in EN], format=fmt)
    with pytest.raises(UserError) as e:
        read_fairseq_binarized(tmp_path)
    one_line(e, "en-de", "en-fr")
    # a split with mismatched lengths
    write_indexed(tmp_path / "valid.en-de.de", [d.encode_line(s) for s in DE[:2]], format=fmt)
    with pytest.raises(UserError) as e:
        read_fairseq_binarized(tmp_path, "en", "de")
    one_line(e, "valid.en-de.en", "valid.en-de.de")


def test_read_fairseq_binarized_separate_dicts_and_bad_ids(tmp_path):
    de, en = Dictionary.build([s.split() for s in DE]), Dictionary.build([s.split() for s in EN], padding_factor=1)
    en.save(tmp_path / "dict.en.txt")
    de.save(tmp_path / "dict.de.txt")
    write_indexed(tmp_path / "test.en-de.en", [en.encode_line(s) for s in EN])
    write_indexed(tmp_path / "test.en-de.de", [de.encode_line(s) for s in DE])
    data = read_fairseq_binarized(tmp_path, "en", "de")
    assert not data.joined and data.train is None and data.src_dict.string(data.test[2]["source"]) == EN[2]
    write_indexed(tmp_path / "test.en-de.en", [torch.tensor([len(en) + 5, 2])] * 3)
    with pytest.raises(UserError) as e:
        read_fairseq_binarized(tmp_path, "en", "de")
    one_line(e, "test.en-de.en.bin")


# ------------------------------------------------------------------------------------------------
# sentencepiece and the embedded corpus


def test_raw_text_with_sentencepiece(tmp_path):
    pairs = generate_pairs(3, 400)
    _write_text(tmp_path, "train", [e for e, _ in pairs[:350]], [g for _, g in pairs[:350]])
    _write_text(tmp_path, "test", [e for e, _ in pairs[350:]], [g for _, g in pairs[350:]])
    m1 = train_sentencepiece([tmp_path / "train.en", tmp_path / "train.de"], tmp_path / "a" / "spm", 300)
    m2 = train_sentencepiece([tmp_path / "train.en", tmp_path / "train.de"], tmp_path / "b" / "other", 300)
    assert m1.read_bytes() == m2.read_bytes() and (tmp_path / "a" / "spm.vocab").is_file()
    data = read_raw_text(tmp_path, "en", "de", m1)
    assert data.joined and data.bpe_symbol == "sentencepiece" and data.valid is None
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(m1))
    assert [sp.IdToPiece(i) for i in range(sp.GetPieceSize())] == data.src_dict.symbols[:sp.GetPieceSize()]
    for i in range(len(data.test)):
        assert data.tgt_dict.string(data.test[i]["target"], "sentencepiece") == data.raw_refs["test"][i]
        assert data.src_dict.string(data.test[i]["source"], "sentencepiece") == pairs[350 + i][0]
    with pytest.raises(UserError) as e:
        train_sentencepiece([tmp_path / "test.en"], tmp_path / "c", 100000)
    one_line(e, "test.en")


def test_embedded_pairs_properties():
    pairs = generate_pairs(0, 3000)
    assert generate_pairs(0, 3000) == pairs and generate_pairs(1, 50) != pairs[:50]
    assert len({e for e, _ in pairs}) == 3000
    assert all(len(e.split()) >= 4 and len(g.split()) >= 4 for e, g in pairs)
    german = " ".join(g for _, g in pairs)
    for word in ("hundert", "Frankreich", "Euro", "Deutsch", " und ", "am "):
        assert word in german, word
    assert any(w.endswith("undzwanzig") and len(w) > 15 for w in german.split())  # e.g. dreihundertvierundzwanzig


def test_write_embedded_corpus_deterministic_and_disjoint(tmp_path):
    a = write_embedded_corpus(tmp_path / "a", seed=5, n_train=300, n_valid=40, n_test=40)
    b = write_embedded_corpus(tmp_path / "b", seed=5, n_train=300, n_valid=40, n_test=40)
    names = ["train.en", "train.de", "valid.en", "valid.de", "test.en", "test.de"]
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    lines = {n: (a / n).read_text(encoding="utf-8").splitlines() for n in names}
    assert [len(lines[n]) for n in names] == [300, 300, 40, 40, 40, 40]
    train = set(zip(lines["train.en"], lines["train.de"]))
    test = set(zip(lines["test.en"], lines["test.de"]))
    valid = set(zip(lines["valid.en"], lines["valid.de"]))
    assert not train & test and not train & valid and not valid & test
    assert not set(lines["train.en"]) & set(lines["test.en"])
    # reuse leaves the files alone; other parameters or foreign files are refused
    before = hashlib.sha256((a / "train.de").read_bytes()).hexdigest()
    assert write_embedded_corpus(a, seed=5, n_train=300, n_valid=40, n_test=40) == a
    assert hashlib.sha256((a / "train.de").read_bytes()).hexdigest() == before
    with pytest.raises(UserError) as e:
        write_embedded_corpus(a, seed=6, n_train=300, n_valid=40, n_test=40)
    one_line(e, str(a))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as e:
        write_embedded_corpus(tmp_path / "c", n_train=10, n_valid=2, n_test=2)
    one_line(e, "notes.txt")
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_embedded_translation_default_sizes(tmp_path):
    data = embedded_translation(tmp_path, seed=0, vocab_size=1000)
    assert (len(data.train), len(data.valid), len(data.test)) == (12000, 500, 500)
    assert data.joined and len(data.src_dict) == 1000 and data.src_lang == "en" and data.tgt_lang == "de"
    refs = data.reference_text("test")
    assert all(data.tgt_dict.string(data.test[i]["target"], "sentencepiece") == refs[i] for i in range(len(refs)))
    unk = data.src_dict.unk()
    assert all(unk not in data.train[i]["target"].tolist() for i in range(0, 12000, 97))
    model = data.spm_model.read_bytes()
    again = embedded_translation(tmp_path, seed=0, vocab_size=1000)  # reused, identical
    assert again.spm_model.read_bytes() == model
    other = tmp_path / "fresh"
    assert embedded_translation(other, seed=0, vocab_size=1000).spm_model.read_bytes() == model


def test_float_dtype_code_and_reference_count_are_refused(tmp_path):
    idx = (b"TNTIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<QQ", 6, 8) + struct.pack("<QQ", 1, 1)
           + struct.pack("<2q", 0, 1) + struct.pack("<2q", 0, 1) + struct.pack("<q", 1))
    (tmp_path / "f.idx").write_bytes(idx)
    (tmp_path / "f.bin").write_bytes(np.array([3.0]).tobytes())
    with pytest.raises(UserError) as e:
        IndexedDataset(tmp_path / "f")
    one_line(e, "f.idx", "dtype code 6")
    _write_text(tmp_path, "train", EN, DE)
    _write_text(tmp_path, "valid", EN, DE)
    (tmp_path / "refs.txt").write_text("only one line\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_bpe_text(tmp_path, "en", "de", references={"valid": tmp_path / "refs.txt"})
    one_line(e, "refs.txt", "1 lines", "3 sentence pairs")
