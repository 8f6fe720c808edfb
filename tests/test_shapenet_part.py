"""ShapeNet part reader (hand-written files and the writer's), its writer, and the embedded dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.data.embedded_parts import (
    EMBEDDED_CATEGORIES,
    PART_NAMES,
    embedded_part_dataset,
)
from sparsetrain.data.shapenet_part import (
    CATEGORIES,
    MANIFEST_NAME,
    NUM_PARTS,
    SEG_CLASSES,
    SYNSETS,
    ShapeNetPart,
    read_shape_file,
    write_shapenet_part,
)
from sparsetrain.errors import UserError

AIRPLANE, MUG = SYNSETS["Airplane"], SYNSETS["Mug"]


def _rows(n: int, parts, offset=(0.0, 0.0, 0.0), scale: float = 1.0) -> str:
    rng = np.random.default_rng(n)
    lines = []
    for i in range(n):
        x, y, z = rng.normal(size=3) * scale + offset
        lines.append(f"{x:.5f} {y:.5f} {z:.5f} 0.0 1.0 0.0 {float(parts[i % len(parts)]):.6f}")
    return "\n".join(lines) + "\n"


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A hand-written root: 2 airplanes + 1 mug in train, 1 airplane in val, 1 mug in test."""
    root = tmp_path / "shapenet"
    (root / "train_test_split").mkdir(parents=True)
    (root / AIRPLANE).mkdir()
    (root / MUG).mkdir()
    (root / "synsetoffset2category.txt").write_text(f"Airplane\t{AIRPLANE}\nMug\t{MUG}\n")
    split = {"train": [f"shape_data/{AIRPLANE}/b2", f"shape_data/{MUG}/m1", f"shape_data/{AIRPLANE}/a1"],
             "val": [f"shape_data/{AIRPLANE}/c3"], "test": [f"shape_data/{MUG}/m2"]}
    for name, entries in split.items():
        (root / "train_test_split" / f"shuffled_{name}_file_list.json").write_text(json.dumps(entries))
    (root / AIRPLANE / "a1.txt").write_text(_rows(50, [0, 1, 2, 3], offset=(5.0, -2.0, 1.0), scale=3.0))
    (root / AIRPLANE / "b2.txt").write_text(_rows(40, [1, 2]))
    (root / AIRPLANE / "c3.txt").write_text(_rows(30, [0, 3]))
    (root / MUG / "m1.txt").write_text(_rows(20, [36, 37]))
    (root / MUG / "m2.txt").write_text("\n" + _rows(25, [37]) + "\n\n")
    return root


def test_constants_match_reference():
    assert CATEGORIES == tuple(sorted(CATEGORIES)) and len(CATEGORIES) == 16
    assert [p for c in CATEGORIES for p in SEG_CLASSES[c]] == list(range(50)) and NUM_PARTS == 50
    assert SEG_CLASSES["Motorbike"] == (30, 31, 32, 33, 34, 35) and SEG_CLASSES["Table"] == (47, 48, 49)
    assert list(SYNSETS.values()) == sorted(SYNSETS.values()) and SYNSETS["Chair"] == "03001627"


def test_reader_order_splits_and_items(tiny: Path):
    train = ShapeNetPart(tiny, "train", npoints=64)
    assert train.tokens == ["a1", "b2", "m1"]  # category order, tokens sorted
    assert train.categories == [0, 0, 11] and train.category_names == CATEGORIES
    assert (train.num_categories, train.num_parts) == (16, 50)
    points, category, parts = train[2]
    assert points.shape == (64, 3) and points.dtype == torch.float32
    assert category.dtype == torch.long and category.ndim == 0 and int(category) == 11
    assert parts.shape == (64,) and parts.dtype == torch.long and set(parts.tolist()) <= {36, 37}
    assert ShapeNetPart(tiny, "val").tokens == ["c3"]
    assert ShapeNetPart(tiny, "trainval").tokens == ["a1", "b2", "c3", "m1"]
    test = ShapeNetPart(tiny, "test", npoints=8, normal_channel=True)
    assert test.tokens == ["m2"] and test[0][0].shape == (8, 6)
    assert ShapeNetPart(tiny, "train", categories=["Mug"]).tokens == ["m1"]
    with pytest.raises(IndexError):
        train[3]


