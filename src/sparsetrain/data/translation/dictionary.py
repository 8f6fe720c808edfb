"""``Dictionary``: the symbol <-> id table of a translation corpus, compatible with fairseq's ``dict.txt``.

Ids ``0..3`` are always the four special symbols, in fairseq's order::

    <s> = 0 (bos)   <pad> = 1   </s> = 2 (eos)   <unk> = 3

followed by the lines of a ``dict.txt`` in file order. Each line is ``<token> <count>``, optionally
followed by `` #fairseq:overwrite``; the token is everything before the last space (so it may not
contain a newline, but a file written by ``fairseq-preprocess`` never has one). A token listed twice
without the overwrite flag is an error, as in fairseq. The specials are never written to
``dict.txt`` (fairseq adds them itself on load), so a file saved here loads in fairseq with the same
ids and vice versa.

Written by hand because fairseq is not a dependency; only the file format and the id semantics
(specials first, ``madeupwordNNNN`` padding, frequency-sorted building with ties broken by the
symbol) follow fairseq. Reading never executes anything from the file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ...atomic import atomic_write
from ...errors import UserError

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIALS = (BOS, PAD, EOS, UNK)
OVERWRITE_FLAG = "#fairseq:overwrite"


def read_utf8(path: Path, what: str, instead_of_a_directory: str) -> str:
    """The text of ``path``; a missing file, a directory or bytes that are not UTF-8 are one-line
    ``UserError``s naming ``what`` and the path (``instead_of_a_directory`` says what to give)."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {str(path)!r} is a directory; {instead_of_a_directory}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start})") from None


