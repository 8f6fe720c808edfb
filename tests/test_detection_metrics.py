"""COCO metrics of the detection task: our conversion + COCOeval equals COCOeval run directly on the same detections."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from sparsetrain.tasks.detection_coco_eval import STAT_NAMES, coco_metrics, coco_results  # noqa: E402

CATEGORY_IDS = [0, 3, 7, 90]  # index = contiguous label (0 = background, unused), value = COCO category id


def _ground_truth(seed: int = 0, images: int = 6) -> tuple[COCO, dict[int, tuple[int, int]]]:
    """A COCO object with random boxes of three non-contiguous categories on images of varied sizes."""
    rng = np.random.default_rng(seed)
    sizes, annotations = {}, []
    for image_id in range(1, images + 1):
        height, width = int(rng.integers(80, 400)), int(rng.integers(80, 400))
        sizes[image_id] = (height, width)
        for _ in range(int(rng.integers(1, 5))):
            w, h = float(rng.uniform(5, width / 2)), float(rng.uniform(5, height / 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h], "area": w * h,
                                "category_id": int(rng.choice(CATEGORY_IDS[1:])), "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, (h, w) in sizes.items()],
                    "annotations": annotations,
                    "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS[1:]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, sizes


def _direct(coco: COCO, results: list[dict], image_ids: list[int]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _relative(coco: COCO, image_id: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground truth of one image as (ltrb boxes relative to the image, contiguous labels)."""
    height, width = size
    boxes, labels = [], []
    for ann in coco.imgToAnns[image_id]:
        x, y, w, h = ann["bbox"]
        boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
        labels.append(CATEGORY_IDS.index(ann["category_id"]))
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


def test_perfect_detections_score_100():
    coco, sizes = _ground_truth()
    results = []
    for image_id, size in sizes.items():
        boxes, labels = _relative(coco, image_id, size)
        results += coco_results(boxes, labels, torch.linspace(0.9, 0.5, len(labels)), image_id, size, CATEGORY_IDS)
    metrics = coco_metrics(coco, results, list(sizes))
    assert metrics["map"] == pytest.approx(100.0) and metrics["ap50"] == pytest.approx(100.0)
    assert metrics["ar100"] == pytest.approx(100.0)


def test_noisy_detections_equal_cocoeval_run_directly():
    """Jittered, partly mislabelled detections plus false positives: every statistic equals COCOeval's own."""
    coco, sizes = _ground_truth(seed=1)
    rng = np.random.default_rng(2)
    results, direct = [], []
    for image_id, size in sizes.items():
        boxes, labels = _relative(coco, image_id, size)
        boxes = torch.cat([boxes + torch.tensor(rng.normal(0, 0.03, boxes.shape), dtype=torch.float32),
                           torch.tensor(rng.uniform(0, 0.5, (3, 2)).repeat(2, 1) + np.array([0, 0, 0.2, 0.2]),
                                        dtype=torch.float32)])
        labels = torch.cat([labels, torch.tensor(rng.integers(1, 4, 3))])
        labels[0] = int(rng.integers(1, 4))
        scores = torch.tensor(rng.uniform(0.05, 1.0, len(labels)), dtype=torch.float32)
        ours = coco_results(boxes, labels, scores, image_id, size, CATEGORY_IDS)
        results += ours
        height, width = size
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):  # the format by hand
            direct.append({"image_id": image_id, "category_id": CATEGORY_IDS[label], "score": score,
                           "bbox": [box[0] * width, box[1] * height, (box[2] - box[0]) * width,
                                    (box[3] - box[1]) * height]})
    metrics = coco_metrics(coco, results, list(sizes))
    stats = _direct(coco, direct, list(sizes))
    assert 5.0 < metrics["map"] < 95.0
    for name, value in zip(STAT_NAMES, stats):
        if value >= 0:
            assert metrics[name] == pytest.approx(100.0 * value, abs=1e-9), name
        else:
            assert name not in metrics


def test_only_the_evaluated_images_are_scored():
    """An evaluation cut short (max_eval_batches) is not charged for the images it never saw."""
    coco, sizes = _ground_truth(seed=3)
    first = list(sizes)[:2]
    results = []
    for image_id in first:
        boxes, labels = _relative(coco, image_id, sizes[image_id])
        results += coco_results(boxes, labels, torch.ones(len(labels)), image_id, sizes[image_id], CATEGORY_IDS)
    assert coco_metrics(coco, results, first)["map"] == pytest.approx(100.0)
    assert coco_metrics(coco, results, list(sizes))["map"] < 100.0


def test_no_detection_scores_zero():
    coco, sizes = _ground_truth()
    assert coco_metrics(coco, [], list(sizes)) == {name: 0.0 for name in STAT_NAMES}
