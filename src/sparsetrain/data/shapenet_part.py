"""ShapeNet part segmentation (the ``..._v0_normal`` release) as a deterministic torch Dataset.

What it reads: the directory layout of ``shapenetcore_partanno_segmentation_benchmark_v0_normal``
as used by the common PointNet++ PyTorch implementation (``PartNormalDataset``):

* ``<root>/synsetoffset2category.txt``: one ``Category<TAB>synset`` line per category;
* ``<root>/train_test_split/shuffled_{train,val,test}_file_list.json``: JSON lists of entries
  ``"shape_data/<synset>/<token>"``;
* ``<root>/<synset>/<token>.txt``: one text file per shape, one point per row,
  ``x y z nx ny nz part`` (seven numbers; ``part`` is a global part id 0..49 written as a float).

Semantics kept from the reference: categories are the 16 below, in the order of the real
``synsetoffset2category.txt`` (alphabetical, which is also synset order); items are grouped by
category and sorted by token within a category; ``trainval`` is the union of ``train`` and
``val``; xyz of the WHOLE shape is centred on its centroid and divided by its largest distance to
the centroid (so it fits the unit sphere, touching it), normals are kept unchanged; each item
draws ``npoints`` row indices uniformly WITH replacement from the shape's rows; the common
training augmentation is one scale in [0.8, 1.25] and then one shift in [-0.1, 0.1]^3 per cloud,
applied to xyz only.

What differs (on purpose): the reference draws from numpy's global RNG, so two runs (or two
DataLoader workers) see different samples. Here every random draw is a pure function of
``(seed, index, epoch)``: :meth:`ShapeNetPart.set_epoch` selects the epoch, training splits draw
new samples each epoch, and the ``val``/``test`` splits draw the same samples every time (their
epoch is always 0). The category index is the position in :data:`CATEGORIES` (the reference
uses the line order of ``synsetoffset2category.txt``; for the real file they agree), so a model's
16-way one-hot and :data:`SEG_CLASSES` always mean the same thing.

Why hand-written: the reference parses with ``np.loadtxt`` and reports nothing useful on a bad
file, draws from global random state, and exits the process on a bad split name. This reader
checks every file and row (one-line :class:`~sparsetrain.errors.UserError` naming the file and
line), never unpickles anything, and :func:`write_shapenet_part` writes the same layout (tests, the
embedded offline dataset) without ever writing outside the directory it is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_write
from ..errors import UserError, UserOSError, os_error_message
from .base import write_unsynced

__all__ = [
    "CATEGORIES",
    "CATEGORY_FILE",
    "MANIFEST_NAME",
    "NUM_CATEGORIES",
    "NUM_PARTS",
    "PART_TO_CATEGORY",
    "SEG_CLASSES",
    "SPLITS",
    "SPLIT_DIR",
    "SYNSETS",
    "ShapeNetPart",
    "read_shape_file",
    "split_file_name",
    "write_shapenet_part",
]

#: The 16 ShapeNet-part categories in the order of the real ``synsetoffset2category.txt``.
CATEGORIES: tuple[str, ...] = (
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
    "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table",
)

#: Category -> its ShapeNetCore synset offset (the name of its directory under the root).
SYNSETS: dict[str, str] = {
    "Airplane": "02691156", "Bag": "02773838", "Cap": "02954340", "Car": "02958343",
    "Chair": "03001627", "Earphone": "03261776", "Guitar": "03467517", "Knife": "03624134",
    "Lamp": "03636649", "Laptop": "03642806", "Motorbike": "03790512", "Mug": "03797390",
    "Pistol": "03948459", "Rocket": "04099429", "Skateboard": "04225987", "Table": "04379243",
}

#: Category -> its global part ids (contiguous; together they are exactly 0..49).
SEG_CLASSES: dict[str, tuple[int, ...]] = {
    "Airplane": (0, 1, 2, 3), "Bag": (4, 5), "Cap": (6, 7), "Car": (8, 9, 10, 11),
    "Chair": (12, 13, 14, 15), "Earphone": (16, 17, 18), "Guitar": (19, 20, 21), "Knife": (22, 23),
    "Lamp": (24, 25, 26, 27), "Laptop": (28, 29), "Motorbike": (30, 31, 32, 33, 34, 35),
    "Mug": (36, 37), "Pistol": (38, 39, 40), "Rocket": (41, 42, 43), "Skateboard": (44, 45, 46),
    "Table": (47, 48, 49),
}

#: Global part id -> the category it belongs to.
PART_TO_CATEGORY: dict[int, str] = {p: c for c, parts in SEG_CLASSES.items() for p in parts}

NUM_CATEGORIES = len(CATEGORIES)  # 16
NUM_PARTS = len(PART_TO_CATEGORY)  # 50
SPLITS = ("train", "val", "trainval", "test")
CATEGORY_FILE = "synsetoffset2category.txt"
SPLIT_DIR = "train_test_split"
#: Written by :func:`write_shapenet_part` in the root it creates; the reader ignores it.
MANIFEST_NAME = "sparsetrain_shapenet_part.json"
_MANIFEST_FORMAT = "sparsetrain-shapenet-part"
_COLUMNS = 7
_SCALE_RANGE = (0.8, 1.25)
_SHIFT_RANGE = 0.1
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")  # a plain file name: no separator, no "..", no hidden


def split_file_name(split: str) -> str:
    """``train_test_split/shuffled_<split>_file_list.json`` (relative to the root) for a file split."""
    return f"{SPLIT_DIR}/shuffled_{split}_file_list.json"


def _plain_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.match(value)) and value not in (".", "..")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"missing file '{path}'") from None
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "read")) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"'{path}': not UTF-8 text (byte {exc.start}); expected rows of numbers") from None


def _row_error(path: Path, text: str, valid_parts: tuple[int, ...]) -> UserError:
    """The first bad row of a shape file, as a one-line error (the slow path; called on failure only)."""
    allowed = f"{valid_parts[0]}..{valid_parts[-1]}"
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != _COLUMNS:
            return UserError(f"'{path}' line {number}: {len(fields)} columns; expected 7 (x y z nx ny nz part)")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            return UserError(f"'{path}' line {number}: {bad[:40]!r} is not a number; expected 7 numbers per row")
        if not all(math.isfinite(v) for v in values):
            return UserError(f"'{path}' line {number}: non-finite value; expected finite numbers")
        part = values[-1]
        if part != int(part) or int(part) not in valid_parts:
            return UserError(f"'{path}' line {number}: part {fields[-1]!r} is not a part of this category; "
                             f"valid: {allowed}")
    return UserError(f"'{path}': unreadable rows; expected 7 numbers per row")  # not reached for a bad file


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_shape_file(path: str | os.PathLike[str], category: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one shape file exactly as stored (not normalised).

    Returns ``points`` float32 ``(N, 6)`` (``x y z nx ny nz``) and ``parts`` int64 ``(N,)`` with
    every value in ``SEG_CLASSES[category]``. Blank lines are skipped; ``N >= 1``. Raises a one-line
    :class:`UserError` naming the file and line for a missing or empty file, a row without exactly 7
    columns, a non-number or non-finite value, or a part id outside the category.

    Speed: one ``str.split`` of the whole text and one ``np.array(..., float64)`` conversion (about
    as fast as numpy 2's C ``loadtxt`` and faster than numpy 1's); rows are checked per line only
    for their column count, and the slow per-line parser runs only to word an error.
    """
    path = Path(path)
    if category not in SEG_CLASSES:
        raise UserError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
    valid_parts = SEG_CLASSES[category]
    text = _read_text(path)
    lines = [line for line in text.splitlines() if line and not line.isspace()]
    if not lines:
        raise UserError(f"'{path}': empty shape file; expected rows 'x y z nx ny nz part'")
    if any(len(line.split()) != _COLUMNS for line in lines):
        raise _row_error(path, text, valid_parts)
    try:
        values = np.array(text.split(), dtype=np.float64).reshape(len(lines), _COLUMNS)
    except ValueError:
        raise _row_error(path, text, valid_parts) from None
    part_values = values[:, -1]
    parts = part_values.astype(np.int64)
    if (not np.isfinite(values).all() or (parts != part_values).any()
            or (parts < valid_parts[0]).any() or (parts > valid_parts[-1]).any()):
        raise _row_error(path, text, valid_parts)
    return values[:, :6].astype(np.float32), parts