def test_normalisation_and_rows_match_file(tiny: Path):
    ds = ShapeNetPart(tiny, "train", normal_channel=True)
    points, parts = ds.load_shape(0)
    raw = np.loadtxt(tiny / AIRPLANE / "a1.txt")
    assert points.shape == (50, 6) and parts.tolist() == raw[:, 6].astype(int).tolist()
    np.testing.assert_allclose(points[:, :3].mean(axis=0), 0.0, atol=1e-6)
    assert np.linalg.norm(points[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-6)
    centred = raw[:, :3] - raw[:, :3].mean(axis=0)
    np.testing.assert_allclose(points[:, :3], centred / np.linalg.norm(centred, axis=1).max(), atol=1e-6)
    np.testing.assert_array_equal(points[:, 3:], raw[:, 3:6].astype(np.float32))
    sampled, _, sampled_parts = ds[0]
    choice = ds.sample_indices(0)
    np.testing.assert_array_equal(sampled.numpy(), points[choice])
    np.testing.assert_array_equal(sampled_parts.numpy(), parts[choice])


def test_sampling_deterministic_per_seed_index_epoch(tiny: Path):
    a = ShapeNetPart(tiny, "train", npoints=32, seed=3)
    b = ShapeNetPart(tiny, "train", npoints=32, seed=3)
    b[1]; b[0]  # access order and caching do not matter
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][2], b[i][2])
    first = a[0][0]
    a.set_epoch(1)
    assert not torch.equal(a[0][0], first)
    b.set_epoch(1)
    assert torch.equal(a[0][0], b[0][0])
    a.set_epoch(0)
    assert torch.equal(a[0][0], first)
    assert not torch.equal(ShapeNetPart(tiny, "train", npoints=32, seed=4)[0][0], first)
    assert not np.array_equal(a.sample_indices(0), a.sample_indices(1)[: 32])
    test = ShapeNetPart(tiny, "test", npoints=32, augment=True)
    before = test[0][0]
    test.set_epoch(7)  # evaluation splits draw the same sample every epoch
    assert torch.equal(test[0][0], before)
    with pytest.raises(UserError):
        a.set_epoch(-1)


def test_augmentation_ranges(tiny: Path):
    plain = ShapeNetPart(tiny, "trainval", npoints=40, normal_channel=True, seed=1)
    aug = ShapeNetPart(tiny, "trainval", npoints=40, normal_channel=True, seed=1, augment=True)
    scales, shifts = [], []
    for epoch in range(12):
        plain.set_epoch(epoch)
        aug.set_epoch(epoch)
        for i in range(len(aug)):
            x, y = plain[i][0].double(), aug[i][0].double()
            scale, shift = aug.augmentation(i)
            torch.testing.assert_close(y[:, :3], x[:, :3] * scale + torch.from_numpy(shift), atol=1e-5, rtol=0)
            assert torch.equal(x[:, 3:], y[:, 3:])  # normals untouched, same sample as without augmentation
            scales.append(scale)
            shifts.append(shift)
    scales, shifts = np.array(scales), np.array(shifts)
    assert 0.8 <= scales.min() and scales.max() <= 1.25 and scales.max() - scales.min() > 0.3
    assert np.abs(shifts).max() <= 0.1 and shifts.min() < -0.07 and shifts.max() > 0.07