class Dictionary:
    """A list of symbols; a symbol's id is its position. The first four are :data:`SPECIALS`.

    Invariants: ``len(self) >= 4``; ``self[i]`` for ``0 <= i < len(self)`` is the ``i``-th symbol and
    ``index(self[i]) == i`` unless a later ``#fairseq:overwrite`` line re-used the symbol (then the
    symbol maps to its last id, as in fairseq). ``counts[i]`` is the count from ``dict.txt`` (the
    specials get 1, ``madeupword`` padding 0).
    """

    nspecial = len(SPECIALS)

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.counts: list[int] = []
        self.indices: dict[str, int] = {}
        for s in SPECIALS:
            self.add_symbol(s)
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = range(4)

    # ----------------------------------------------------------------------------------------------
    # construction

    def add_symbol(self, symbol: str, count: int = 1, overwrite: bool = False) -> int:
        """Append ``symbol`` (or add ``count`` to an existing one, unless ``overwrite``); return its id."""
        if symbol in self.indices and not overwrite:
            i = self.indices[symbol]
            self.counts[i] += count
            return i
        i = len(self.symbols)
        self.indices[symbol] = i
        self.symbols.append(symbol)
        self.counts.append(count)
        return i

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Dictionary:
        """Read a fairseq ``dict.txt`` (UTF-8, ``token count [#fairseq:overwrite]`` per line)."""
        path = Path(path)
        text = read_utf8(path, "dictionary file", "give a dict.txt file")
        d = cls()
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip()
            if not line:
                continue
            token, count, overwrite = _parse_line(line, path, lineno)
            if token in d.indices and not overwrite:
                raise UserError(f"dictionary file {str(path)!r} line {lineno}: duplicate token {token!r}; "
                                f"a token may appear once unless its line ends with ' {OVERWRITE_FLAG}'")
            d.add_symbol(token, count, overwrite=overwrite)
        return d

    @classmethod
    def from_symbols(cls, symbols: Sequence[str]) -> Dictionary:
        """The dictionary whose ``i``-th symbol is ``symbols[i]`` (the full list, specials included).

        For dictionaries carried inside checkpoints. The first four must be :data:`SPECIALS` in order
        and the rest distinct; counts are set to 1.
        """
        symbols = list(symbols)
        if tuple(symbols[:4]) != SPECIALS:
            raise UserError(f"dictionary symbols start with {symbols[:4]!r}; the first four must be {list(SPECIALS)!r}")
        d = cls()
        for i, s in enumerate(symbols[4:], start=4):
            if not isinstance(s, str) or not s or any(c.isspace() for c in s):
                raise UserError(f"dictionary symbol {i} is {s!r}; symbols are non-empty strings without whitespace")
            if s in d.indices:
                raise UserError(f"dictionary symbol {i} {s!r} repeats symbol {d.indices[s]}; symbols must be distinct")
            d.add_symbol(s)
        return d

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], threshold: int = 1, padding_factor: int = 8) -> Dictionary:
        """A dictionary of the tokens in ``sentences`` (each a list of tokens), like ``fairseq-preprocess``.

        Tokens are sorted by count, descending, ties by the token (Unicode order); tokens seen fewer
        than ``threshold`` times are dropped (they will map to ``<unk>``). ``</s>`` is counted once
        per sentence, as fairseq does. The size is then padded to a multiple of ``padding_factor``
        with ``madeupword0000``, ``madeupword0001``, ... (``padding_factor <= 1``: no padding).
        """
        counter: Counter[str] = Counter()
        n = 0
        for tokens in sentences:
            counter.update(tokens)
            n += 1
        d = cls()
        d.counts[d.eos_index] += n
        for s in SPECIALS:
            counter.pop(s, None)
        # sorted by token first, then a stable sort by count: ties stay in token order
        for token, count in sorted(sorted(counter.items()), key=lambda kv: -kv[1]):
            if count < threshold:
                break
            d.add_symbol(token, count)
        d.pad_to_multiple_(padding_factor)
        return d

    def pad_to_multiple_(self, multiple: int) -> None:
        """Append ``madeupword0000``, ``madeupword0001``, ... (count 0) until ``len(self) % multiple == 0``.

        Names already present are skipped, so padding twice keeps growing.
        """
        if multiple <= 1:
            return
        i = 0
        while len(self) % multiple:
            if f"madeupword{i:04d}" not in self.indices:  # already there from an earlier padding
                self.add_symbol(f"madeupword{i:04d}", 0)
            i += 1

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``dict.txt`` (the non-special symbols, ``token count`` per line), atomically; returns the path."""
        lines = []
        seen: set[str] = set()
        for s, c in zip(self.symbols[self.nspecial:], self.counts[self.nspecial:]):
            flag = f" {OVERWRITE_FLAG}" if s in seen or s in SPECIALS else ""
            seen.add(s)
            lines.append(f"{s} {c}{flag}\n")
        return atomic_write(path, "".join(lines))

    # ----------------------------------------------------------------------------------------------
    # lookups

    def __len__(self) -> int:
        return len(self.symbols)

    def __getitem__(self, i: int) -> str:
        """The ``i``-th symbol; ``<unk>`` for an id outside ``[0, len)`` (as fairseq)."""
        i = int(i)
        return self.symbols[i] if 0 <= i < len(self.symbols) else UNK

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.indices

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dictionary) and self.symbols == other.symbols

    __hash__ = None  # type: ignore[assignment]

    def index(self, symbol: str) -> int:
        """The id of ``symbol``; ``unk()`` when it is not in the dictionary."""
        return self.indices.get(symbol, self.unk_index)

    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    # ----------------------------------------------------------------------------------------------
    # text <-> ids

    def encode_line(self, line: str, add_eos: bool = True) -> torch.Tensor:
        """Ids of the whitespace-separated tokens of ``line`` (unknown ones -> ``unk()``), then ``eos()``.

        Returns a 1-D ``torch.long`` tensor of ``len(line.split()) + add_eos`` ids.
        """
        ids = [self.indices.get(t, self.unk_index) for t in line.split()]
        if add_eos:
            ids.append(self.eos_index)
        return torch.tensor(ids, dtype=torch.long)

    def encode_tokens(self, tokens: Sequence[str], add_eos: bool = True) -> list[int]:
        """Ids of ``tokens`` (unknown ones -> ``unk()``), then ``eos()``, as a plain list."""
        ids = [self.indices.get(t, self.unk_index) for t in tokens]
        if add_eos:
            ids.append(self.eos_index)
        return ids

    def string(self, tokens: torch.Tensor | Sequence[int], bpe_symbol: str | None = None,
               strip_pad_eos: bool = True) -> str:
        """The symbols of ``tokens`` (a 1-D tensor or list of ids) joined by single spaces.

        ``strip_pad_eos`` drops ``<pad>``, ``</s>`` and ``<s>`` (fairseq drops eos and bos here and
        pad earlier). ``bpe_symbol`` then undoes the subword split as fairseq's ``post_process``:
        ``"@@ "`` (or ``"subword_nmt"``) removes subword-nmt joins (``"Ver@@ trag"`` -> ``"Vertrag"``);
        ``"sentencepiece"`` removes all spaces and turns ``▁`` into spaces; ``None`` or ``"none"``
        leaves the symbols as they are. A 2-D tensor gives one line per row, joined by newlines.
        """
        if torch.is_tensor(tokens) and tokens.dim() == 2:
            return "\n".join(self.string(row, bpe_symbol, strip_pad_eos) for row in tokens)
        ids = tokens.tolist() if torch.is_tensor(tokens) else [int(t) for t in tokens]
        skip = {self.pad_index, self.eos_index, self.bos_index} if strip_pad_eos else set()
        sentence = " ".join(self[i] for i in ids if i not in skip)
        return post_process(sentence, bpe_symbol)


def post_process(sentence: str, bpe_symbol: str | None) -> str:
    """Undo a subword segmentation on a space-joined string of symbols (see :meth:`Dictionary.string`)."""
    if bpe_symbol is None or bpe_symbol == "none":
        return sentence
    if bpe_symbol == "sentencepiece":
        return sentence.replace(" ", "").replace("\u2581", " ").strip()
    if bpe_symbol in ("@@ ", "@@", "subword_nmt"):
        symbol = "@@ " if bpe_symbol == "subword_nmt" else bpe_symbol
        return (sentence + " ").replace(symbol, "").rstrip()
    raise UserError(f"bpe_symbol={bpe_symbol!r} is not supported; use None, 'none', '@@ ', 'subword_nmt' "
                    "or 'sentencepiece'")


def _parse_line(line: str, path: Path, lineno: int) -> tuple[str, int, bool]:
    rest, _, field = line.rpartition(" ")
    overwrite = field == OVERWRITE_FLAG
    if overwrite:
        rest, _, field = rest.rpartition(" ")
    try:
        count = int(field)
    except ValueError:
        count = None
    if not rest or count is None:
        raise UserError(f"dictionary file {str(path)!r} line {lineno}: {line[:60]!r} is not "
                        f"'<token> <count>' (optionally followed by ' {OVERWRITE_FLAG}')")
    return rest, count, overwrite
