"""ImageNet (or any image classification tree) read from folders on disk; nothing is downloaded.

Layout (the usual ``ILSVRC2012`` preparation, with the validation images moved into class folders)::

    root/train/<wnid>/*.JPEG     (also .jpg / .jpeg / .png, any case; sub-folders are searched)
    root/val/<wnid>/*.JPEG

Invariants of :func:`load_imagenet_split`:

* classes are the sorted names of the non-hidden folders in ``root/train``; ``class_to_idx`` maps
  them to ``0..num_classes-1``; the val split uses the same mapping, so its folders must be a subset
  of the train folders;
* samples are ordered by class, then by path; every class folder must hold at least one image;
* train items are ``imagenet_train_transform(image_size)`` of the RGB image, test items are
  ``imagenet_eval_transform(image_size, resize_size)``; both are float32 ``(3, image_size,
  image_size)`` normalised with the ImageNet per-channel mean/std, labels are 0-dim int64 tensors;
* ``train_mean`` / ``train_std`` of the split are ``0.0`` / ``1.0``: the normalisation is per
  channel (:data:`~sparsetrain.data.transforms.IMAGENET_MEAN` / ``IMAGENET_STD``), not scalar;
* images are decoded lazily in ``__getitem__`` (so in DataLoader workers); one that cannot be read
  raises a one-line ``ValueError`` naming the file. Layout errors raise at load time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from .base import ClassificationSplit
from .transforms import imagenet_eval_transform, imagenet_train_transform
from ..errors import UserError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "find_classes", "load_imagenet_split", "load_rgb_image"]


def find_classes(directory: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory``."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def load_rgb_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode ``path`` fully as an RGB PIL image; a one-line ``ValueError`` naming it if that fails."""
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")  # convert() forces the decode while the file is open
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"cannot read image {str(path)!r} ({reason})") from None


class ImageFolderDataset(Dataset):
    """``(transform(rgb_image), label)`` for the images in ``root/<class>/...``.

    ``class_to_idx`` defaults to the sorted class folders of ``root``; pass another mapping (e.g. the
    train split's) to label a folder tree that holds only some of those classes. Attributes:
    ``classes``, ``class_to_idx``, ``samples`` (``[(path, label), ...]``) and ``targets``.
    Without a transform, items are ``(PIL.Image, int64 tensor)``.
    """

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[Image.Image], Any] | None = None,
                 class_to_idx: Mapping[str, int] | None = None):
        self.root = str(root)
        if not Path(self.root).is_dir():
            raise UserError(f"image folder {self.root!r} is not a directory")
        folders = find_classes(self.root)
        if not folders:
            raise UserError(f"image folder {self.root!r} has no class folders (expected {self.root}/<class>/*.JPEG)")
        if class_to_idx is None:
            class_to_idx = {name: index for index, name in enumerate(folders)}
        else:
            unknown = [name for name in folders if name not in class_to_idx]
            if unknown:
                raise UserError(f"image folder {self.root!r} has classes missing from the class mapping: "
                                 f"{_listing(unknown)}")
        self.class_to_idx = dict(class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        for name in folders:
            paths = _image_paths(os.path.join(self.root, name))
            if not paths:
                raise UserError(f"class folder {os.path.join(self.root, name)!r} has no "
                                 f"{'/'.join(IMAGE_EXTENSIONS)} images")
            label = self.class_to_idx[name]
            self.samples.extend((path, label) for path in paths)
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        path, label = self.samples[index]
        image = load_rgb_image(path)
        item = self.transform(image) if self.transform is not None else image
        return item, torch.tensor(label, dtype=torch.int64)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={self.root!r}, classes={len(self.classes)}, "
                f"samples={len(self.samples)}, transform={self.transform!r})")


def load_imagenet_split(root: str, image_size: int = 224, resize_size: int = 256) -> ClassificationSplit:
    """``root/train`` with the ImageNet train augmentation and ``root/val`` with the eval transform."""
    for name, value in (("image_size", image_size), ("resize_size", resize_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise UserError(f"dataset 'imagenet': {name}={value!r} is not an integer >= 1")
    if resize_size < image_size:
        raise UserError(f"dataset 'imagenet': resize_size={resize_size} is smaller than image_size={image_size}")
    root_path = Path(str(root))
    if not root_path.is_dir():
        raise UserError(f"dataset 'imagenet': root {str(root)!r} is not a directory")
    train_dir, val_dir = root_path / "train", root_path / "val"
    for directory in (train_dir, val_dir):
        if not directory.is_dir():
            raise UserError(f"dataset 'imagenet': {str(directory)!r} is missing (expected "
                             f"{directory}/<class>/*.JPEG)")
    try:
        train = ImageFolderDataset(train_dir, imagenet_train_transform(image_size))
        val_classes = find_classes(val_dir)
        extra = [name for name in val_classes if name not in train.class_to_idx]
        if extra:
            raise UserError(f"val classes are not a subset of the train classes: {_listing(extra)} are only in "
                             f"{str(val_dir)!r}")
        test = ImageFolderDataset(val_dir, imagenet_eval_transform(image_size, resize_size), train.class_to_idx)
    except ValueError as exc:
        raise UserError(f"dataset 'imagenet': {exc}") from None
    return ClassificationSplit(train=train, test=test, num_classes=len(train.classes),
                               input_shape=(3, image_size, image_size), train_mean=0.0, train_std=1.0)


def _image_paths(directory: str) -> list[str]:
    paths = []
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        paths.extend(os.path.join(folder, f) for f in files
                     if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(paths)


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
