"""COCO detection reader, SSD augmentation and the embedded offline detection dataset."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sparsetrain.data import embedded_detection
from sparsetrain.data.coco_detection import (
    CocoDetection,
    annotation_path,
    collate,
    write_coco,
)
from sparsetrain.data.detection_transforms import (
    CROP_MODES,
    box_iou,
    color_jitter,
    crop_boxes,
    hflip,
    normalize,
    random_hflip,
    sample_crop_window,
    ssd_random_crop,
)
from sparsetrain.data.embedded_detection import (
    CLASS_NAMES,
    MANIFEST_NAME,
    embedded_detection_dataset,
)
from sparsetrain.errors import UserError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _pixels(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """Four 40x20 (w x h) images, categories 90, 1, 3 (listed out of order)."""
    root = tmp_path_factory.mktemp("coco_small")
    images = [(f"img{k}.png", _pixels(k, 20, 40)) for k in range(1, 5)]
    annotations = [
        {"image_id": 1, "category_id": 3, "bbox": [4, 2, 10, 8]},
        {"image_id": 1, "category_id": 90, "bbox": [30, 10, 20, 20]},  # leaves the image: clipped
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 4], "iscrowd": 1},
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 3]},  # zero area: dropped
        {"image_id": 2, "category_id": 1, "bbox": [2, 2, 6, 6], "iscrowd": 1},  # only a crowd box
        {"image_id": 4, "category_id": 3, "bbox": [7, 3, 4, 0]},  # only a zero-area box
    ]  # image 3: no annotations
    categories = [{"id": 90, "name": "z"}, {"id": 1, "name": "a"}, {"id": 3, "name": "c"}]
    write_coco(root, "train", images, annotations, categories)
    write_coco(root, "val", images, annotations, categories)
    return root


@pytest.fixture(scope="module")
def embedded_root(tmp_path_factory):
    return embedded_detection_dataset(tmp_path_factory.mktemp("emb"), n_train=16, n_val=8, image_size=64, seed=3)


# ----------------------------------------------------------------------------- the reader


def test_category_mapping_both_ways(small_root):
    ds = CocoDetection(small_root, "val", image_size=16, train=False, seed=0)
    assert ds.label_to_category_id == [0, 1, 3, 90]
    assert ds.category_id_to_label == {1: 1, 3: 2, 90: 3}
    assert ds.category_names == ["background", "a", "c", "z"]
    assert ds.num_classes == 4
    assert isinstance(ds.coco, COCO) and sorted(ds.coco.getCatIds()) == [1, 3, 90]


def test_eval_item_is_exact(small_root):
    ds = CocoDetection(small_root, "val", image_size=16, train=False, seed=0)
    assert ds.image_ids == [1, 2, 3, 4]  # evaluation keeps images without boxes
    image, target = ds[0]
    expected_boxes = torch.tensor([[4 / 40, 2 / 20, 14 / 40, 10 / 20],
                                   [30 / 40, 10 / 20, 1.0, 1.0],
                                   [0.0, 0.0, 8 / 40, 4 / 20]], dtype=torch.float32)
    assert torch.equal(target["boxes"], expected_boxes)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 3, 1]  # crowd kept
    assert target["image_id"] == 1 and target["orig_size"] == (20, 40)
    resized = np.asarray(Image.fromarray(_pixels(1, 20, 40)).resize((16, 16), Image.BILINEAR))
    expected = torch.from_numpy(((resized.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1).copy())
    assert image.dtype == torch.float32 and image.shape == (3, 16, 16)
    assert torch.equal(image, expected)
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["image_id"] == 3
    _, zero_area = ds[3]
    assert zero_area["boxes"].shape == (0, 4)
    with pytest.raises(IndexError):
        ds[4]


def test_training_drops_images_without_boxes_crowd_counts(small_root):
    ds = CocoDetection(small_root, "train", image_size=16, train=True, seed=0)
    assert ds.image_ids == [1, 2]  # image 2 has only a crowd box: kept, as DALI include_iscrowd=True
    no_crowd = CocoDetection(small_root, "train", image_size=16, train=True, seed=0, include_crowd=False)
    assert no_crowd.image_ids == [1]
    assert no_crowd.boxes(0)[1].tolist() == [2, 3]
    no_crowd_eval = CocoDetection(small_root, "val", image_size=16, train=False, seed=0, include_crowd=False)
    assert no_crowd_eval.image_ids == [1, 2, 3, 4]
    assert no_crowd_eval[1][1]["boxes"].shape == (0, 4)


def test_bad_input_is_a_user_error(small_root, tmp_path):
    with pytest.raises(UserError, match="instances_train2017.json"):
        CocoDetection(tmp_path, "train", image_size=16, train=True, seed=0)
    with pytest.raises(UserError, match="split 'test'"):
        CocoDetection(small_root, "test", image_size=16, train=True, seed=0)
    with pytest.raises(UserError, match="image_size"):
        CocoDetection(small_root, "val", image_size=0, train=False, seed=0)
    with pytest.raises(UserError, match="category_id 2"):
        write_coco(tmp_path, "train", [("a.png", _pixels(0, 4, 4))],
                   [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1]}], [{"id": 1, "name": "a"}])
    with pytest.raises(UserError, match="extension"):
        write_coco(tmp_path, "val", [("a.bmp", _pixels(0, 4, 4))], [], [{"id": 1, "name": "a"}])
    ds = CocoDetection(small_root, "val", image_size=16, train=False, seed=0)
    with pytest.raises(UserError, match="epoch"):
        ds[(0, -1)]


def test_collate(small_root):
    ds = CocoDetection(small_root, "val", image_size=16, train=False, seed=0)
    images, targets = collate([ds[0], ds[2]])
    assert images.shape == (2, 3, 16, 16)
    assert [t["image_id"] for t in targets] == [1, 3]


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_depends_only_on_seed_index_epoch(embedded_root):
    ds = CocoDetection(embedded_root, "train", image_size=48, train=True, seed=5)
    again = CocoDetection(embedded_root, "train", image_size=48, train=True, seed=5)
    a_img, a_t = ds[(2, 3)]
    b_img, b_t = again[(2, 3)]
    assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
    assert torch.equal(a_t["labels"], b_t["labels"])
    ds.set_epoch(3)
    assert torch.equal(ds[2][0], a_img)
    c_img, _ = ds[(2, 4)]
    assert not torch.equal(c_img, a_img)
    other_seed = CocoDetection(embedded_root, "train", image_size=48, train=True, seed=6)
    assert not torch.equal(other_seed[(2, 3)][0], a_img)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    images, targets = next(iter(loader))  # workers see epoch 3 as set above
    assert torch.equal(images[0], ds[(0, 3)][0]) and torch.equal(images[1], ds[(1, 3)][0])
    assert torch.equal(targets[1]["boxes"], ds[(1, 3)][1]["boxes"])


def test_augmented_boxes_stay_valid(embedded_root):
    ds = CocoDetection(embedded_root, "train", image_size=48, train=True, seed=1)
    for index in range(len(ds)):
        for epoch in range(3):
            image, target = ds[(index, epoch)]
            boxes = target["boxes"]
            assert image.shape == (3, 48, 48) and torch.isfinite(image).all()
            assert boxes.dtype == torch.float32 and boxes.shape[0] == target["labels"].shape[0] >= 1
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert set(target["labels"].tolist()) <= set(range(1, len(CLASS_NAMES) + 1))


def test_augment_none_is_the_eval_item_and_flip_never_crops(embedded_root):
    plain = CocoDetection(embedded_root, "train", image_size=64, train=False, seed=0)
    none = CocoDetection(embedded_root, "train", image_size=64, train=True, seed=0, augment="none")
    flip = CocoDetection(embedded_root, "train", image_size=64, train=True, seed=0, augment="flip")
    mirrored = 0
    for index in range(len(none)):
        image, target = plain[index]
        same, same_target = none[(index, 2)]
        assert torch.equal(same, image) and torch.equal(same_target["boxes"], target["boxes"])
        _, flipped = flip[(index, 2)]
        boxes = target["boxes"]
        mirror = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
        assert torch.equal(flipped["labels"], target["labels"])  # no crop: every box kept
        is_mirror = torch.allclose(flipped["boxes"], mirror, atol=1e-6)
        assert is_mirror or torch.allclose(flipped["boxes"], boxes, atol=1e-6)
        mirrored += is_mirror
    assert 0 < mirrored < len(none)
    with pytest.raises(UserError, match=r"^augment='crop' is not valid; valid: ssd, flip, none"):
        CocoDetection(embedded_root, "train", image_size=64, train=True, seed=0, augment="crop")


def test_flip_hand_made_case():
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    flipped, boxes = hflip(image, np.array([[0.1, 0.2, 0.3, 0.6], [0.0, 0.0, 1.0, 1.0]]))
    assert np.array_equal(flipped, image[:, ::-1])
    np.testing.assert_allclose(boxes, [[0.7, 0.2, 0.9, 0.6], [0.0, 0.0, 1.0, 1.0]], rtol=0, atol=1e-12)
    for seed in range(6):
        draw = np.random.default_rng(seed).random()
        out, out_boxes = random_hflip(image, np.array([[0.1, 0.2, 0.3, 0.6]]), np.random.default_rng(seed))
        assert np.array_equal(out, image[:, ::-1] if draw < 0.5 else image)
        assert out_boxes[0, 0] == pytest.approx(0.7 if draw < 0.5 else 0.1, abs=1e-12)


def test_crop_boxes_hand_made_case():
    boxes, labels = crop_boxes(np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]), np.array([4, 7]),
                               np.array([0.2, 0.2, 0.7, 0.7]))
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 0.6, 0.6]], rtol=0, atol=1e-12)
    assert labels.tolist() == [4]


def test_crop_modes_are_ssds():
    assert CROP_MODES[:6] == (None, 0.1, 0.3, 0.5, 0.7, 0.9) and CROP_MODES[6] == -np.inf


_box = st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.9), st.floats(0.02, 0.6), st.floats(0.02, 0.6)).map(
    lambda b: (b[0], b[1], min(b[0] + b[2], 1.0), min(b[1] + b[3], 1.0)))


@settings(max_examples=60)
@given(boxes=st.lists(_box, min_size=1, max_size=5), seed=st.integers(0, 2**32 - 1),
       width=st.integers(20, 200), height=st.integers(20, 200))
def test_random_crop_respects_its_constraint(boxes, seed, width, height):
    boxes = np.array(boxes)
    window, min_iou = sample_crop_window(boxes, width, height, np.random.default_rng(seed))
    if window is None:
        assert min_iou is None
        return
    lp, tp, rp, bp = window
    assert 0 <= lp < rp <= width and 0 <= tp < bp <= height
    assert rp - lp >= 0.3 * width - 1 and bp - tp >= 0.3 * height - 1
    relative = np.array([lp / width, tp / height, rp / width, bp / height])
    assert min_iou in CROP_MODES[1:]
    assert (box_iou(boxes, relative) > min_iou).all()
    image = np.zeros((height, width, 3), dtype=np.uint8)
    cropped, kept, _ = ssd_random_crop(image, boxes, np.arange(len(boxes)), np.random.default_rng(seed))
    assert cropped.shape == (bp - tp, rp - lp, 3)
    assert len(kept) >= 1 and (kept >= 0).all() and (kept <= 1).all()


def test_color_jitter_range_and_identity():
    image = _pixels(0, 8, 8)
    out = color_jitter(image, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == (8, 8, 3) and out.min() >= 0 and out.max() <= 1
    same = color_jitter(image, np.random.default_rng(0), brightness=0, contrast=0, saturation=0, hue=0)
    np.testing.assert_allclose(same, image / 255.0, rtol=0, atol=1e-6)
    assert torch.equal(normalize(image), torch.from_numpy(((image / np.float32(255) - MEAN) / STD)
                                                          .astype(np.float32).transpose(2, 0, 1).copy()))


def test_hue_rotation_turns_primaries_into_each_other():
    """A third of a turn: red -> green -> blue -> red (PIL's 8-bit HSV: within 4 grey levels)."""
    from sparsetrain.data.detection_transforms import _shift_hue

    primaries = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(_shift_hue(primaries, 1 / 3), primaries[:, [1, 2, 0]], atol=4 / 255)
    assert _shift_hue(primaries, 0.0) is primaries


# ----------------------------------------------------------------------------- embedded dataset


def test_embedded_dataset_counts_classes_and_pycocotools(embedded_root):
    for split, count in (("train", 16), ("val", 8)):
        body = json.loads(annotation_path(embedded_root, split).read_text())
        assert len(body["images"]) == count
        assert {c["name"] for c in body["categories"]} == set(CLASS_NAMES)
        assert {a["category_id"] for a in body["annotations"] if not a["iscrowd"]} == set(range(1, len(CLASS_NAMES) + 1))
        for image in body["images"]:
            assert (image["width"], image["height"]) == (64, 64)
            assert (embedded_root / f"{split}2017" / image["file_name"]).is_file()
        for ann in body["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 64 and y + h <= 64
    val = CocoDetection(embedded_root, "val", image_size=64, train=False, seed=0)
    assert len(val) == 8
    gt = val.coco
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt.dataset["annotations"] if not a["iscrowd"]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_embedded_dataset_is_cached_not_rewritten(embedded_root, monkeypatch):
    stamp = annotation_path(embedded_root, "train").stat().st_mtime_ns
    manifest = json.loads((embedded_root / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True and manifest["params"]["n_train"] == 16

    def boom(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(embedded_detection, "generate_image", boom)
    again = embedded_detection_dataset(embedded_root.parent, n_train=16, n_val=8, image_size=64, seed=3)
    assert again == embedded_root
    assert annotation_path(embedded_root, "train").stat().st_mtime_ns == stamp
    assert not [p for p in embedded_root.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_embedded_dataset_refuses_foreign_directory_and_bad_counts(tmp_path):
    name = f"coco_detection_embedded_v{embedded_detection.GENERATOR_VERSION}_seed0_2-2_s32"
    (tmp_path / name).mkdir()
    (tmp_path / name / "x").write_text("mine")
    with pytest.raises(UserError, match="not a complete embedded detection dataset"):
        embedded_detection_dataset(tmp_path, n_train=2, n_val=2, image_size=32)
    with pytest.raises(UserError, match="n_train 0"):
        embedded_detection_dataset(tmp_path, n_train=0, n_val=2)


def test_generate_image_is_deterministic():
    a, objects_a = embedded_detection.generate_image(np.random.default_rng([0, 7]), 64, first_class=5)
    b, objects_b = embedded_detection.generate_image(np.random.default_rng([0, 7]), 64, first_class=5)
    assert np.array_equal(a, b) and objects_a == objects_b
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert 1 <= sum(1 for _, _, crowd in objects_a if not crowd) <= 6
    assert any(cls == 5 for cls, _, crowd in objects_a if not crowd)