def _one_line_error(match: str, call) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("content, match", [
    ("0 0 0 0 0 1 36\n0 0 0 0 1\n", r"m1\.txt' line 2: 5 columns"),
    ("0 0 0 0 0 1 36\n\n1 1 1 0 0 1 37 5\n", r"line 3: 8 columns"),
    ("0 0 0 0 0 1 36\n1 x 1 0 0 1 37\n", r"line 2: 'x' is not a number"),
    ("0 0 0 0 0 1 36\n1 1 1 0 0 1 12\n", r"line 2: part '12' is not a part of this category; valid: 36..37"),
    ("0 0 0 0 0 1 36.5\n", r"line 1: part '36.5'"),
    ("0 0 nan 0 0 1 36\n", r"line 1: non-finite"),
    ("\n  \n", r"m1\.txt': empty shape file"),
    ("1 1 1 0 0 1 36\n1 1 1 0 0 1 37\n", r"all points coincide"),
])
def test_malformed_rows_name_file_and_line(tiny: Path, content: str, match: str):
    (tiny / MUG / "m1.txt").write_text(content)
    ds = ShapeNetPart(tiny, "train", categories=["Mug"])
    _one_line_error(match, lambda: ds[0])


def test_layout_errors_are_one_line(tiny: Path, tmp_path: Path):
    _one_line_error("is not a directory", lambda: ShapeNetPart(tmp_path / "nope"))
    _one_line_error("split 'dev'", lambda: ShapeNetPart(tiny, "dev"))
    _one_line_error("category 'Car' is not in", lambda: ShapeNetPart(tiny, categories=["Car"]))
    (tiny / AIRPLANE / "c3.txt").unlink()
    _one_line_error(r"missing shape file '.*c3\.txt'", lambda: ShapeNetPart(tiny, "val"))
    (tiny / "train_test_split" / "shuffled_test_file_list.json").write_text('["shape_data/99999999/x"]')
    _one_line_error(r"shuffled_test_file_list\.json' entry 0: synset '99999999'", lambda: ShapeNetPart(tiny, "test"))
    (tiny / "train_test_split" / "shuffled_test_file_list.json").write_text('["../../etc/passwd"]')
    _one_line_error(r"entry 0: .*expected 'shape_data/<synset>/<token>'", lambda: ShapeNetPart(tiny, "test"))
    (tiny / "synsetoffset2category.txt").write_text(f"Airplane\t{AIRPLANE}\nSpoon\t01234567\n")
    _one_line_error(r"synsetoffset2category\.txt' line 2: unknown category 'Spoon'", lambda: ShapeNetPart(tiny))
    (tiny / "synsetoffset2category.txt").unlink()
    _one_line_error(r"missing file '.*synsetoffset2category\.txt'", lambda: ShapeNetPart(tiny))


def test_read_shape_file_direct(tiny: Path):
    points, parts = read_shape_file(tiny / MUG / "m2.txt", "Mug")  # leading and trailing blank lines
    assert points.shape == (25, 6) and points.dtype == np.float32 and parts.dtype == np.int64
    assert set(parts.tolist()) == {37}
    _one_line_error(r"m2\.txt' line 2: part '37.000000' .* valid: 0\.\.3", lambda: read_shape_file(tiny / MUG / "m2.txt",
                                                                                    "Airplane"))


def _shape(category: str, token: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(size=(n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1))], axis=1)
    return category, token, points, rng.choice(SEG_CLASSES[category], size=n)


