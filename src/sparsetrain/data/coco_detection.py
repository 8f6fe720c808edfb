"""COCO-2017 object detection as a deterministic torch Dataset (NVIDIA SSD semantics), and a COCO writer.

What it reads: COCO-2017 as distributed, ``<root>/annotations/instances_<split>2017.json`` and
``<root>/<split>2017/<file_name>``, through pycocotools' ``COCO`` (kept as :attr:`CocoDetection.coco`,
the ground truth of the evaluation).

Semantics kept from the reference (NVIDIA DeepLearningExamples ``PyTorch/Detection/SSD``,
commit 729963dd; training reads through DALI ``readers.COCO``, evaluation through
``ssd/utils.py::COCODetection``):

* labels: category ids map to contiguous labels ``1..C`` (0 is background) in increasing
  category-id order (the reference numbers categories in file order, ``utils.py`` lines 476-482;
  DALI ``ParseCategories`` likewise; COCO's file lists them by increasing id, so they agree).
  :attr:`~CocoDetection.label_to_category_id` maps back (index 0 unused);
* crowd boxes (``iscrowd=1``) are ordinary ground-truth boxes, in training and in the items of
  evaluation: ``coco_pipeline.py`` lines 43-50 leave DALI's ``include_iscrowd`` at its default
  ``True``, and ``utils.py`` lines 493-498 read every annotation without looking at ``iscrowd``.
  (pycocotools' COCOeval still treats them as "ignore" regions when scoring.) ``include_crowd=False``
  drops them instead;
* images without (kept) boxes are dropped for training (``skip_empty=True``,
  ``coco_pipeline.py`` line 50; so an image with only crowd boxes stays, as in the reference)
  and always kept for evaluation (the reference's evaluation set drops them too, ``utils.py``
  lines 500-502, but COCOeval scores every ground-truth image, so false positives on an empty
  image should count);
* boxes are ``(left, top, right, bottom)`` relative to the image (``ratio=True, ltrb=True``):
  COCO's ``[x, y, w, h]`` pixels are clipped to the image and divided by its width/height; boxes
  that are empty after clipping (zero width or height) are dropped;
* items are ordered by image id (DALI sorts by id); training augmentation and normalisation as
  in :mod:`~sparsetrain.data.detection_transforms`.

What differs (on purpose): DALI draws from per-pipeline random state, so two runs or workers
differ. Here every draw of item ``index`` in ``epoch`` comes from
``numpy.random.default_rng([seed, index, epoch])``, so an item is the same in the main process and
in any DataLoader worker. Key an item by ``index`` (the epoch :meth:`CocoDetection.set_epoch` set,
0 initially) or by ``(index, epoch)``.

Why hand-written: torchvision's ``CocoDetection`` (not a dependency here) returns raw annotations
with no label mapping or crowd/empty policy, and the reference's readers need DALI or a GPU and
random global state. pycocotools does the parsing and indexing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..atomic import atomic_write
from ..errors import UserError, UserOSError, os_error_message
from .base import check_count, write_unsynced
from .imagenet import load_rgb_image
from .detection_transforms import AUGMENTATIONS, ssd_eval_transform, ssd_train_transform

__all__ = ["SPLITS", "CocoDetection", "annotation_path", "collate", "image_dir", "write_coco"]

SPLITS = ("train", "val")


def annotation_path(root: str | os.PathLike[str], split: str) -> Path:
    """``<root>/annotations/instances_<split>2017.json``."""
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def image_dir(root: str | os.PathLike[str], split: str) -> Path:
    """``<root>/<split>2017``."""
    return Path(root) / f"{split}2017"



def _check_split(split: object) -> str:
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not valid; valid: {', '.join(SPLITS)}")
    return str(split)


class CocoDetection(Dataset):
    """COCO-format detection split: item -> ``(image, target)``.

    * ``image``: float32 ``(3, image_size, image_size)``, ImageNet-normalised; for ``train=True``
      after ``augment`` (SSD's crop/flip/colour jitter; see ``detection_transforms.AUGMENTATIONS``),
      else resized (bilinear, aspect not kept) only;
    * ``target``: ``{"boxes": float32 (n, 4) ltrb relative to the transformed image, in [0, 1],
      "labels": int64 (n,) in 1..C, "image_id": int (COCO id), "orig_size": (height, width) ints}``.

    Attributes: ``coco`` (pycocotools ``COCO``), ``image_ids`` (COCO ids in dataset order),
    ``num_classes`` (C + 1, with background), ``label_to_category_id`` (``[0, id_1, ..., id_C]``,
    index 0 unused), ``category_id_to_label`` (dict), ``category_names`` (``["background", ...]``,
    by label), ``split``, ``image_size``, ``train``, ``seed``, ``epoch``, ``include_crowd``.

    Bad input (missing files, unknown category ids, malformed boxes, an image whose size differs
    from its record) raises :class:`~sparsetrain.errors.UserError` naming the file or value.
    """

    def __init__(self, root: str | os.PathLike[str], split: str, *, image_size: int, train: bool, seed: int,
                 include_crowd: bool = True, augment: str = "ssd") -> None:
        self.split = _check_split(split)
        self.image_size = check_count("image_size", image_size, 8)
        self.seed = check_count("seed", seed, 0)
        if seed >= 2**63:
            raise UserError(f"seed {seed!r} is not valid; expected an integer in [0, 2**63)")
        self.train = bool(train)
        if augment not in AUGMENTATIONS:
            raise UserError(f"augment={augment!r} is not valid; valid: {', '.join(AUGMENTATIONS)}")
        self.augment = augment
        self.include_crowd = bool(include_crowd)
        self.epoch = 0
        self.root = Path(root)
        self.image_root = image_dir(self.root, self.split)
        path = annotation_path(self.root, self.split)
        if not path.is_file():
            raise UserError(f"missing COCO annotations file '{path}' (expected <root>/annotations/"
                            f"instances_{self.split}2017.json)")
        if not self.image_root.is_dir():
            raise UserError(f"missing COCO image directory '{self.image_root}' (expected <root>/{self.split}2017)")
        self.coco = _load_coco(path)

        cats = self.coco.dataset.get("categories")
        if not isinstance(cats, list) or not cats:
            raise UserError(f"'{path}' has no categories; expected a non-empty 'categories' list")
        ids = []
        names = {}
        for cat in cats:
            if not isinstance(cat, dict) or isinstance(cat.get("id"), bool) or not isinstance(cat.get("id"), int):
                raise UserError(f"'{path}': category {cat!r} has no integer 'id'")
            ids.append(cat["id"])
            names[cat["id"]] = str(cat.get("name", cat["id"]))
        if len(set(ids)) != len(ids):
            raise UserError(f"'{path}': category ids {sorted(ids)} are not unique")
        self.label_to_category_id: list[int] = [0] + sorted(ids)
        self.category_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_category_id) if i}
        self.category_names: list[str] = ["background"] + [names[cid] for cid in self.label_to_category_id[1:]]
        self.num_classes = len(self.label_to_category_id)

        self.image_ids: list[int] = []
        self._records: list[tuple[str, int, int, np.ndarray, np.ndarray]] = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            try:
                width, height, file_name = int(info["width"]), int(info["height"]), str(info["file_name"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"'{path}': image record {info!r} needs integer 'width', 'height' "
                                "and a 'file_name'") from None
            if width < 1 or height < 1:
                raise UserError(f"'{path}': image {image_id} has size {width}x{height}; expected width, height >= 1")
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0) and not self.include_crowd:
                    continue
                cid = ann.get("category_id")
                if cid not in self.category_id_to_label:
                    raise UserError(f"'{path}': annotation {ann.get('id')!r} has category_id {cid!r}; "
                                    f"valid: {self.label_to_category_id[1:]}")
                bbox = ann.get("bbox")
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                    raise UserError(f"'{path}': annotation {ann.get('id')!r} has bbox {bbox!r}; expected [x, y, w, h]")
                x, y, w, h = (float(v) for v in bbox)
                if not all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
                    raise UserError(f"'{path}': annotation {ann.get('id')!r} has bbox {bbox!r}; "
                                    "expected finite numbers with w, h >= 0")
                left, top = min(max(x, 0.0), width), min(max(y, 0.0), height)
                right, bottom = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
                if right <= left or bottom <= top:
                    continue  # zero area (after clipping to the image)
                boxes.append((left / width, top / height, right / width, bottom / height))
                labels.append(self.category_id_to_label[cid])
            if self.train and not boxes:
                continue
            self.image_ids.append(int(image_id))
            self._records.append((file_name, height, width,
                                  np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                  np.asarray(labels, dtype=np.int64)))
        if not self._records:
            raise UserError(f"'{path}' lists no usable images for split {self.split!r} "
                            f"({'training drops images without boxes' if self.train else 'no images'})")

    def __len__(self) -> int:
        return len(self._records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation an integer key gets (no effect when ``train=False``)."""
        self.epoch = check_count("epoch", epoch, 0)

    def boxes(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Un-augmented ``(boxes float64 (n, 4) relative ltrb, labels int64 (n,))`` of item ``index``."""
        _, _, _, boxes, labels = self._records[index]
        return boxes.copy(), labels.copy()

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of item ``index`` as stored (checked against its record's size)."""
        file_name, height, width, _, _ = self._records[index]
        path = self.image_root / file_name
        if not path.is_file():
            listed = annotation_path(self.root, self.split).name
            raise UserError(f"missing image file '{path}' (listed in {listed})")
        image = load_rgb_image(path)
        if image.size != (width, height):
            raise UserError(f"image '{path}' is {image.size[0]}x{image.size[1]} but its record says {width}x{height}")
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise UserError(f"key {key!r} is not valid; expected index or (index, epoch)")
            index, epoch = key
            epoch = check_count("epoch", epoch, 0)
        else:
            index, epoch = key, self.epoch
        if isinstance(index, bool) or not isinstance(index, Integral):
            raise UserError(f"index {index!r} is not valid; expected an integer in [0, {len(self)})")
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range [0, {len(self)})")
        image = self.load_image(index)
        _, height, width, boxes, labels = self._records[index]
        if self.train:
            rng = np.random.default_rng([self.seed, index, epoch])
            tensor, boxes, labels = ssd_train_transform(image, boxes, labels, self.image_size, rng, self.augment)
        else:
            tensor = ssd_eval_transform(image, self.image_size)
        target = {"boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
                  "image_id": self.image_ids[index], "orig_size": (height, width)}
        return tensor, target


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``[(image (3, S, S), target), ...]`` -> ``(images (B, 3, S, S), [target, ...])`` (targets vary in size)."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "read")) from None
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"'{path}' is not a valid COCO annotations file: {type(exc).__name__}: {exc}") from None


def _encode_image(file_name: str, image: Image.Image | np.ndarray) -> tuple[bytes, int, int]:
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise UserError(f"image {file_name!r} has dtype {array.dtype} and shape {array.shape}; "
                            "expected an (H, W, 3) uint8 array or a PIL image")
        pil = Image.fromarray(array)
    suffix = Path(file_name).suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if suffix not in formats:
        raise UserError(f"image file name {file_name!r} has extension {suffix!r}; valid: .png, .jpg, .jpeg")
    buffer = io.BytesIO()
    # PNG at zlib level 1: noisy images barely compress better at higher levels, and it is 2x faster
    options = {"quality": 95} if formats[suffix] == "JPEG" else {"compress_level": 1}
    pil.save(buffer, format=formats[suffix], **options)
    return buffer.getvalue(), pil.size[0], pil.size[1]


def write_coco(root: str | os.PathLike[str], split: str,
               images: Iterable[tuple[str, Image.Image | np.ndarray]],
               annotations: Iterable[Mapping[str, Any]], categories: Sequence[Mapping[str, Any]]) -> Path:
    """Write one split of a COCO-format detection dataset under ``root``; return the annotations path.

    ``images``: ``(file_name, PIL image or (H, W, 3) uint8 array)``; the k-th image (from 0) gets
    COCO id ``k + 1`` and is saved as ``<root>/<split>2017/<file_name>`` (PNG or JPEG by extension;
    plain file names, unique). ``annotations``: dicts with ``image_id`` (a written id),
    ``category_id`` (one of ``categories``), ``bbox`` ``[x, y, w, h]`` in pixels, optional
    ``iscrowd`` (default 0), ``area`` (default ``w * h``), ``segmentation`` (default: the box as a
    polygon) and ``id`` (default: 1-based position). ``categories``: dicts with ``id`` and
    ``name`` (optional ``supercategory``). The JSON (``<root>/annotations/instances_<split>2017.json``)
    is written last and atomically; image files are each written atomically.
    """
    split = _check_split(split)
    root = Path(root)
    out_dir = image_dir(root, split)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "create")) from None
    cats = []
    for cat in categories:
        cid = cat.get("id")
        if isinstance(cid, bool) or not isinstance(cid, Integral) or cid < 1:
            raise UserError(f"category {dict(cat)!r} is not valid; expected an integer 'id' >= 1 and a 'name'")
        cats.append({"id": int(cid), "name": str(cat.get("name", cid)),
                     "supercategory": str(cat.get("supercategory", "object"))})
    if len({c["id"] for c in cats}) != len(cats) or not cats:
        raise UserError(f"category ids {[c['id'] for c in cats]} are not valid; expected unique ids, at least one")
    cat_ids = {c["id"] for c in cats}
    image_records, seen = [], set()
    for position, item in enumerate(images):
        file_name, image = item
        if not isinstance(file_name, str) or not file_name or "/" in file_name or "\\" in file_name \
                or file_name.startswith(".") or file_name in seen:
            raise UserError(f"image {position}: file name {file_name!r} is not valid; "
                            "expected a unique plain file name")
        seen.add(file_name)
        content, width, height = _encode_image(file_name, image)
        write_unsynced(out_dir / file_name, content)
        image_records.append({"id": position + 1, "file_name": file_name, "width": width, "height": height})
    ann_records = []
    for position, ann in enumerate(annotations):
        image_id, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if not isinstance(image_id, Integral) or not 1 <= image_id <= len(image_records):
            raise UserError(f"annotation {position}: image_id {image_id!r} is not valid; "
                            f"expected 1..{len(image_records)}")
        if cid not in cat_ids:
            raise UserError(f"annotation {position}: category_id {cid!r} is not valid; valid: {sorted(cat_ids)}")
        if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4:
            raise UserError(f"annotation {position}: bbox {bbox!r} is not valid; expected [x, y, w, h]")
        x, y, w, h = (float(v) for v in bbox)
        if not all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
            raise UserError(f"annotation {position}: bbox {bbox!r} is not valid; expected finite values, w, h >= 0")
        ann_records.append({
            "id": int(ann.get("id", position + 1)), "image_id": int(image_id), "category_id": int(cid),
            "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)), "iscrowd": int(ann.get("iscrowd", 0)),
            "segmentation": ann.get("segmentation", [[x, y, x + w, y, x + w, y + h, x, y + h]])})
    body = {"info": {"description": "written by sparsetrain.data.coco_detection.write_coco"},
            "licenses": [], "images": image_records, "annotations": ann_records, "categories": cats}
    return atomic_write(annotation_path(root, split), json.dumps(body, separators=(",", ":")))