def _normalise(xyz: np.ndarray, path: Path) -> np.ndarray:
    """Centre ``xyz`` (N, 3) on its centroid and scale so the farthest point is at distance 1."""
    xyz = xyz.astype(np.float64)
    xyz = xyz - xyz.mean(axis=0)
    radius = float(np.sqrt((xyz * xyz).sum(axis=1)).max())
    if not radius > 0.0:
        raise UserError(f"'{path}': all points coincide; a shape needs at least two distinct points")
    return (xyz / radius).astype(np.float32)


def _read_categories(root: Path) -> dict[str, str]:
    """Category name -> synset, in file order, from ``synsetoffset2category.txt``."""
    path = root / CATEGORY_FILE
    text = _read_text(path)
    result: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"'{path}' line {number}: {len(fields)} fields; expected 'Category<TAB>synset'")
        name, synset = fields
        if name not in SEG_CLASSES:
            raise UserError(f"'{path}' line {number}: unknown category {name!r}; valid: {', '.join(CATEGORIES)}")
        if not _plain_name(synset):
            raise UserError(f"'{path}' line {number}: synset {synset!r} is not a plain directory name")
        if name in result or synset in result.values():
            raise UserError(f"'{path}' line {number}: {name} {synset} listed twice; expected each once")
        result[name] = synset
    if not result:
        raise UserError(f"'{path}': no categories; expected lines 'Category<TAB>synset'")
    return result