def test_writer_roundtrip_and_ownership(tmp_path: Path):
    shapes = [_shape("Chair", "c1", 30, 0), _shape("Table", "t1", 20, 1), _shape("Chair", "c2", 10, 2)]
    splits = {"train": ["c2", "t1"], "test": ["c1"]}
    root = write_shapenet_part(tmp_path / "out", shapes, splits)
    lines = (root / "synsetoffset2category.txt").read_text().splitlines()
    assert lines[0] == "Airplane\t02691156" and len(lines) == 16
    assert json.loads((root / "train_test_split/shuffled_val_file_list.json").read_text()) == []
    assert json.loads((root / "train_test_split/shuffled_test_file_list.json").read_text()) == [
        "shape_data/03001627/c1"]
    first = (root / "03001627" / "c1.txt").read_text().splitlines()[0].split()
    assert len(first) == 7 and first[6] in {"12.000000", "13.000000", "14.000000", "15.000000"}
    ds = ShapeNetPart(root, "train", normal_channel=True)
    assert ds.tokens == ["c2", "t1"] and ds.categories == [4, 15]
    raw, parts = read_shape_file(root / "03001627" / "c1.txt", "Chair")
    np.testing.assert_allclose(raw, shapes[0][2], atol=1e-6)
    np.testing.assert_array_equal(parts, shapes[0][3])
    mtime = (root / MANIFEST_NAME).stat().st_mtime_ns
    assert write_shapenet_part(root, shapes, splits) == root  # identical content: reused
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == mtime
    _one_line_error("holds a different", lambda: write_shapenet_part(root, shapes[:2], {"train": ["c1"]}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _one_line_error("not empty and was not written", lambda: write_shapenet_part(foreign, shapes, splits))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error("token 'x' is not one of", lambda: write_shapenet_part(empty, shapes, {"train": ["x"]}))
    _one_line_error("already in split", lambda: write_shapenet_part(empty, shapes, {"train": ["c1"], "val": ["c1"]}))
    _one_line_error(r"token '\.\./evil'", lambda: write_shapenet_part(empty, [_shape("Mug", "../evil", 5, 0)], {}))
    _one_line_error("part ids", lambda: write_shapenet_part(empty, [("Mug", "m", shapes[0][2], shapes[0][3])], {}))
    assert not (tmp_path / "evil.txt").exists()


def test_writer_params_reuse_skips_generation(tmp_path: Path):
    def never():
        raise AssertionError("generator must not run on reuse")
        yield

    root = write_shapenet_part(tmp_path / "p", [_shape("Knife", "k", 12, 0)], {"test": ["k"]}, params={"a": 1})
    assert write_shapenet_part(root, never(), {"test": ["k"]}, params={"a": 1}) == root
    _one_line_error("other parameters", lambda: write_shapenet_part(root, never(), {}, params={"a": 2}))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_embedded_dataset_small(tmp_path: Path):
    kwargs = {"seed": 5, "n_train": 24, "n_val": 8, "n_test": 16, "points_per_shape": 300}
    root = embedded_part_dataset(tmp_path / "a", **kwargs)
    again = embedded_part_dataset(tmp_path / "b", **kwargs)
    assert root.name == again.name and _tree_digest(root) == _tree_digest(again)  # byte-equal files
    assert embedded_part_dataset(tmp_path / "a", **kwargs) == root  # reused
    other = embedded_part_dataset(tmp_path / "c", **dict(kwargs, seed=6))
    assert _tree_digest(other) != _tree_digest(root)
    sizes = {s: len(ShapeNetPart(root, s)) for s in ("train", "val", "test", "trainval")}
    assert sizes == {"train": 24, "val": 8, "test": 16, "trainval": 32}
    seen: dict[str, set[int]] = {c: set() for c in EMBEDDED_CATEGORIES}
    ds = ShapeNetPart(root, "trainval", normal_channel=True)
    for i in range(len(ds)):
        points, parts = ds.load_shape(i)
        name = CATEGORIES[ds.categories[i]]
        assert points.shape == (300, 6) and set(parts.tolist()) <= set(SEG_CLASSES[name])
        np.testing.assert_allclose(np.linalg.norm(points[:, 3:], axis=1), 1.0, atol=1e-5)
        seen[name] |= set(parts.tolist())
    assert seen == {c: set(PART_NAMES[c]) for c in EMBEDDED_CATEGORIES}  # every part occurs
    assert len(EMBEDDED_CATEGORIES) >= 4


@pytest.mark.slow
def test_embedded_dataset_default_size(tmp_path: Path):
    root = embedded_part_dataset(tmp_path)
    assert [len(ShapeNetPart(root, s)) for s in ("train", "val", "test")] == [600, 100, 200]
    ds = ShapeNetPart(root, "test")
    counts: dict[int, int] = {}
    for i in range(len(ds)):
        for part in set(ds.load_shape(i)[1].tolist()):
            counts[part] = counts.get(part, 0) + 1
    assert set(counts) == {p for c in EMBEDDED_CATEGORIES for p in PART_NAMES[c]}
