"""COCO detection metrics: detections in the COCO results format scored by pycocotools' ``COCOeval``.

Nothing here is re-implemented: the metric is ``COCOeval`` on ``iouType="bbox"`` with its default
parameters (10 IoU thresholds .50:.05:.95, 101 recall points, maxDets 1/10/100, area ranges
small < 32², medium < 96², large), as NVIDIA's SSD reference evaluates. This module only turns a
model's detections (ltrb boxes relative to the network input, contiguous labels) into the results
format (absolute ``[x, y, width, height]`` in the original image, COCO category ids) and names the
twelve numbers ``COCOeval.summarize`` prints.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

STAT_NAMES = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")
"""The order of ``COCOeval.stats``; every value is reported in percent (x100). ``map`` is mAP@[.5:.95]."""


def coco_results(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, image_id: int,
                 orig_size: tuple[int, int], label_to_category_id: Sequence[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO result dicts.

    ``boxes`` (k, 4) ltrb relative to the image ([0, 1], as the network sees the resized image, which maps
    linearly back to the original), ``labels`` (k,) contiguous labels >= 1, ``scores`` (k,);
    ``orig_size`` = (height, width) in pixels. Boxes become ``[x, y, w, h]`` in original pixels.
    """
    height, width = orig_size
    b = boxes.detach().to("cpu", torch.float64).numpy()
    xywh = np.stack([b[:, 0] * width, b[:, 1] * height, (b[:, 2] - b[:, 0]) * width, (b[:, 3] - b[:, 1]) * height], 1)
    categories = [label_to_category_id[int(label)] for label in labels.tolist()]
    return [{"image_id": int(image_id), "category_id": int(category), "bbox": [float(v) for v in row],
             "score": float(score)}
            for row, category, score in zip(xywh, categories, scores.tolist())]


def coco_metrics(coco_gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int]) -> dict[str, float]:
    """``COCOeval`` (bbox) of ``results`` against ``coco_gt`` (a ``pycocotools.coco.COCO``) over ``image_ids``.

    Returns :data:`STAT_NAMES` -> percent, without the statistics ``COCOeval`` leaves undefined (-1: e.g.
    ``ap_small`` when no ground-truth box is small). Only the images in ``image_ids`` are scored (an evaluation cut
    short by ``max_eval_batches`` is not charged for images it never saw). No detection at all scores 0
    everywhere (``loadRes`` refuses an empty list). ``COCOeval``'s printing is swallowed.
    """
    if not results or not image_ids:
        return {name: 0.0 for name in STAT_NAMES}
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted({int(i) for i in image_ids})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: 100.0 * float(value) for name, value in zip(STAT_NAMES, evaluator.stats) if value >= 0}