def _read_split(root: Path, split: str, synset_to_category: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(synset, token)`` pairs of one split file, in file order."""
    path = root / split_file_name(split)
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}': not valid JSON (line {exc.lineno}); expected a list of "
                        "'shape_data/<synset>/<token>'") from None
    if not isinstance(entries, list):
        raise UserError(f"'{path}': a JSON {type(entries).__name__}; expected a list of 'shape_data/<synset>/<token>'")
    pairs = []
    for position, entry in enumerate(entries):
        fields = entry.split("/") if isinstance(entry, str) else []
        if len(fields) != 3 or not _plain_name(fields[1]) or not _plain_name(fields[2]):
            raise UserError(f"'{path}' entry {position}: {str(entry)[:80]!r}; expected 'shape_data/<synset>/<token>'")
        if fields[1] not in synset_to_category:
            raise UserError(f"'{path}' entry {position}: synset {fields[1]!r} is not in {CATEGORY_FILE}")
        pairs.append((fields[1], fields[2]))
    return pairs


class ShapeNetPart(Dataset):
    """ShapeNet part segmentation: item ``i`` -> ``(points, category, parts)``.

    * ``points``: float32 tensor ``(npoints, 3)`` (xyz) or ``(npoints, 6)`` (xyz + unit normals,
      ``normal_channel=True``); xyz of the whole shape normalised into the unit sphere, then
      (``augment=True``) scaled by one factor in [0.8, 1.25] and shifted by one vector in
      [-0.1, 0.1]^3 (normals untouched);
    * ``category``: int64 scalar tensor, the index into :data:`CATEGORIES` (0..15);
    * ``parts``: int64 tensor ``(npoints,)``, global part ids, all in ``SEG_CLASSES[category]``.

    ``npoints`` row indices are drawn uniformly with replacement. Draws depend only on
    ``(seed, index, epoch)``; ``epoch`` is what :meth:`set_epoch` set (0 initially) for ``train``
    and ``trainval`` and always 0 for ``val`` and ``test``. DataLoader workers get a copy of the
    dataset when an epoch's iterator starts, so call ``set_epoch`` before iterating (with
    ``persistent_workers=True`` the workers would keep the old epoch).

    Parsed shapes are cached in memory (``cache=True``; about 12 (xyz) or 24 (with normals) bytes
    per row plus 8 for the part; the full release is ~45M rows). All files of the split must exist
    when the dataset is built; their rows are checked when first read.

    Attributes: ``num_categories`` (16), ``num_parts`` (50), ``category_names`` (:data:`CATEGORIES`),
    ``categories`` (category index per item), ``tokens`` and ``files`` (per item), ``split``,
    ``npoints``, ``normal_channel``, ``augment``, ``seed``, ``epoch``.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", npoints: int = 2048,
                 normal_channel: bool = False, categories: Iterable[str] | None = None, augment: bool = False,
                 seed: int = 0, cache: bool = True) -> None:
        if split not in SPLITS:
            raise UserError(f"split {split!r} is not valid; valid: {', '.join(SPLITS)}")
        if isinstance(npoints, bool) or not isinstance(npoints, int) or npoints < 1:
            raise UserError(f"npoints {npoints!r} is not valid; expected an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed {seed!r} is not valid; expected an integer >= 0")
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"ShapeNet part root '{self.root}' is not a directory; expected the "
                            "shapenetcore_partanno_segmentation_benchmark_v0_normal directory")
        self.split = split
        self.npoints = npoints
        self.normal_channel = bool(normal_channel)
        self.augment = bool(augment)
        self.seed = seed
        self.epoch = 0
        self.cache = bool(cache)
        self.num_categories = NUM_CATEGORIES
        self.num_parts = NUM_PARTS
        self.category_names = CATEGORIES

        listed = _read_categories(self.root)
        if categories is None:
            chosen = list(listed)
        else:
            chosen = [categories] if isinstance(categories, str) else list(categories)
            for name in chosen:
                if name not in listed:
                    raise UserError(f"category {name!r} is not in '{self.root / CATEGORY_FILE}'; "
                                    f"valid: {', '.join(listed)}")
        chosen_set = set(chosen)
        synset_to_category = {synset: name for name, synset in listed.items()}
        file_splits = ("train", "val") if split == "trainval" else (split,)
        tokens_by_category: dict[str, set[str]] = {name: set() for name in listed}
        for file_split in file_splits:
            for synset, token in _read_split(self.root, file_split, synset_to_category):
                tokens_by_category[synset_to_category[synset]].add(token)

        self.tokens: list[str] = []
        self.files: list[Path] = []
        self.categories: list[int] = []
        self._category_names: list[str] = []
        for name in listed:  # the reference's order: categories as listed, tokens sorted
            if name not in chosen_set:
                continue
            for token in sorted(tokens_by_category[name]):
                path = self.root / listed[name] / f"{token}.txt"
                if not path.is_file():
                    raise UserError(f"missing shape file '{path}' (listed in {split_file_name(file_splits[0])}"
                                    f"{' or val' if split == 'trainval' else ''})")
                self.tokens.append(token)
                self.files.append(path)
                self.categories.append(CATEGORIES.index(name))
                self._category_names.append(name)
        if not self.files:
            raise UserError(f"no shapes of {', '.join(chosen)} in split {split!r} under '{self.root}'")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws ``__getitem__`` makes (training splits; no effect on val/test)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise UserError(f"epoch {epoch!r} is not valid; expected an integer >= 0")
        self.epoch = epoch

    def _index(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} shapes")
        return index

    def load_shape(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole normalised shape ``index``: ``points`` float32 ``(N, 3|6)``, ``parts`` int64 ``(N,)``.

        xyz has centroid 0 and maximum norm 1; normals as stored. The arrays are the cached ones:
        do not modify them.
        """
        index = self._index(index)
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        path = self.files[index]
        raw, parts = read_shape_file(path, self._category_names[index])
        xyz = _normalise(raw[:, :3], path)
        points = np.concatenate([xyz, raw[:, 3:6]], axis=1) if self.normal_channel else xyz
        points.setflags(write=False)
        parts.setflags(write=False)
        if self.cache:
            self._cache[index] = (points, parts)
        return points, parts

    def _effective_epoch(self) -> int:
        return self.epoch if self.split in ("train", "trainval") else 0

    def sample_indices(self, index: int) -> np.ndarray:
        """The ``npoints`` row indices (int64, with replacement) item ``index`` uses this epoch."""
        index = self._index(index)
        rows = len(self.load_shape(index)[1])
        rng = np.random.default_rng([self.seed, index, self._effective_epoch(), 0])
        return rng.integers(0, rows, size=self.npoints, dtype=np.int64)

    def augmentation(self, index: int) -> tuple[float, np.ndarray]:
        """The ``(scale, shift (3,))`` item ``index`` gets this epoch when ``augment=True``."""
        index = self._index(index)
        rng = np.random.default_rng([self.seed, index, self._effective_epoch(), 1])
        scale = float(rng.uniform(*_SCALE_RANGE))
        shift = rng.uniform(-_SHIFT_RANGE, _SHIFT_RANGE, size=3)
        return scale, shift

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = self._index(index)
        points, parts = self.load_shape(index)
        choice = self.sample_indices(index)
        sampled = points[choice].copy()
        if self.augment:
            scale, shift = self.augmentation(index)
            sampled[:, :3] = (sampled[:, :3].astype(np.float64) * scale + shift).astype(np.float32)
        category = torch.tensor(self.categories[index], dtype=torch.long)
        return torch.from_numpy(sampled), category, torch.from_numpy(parts[choice])


# ---------------------------------------------------------------------------------------------
# Writer


def _format_shape(points: np.ndarray, parts: np.ndarray) -> bytes:
    """Rows ``x y z nx ny nz part``: six numbers with 6 decimals, the part as ``<id>.000000``."""
    table = np.concatenate([points.astype(np.float64), parts.astype(np.float64)[:, None]], axis=1)
    row = "%.6f %.6f %.6f %.6f %.6f %.6f %.6f\n"
    text = (row * len(table)) % tuple(table.ravel().tolist())
    return text.encode("ascii")


def _check_shape(position: int, shape: object) -> tuple[str, str, np.ndarray, np.ndarray]:
    where = f"shape {position}"
    if not isinstance(shape, Sequence) or len(shape) != 4:
        raise UserError(f"{where}: expected a (category, token, points (N,6), parts (N,)) tuple")
    category, token, points, parts = shape
    if category not in SEG_CLASSES:
        raise UserError(f"{where}: unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
    if not _plain_name(token):
        raise UserError(f"{where}: token {token!r} is not a plain file name (letters, digits, '_', '-', '.')")
    points = np.asarray(points)
    parts = np.asarray(parts)
    if points.ndim != 2 or points.shape[1] != 6 or points.shape[0] < 1 or not np.issubdtype(points.dtype, np.number):
        raise UserError(f"{where} ({token}): points of shape {points.shape}; expected (N, 6) numbers, N >= 1")
    if not np.isfinite(points).all():
        raise UserError(f"{where} ({token}): non-finite points; expected finite numbers")
    if parts.shape != (points.shape[0],) or not np.issubdtype(parts.dtype, np.integer):
        raise UserError(f"{where} ({token}): parts of shape {parts.shape} dtype {parts.dtype}; "
                        f"expected ({points.shape[0]},) integers")
    valid = SEG_CLASSES[category]
    if parts.min() < valid[0] or parts.max() > valid[-1]:
        raise UserError(f"{where} ({token}): part ids {int(parts.min())}..{int(parts.max())}; "
                        f"valid for {category}: {valid[0]}..{valid[-1]}")
    return category, token, points, parts


def _category_file_text() -> str:
    return "".join(f"{name}\t{SYNSETS[name]}\n" for name in CATEGORIES)


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    return manifest


def write_shapenet_part(root: str | os.PathLike[str], shapes: Iterable[tuple[str, str, np.ndarray, np.ndarray]],
                        splits: Mapping[str, Sequence[str]], params: Mapping[str, object] | None = None) -> Path:
    """Write shapes in the ``..._v0_normal`` layout under ``root``; return ``root``.

    ``shapes``: ``(category name, token, points (N, 6) xyz + normals, parts (N,) int)`` tuples;
    tokens are plain file names, unique over all shapes; part ids must lie in
    ``SEG_CLASSES[category]``. ``splits``: ``{"train"|"val"|"test": [token, ...]}``; every token
    must be a written shape and no token may be in two splits (missing split names get an empty
    list). Writes ``synsetoffset2category.txt`` with all 16 categories (as the real release), a
    directory per synset (empty if unused), ``<synset>/<token>.txt`` with rows
    ``x y z nx ny nz part`` (6 decimals), the three split files, and last the manifest
    :data:`MANIFEST_NAME`. Every file is written atomically (temporary file + rename).

    Ownership: ``root`` must be missing, empty, or a directory this function wrote (it has the
    manifest). A directory with a complete manifest and identical ``params`` (or, with
    ``params=None``, identical content) is reused as is: nothing is written and, when ``params`` is
    given, ``shapes`` is not even iterated (so a lazy generator is never run). A directory of
    ours with other parameters or content, or any other non-empty directory, is refused. A
    manifest left incomplete by an interrupted write with the same identity is rewritten.
    Nothing is written outside ``root``.
    """
    root = Path(root)
    for name in splits:
        if name not in ("train", "val", "test"):
            raise UserError(f"split {name!r} is not valid for writing; valid: train, val, test")
    if params is not None:
        params = json.loads(json.dumps(dict(params), sort_keys=True))  # plain JSON; raises on odd values
    if root.exists() and not root.is_dir():
        raise UserError(f"'{root}' exists and is not a directory; expected a missing or empty directory")
    manifest = _read_manifest(root) if root.is_dir() else None
    if root.is_dir() and manifest is None and any(root.iterdir()):
        raise UserError(f"'{root}' is not empty and was not written by write_shapenet_part; "
                        "choose a missing or empty directory")
    if manifest is not None and params is not None:
        if manifest.get("params") != params:
            raise UserError(f"'{root}' holds a ShapeNet part dataset written with other parameters "
                            f"({manifest.get('params')}); choose another directory or delete it")
        if manifest.get("complete") is True:
            return root

    def produce():
        """Yield ``(relative path, bytes)`` for every file but the manifest, validating as it goes."""
        category_of: dict[str, str] = {}
        for position, shape in enumerate(shapes):
            category, token, points, parts = _check_shape(position, shape)
            if token in category_of:
                raise UserError(f"shape {position}: token {token!r} used twice; tokens must be unique")
            category_of[token] = category
            yield f"{SYNSETS[category]}/{token}.txt", _format_shape(points, parts)
        seen: dict[str, str] = {}
        for split in ("train", "val", "test"):
            entries = []
            for token in splits.get(split, ()):
                if token not in category_of:
                    raise UserError(f"split {split!r}: token {token!r} is not one of the written shapes")
                if token in seen:
                    raise UserError(f"split {split!r}: token {token!r} is already in split {seen[token]!r}; "
                                    "each shape belongs to one split")
                seen[token] = split
                entries.append(f"shape_data/{SYNSETS[category_of[token]]}/{token}")
            yield split_file_name(split), json.dumps(entries).encode("ascii")
        yield CATEGORY_FILE, _category_file_text().encode("ascii")

    digest = hashlib.sha256()
    count = 0

    def account(relative: str, content: bytes) -> None:
        nonlocal count
        digest.update(relative.encode() + b"\0" + hashlib.sha256(content).digest())
        count += 1

    if params is None:
        # Identity is the content: format everything (in memory) before deciding to write.
        files = list(produce())
        for relative, content in files:
            account(relative, content)
        if manifest is not None:
            if manifest.get("content_sha256") != digest.hexdigest():
                raise UserError(f"'{root}' holds a different ShapeNet part dataset; "
                                "choose another directory or delete it")
            if manifest.get("complete") is True:
                return root
        stream: Iterable[tuple[str, bytes]] = files
    else:
        stream = produce()  # identity is ``params``: write while generating, nothing held in memory

    def manifest_bytes(complete: bool) -> bytes:
        body = {"format": _MANIFEST_FORMAT, "version": 1, "params": params, "complete": complete,
                "content_sha256": digest.hexdigest() if complete else None, "files": count if complete else None}
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "create")) from None
    atomic_write(root / MANIFEST_NAME, manifest_bytes(False))  # claim the directory before anything else
    try:
        for name in CATEGORIES:
            (root / SYNSETS[name]).mkdir(exist_ok=True)
        (root / SPLIT_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "create")) from None
    for relative, content in stream:
        if params is not None:
            account(relative, content)
        write_unsynced(root / relative, content)
    atomic_write(root / MANIFEST_NAME, manifest_bytes(True))
    return root
