"""Image datasets read from disk (ImageNet folder tree, CIFAR-10 python batches) and their transforms.

Everything runs on tiny fake datasets written to ``tmp_path``: nothing is downloaded.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from sparsetrain.data.cifar10 import Cifar10Dataset, load_cifar10_split, read_cifar10_batch
from sparsetrain.data.imagenet import ImageFolderDataset, load_imagenet_split
from sparsetrain.data.registry import DATASETS, dataset_options, load_dataset
from sparsetrain.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    cifar10_eval_transform,
    imagenet_eval_transform,
)

CLASSES = ("n01440764", "n01443537", "n01484850")
IMAGE_SIZE, RESIZE_SIZE = 16, 20


# ----------------------------------------------------------------------------- fake data


def _random_rgb(rng: np.random.Generator, width: int = 40, height: int = 30) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _write_imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    """root/{train,val}/<wnid>/*; even-numbered files are PNG (lossless), odd ones JPEG."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in CLASSES:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                image = _random_rgb(rng)
                if k % 2 == 0:
                    image.save(folder / f"{wnid}_{k}.png")
                else:
                    image.save(folder / f"{wnid}_{k}.JPEG", quality=95)
    (root / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    return _write_imagenet(tmp_path / "imagenet")


@pytest.fixture
def imagenet_split(imagenet_root: Path):
    return load_imagenet_split(str(imagenet_root), image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE)


TRAIN_PER_BATCH, TEST_SIZE = 4, 3


def _cifar_batch(rng: np.random.Generator, size: int) -> dict:
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(size, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=size)],
        b"filenames": [f"img_{i}.png".encode() for i in range(size)],
    }


def _write_cifar(folder: Path) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(rng, TRAIN_PER_BATCH) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, TEST_SIZE)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}))
    return batches


@pytest.fixture
def cifar_root(tmp_path: Path):
    root = tmp_path / "cifar"
    return root, _write_cifar(root)


# ----------------------------------------------------------------------------- ImageNet


def test_imagenet_split_sizes_classes_and_shapes(imagenet_split, imagenet_root):
    split = imagenet_split
    assert (len(split.train), len(split.test)) == (12, 6)
    assert split.num_classes == 3 and split.input_shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert (split.train_mean, split.train_std) == (0.0, 1.0)
    assert split.train.class_to_idx == {name: i for i, name in enumerate(CLASSES)}
    assert split.test.class_to_idx == split.train.class_to_idx
    assert split.train.targets == [0] * 4 + [1] * 4 + [2] * 4 and split.test.targets == [0, 0, 1, 1, 2, 2]
    paths = [Path(p) for p, _ in split.train.samples]
    assert all(p.suffix in (".png", ".JPEG") for p in paths)  # notes.txt skipped
    assert paths == sorted(paths) and paths[0].parent == imagenet_root / "train" / CLASSES[0]
    for dataset in (split.train, split.test):
        image, label = dataset[5]
        assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
        assert label.dtype == torch.int64 and label.dim() == 0 and int(label) == dataset.targets[5]


def test_imagenet_eval_transform_is_deterministic_and_normalises(imagenet_split):
    first, label = imagenet_split.test[0]
    assert torch.equal(first, imagenet_split.test[0][0]) and int(label) == 0
    # The same pipeline by hand: 40x30 -> shorter side 20 -> 26x20, central 16x16 at (top 2, left 5).
    path = imagenet_split.test.samples[0][0]
    with Image.open(path) as raw:
        resized = np.asarray(raw.convert("RGB").resize((26, 20), Image.BILINEAR), dtype=np.float64)
    crop = resized[2:18, 5:21]
    for channel, (y, x) in ((0, (0, 0)), (1, (7, 11)), (2, (15, 15))):
        expected = (crop[y, x, channel] / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert float(first[channel, y, x]) == pytest.approx(expected, abs=1e-5)


def test_imagenet_train_transform_reproducible_per_seed(imagenet_split):
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([imagenet_split.train[i][0] for i in (0, 1, 0)])

    with torch.random.fork_rng(devices=[]):
        assert torch.equal(draw(0), draw(0))
        others = [draw(seed) for seed in (1, 2, 3)]
    assert all(not torch.equal(draw_other, others[0]) for draw_other in others[1:])
    assert not torch.equal(others[0][0], others[0][2])  # the same image, two different crops


def test_imagenet_one_epoch_through_a_two_worker_dataloader(imagenet_split):
    def epoch() -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(imagenet_split.train, batch_size=5, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(7))
        batches = list(loader)
        assert [len(labels) for _, labels in batches] == [5, 5, 2]
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    images, labels = epoch()
    assert images.shape == (12, 3, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == imagenet_split.train.targets
    again_images, again_labels = epoch()
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)


def test_imagenet_through_the_registry(imagenet_root):
    assert DATASETS["imagenet"] is load_imagenet_split
    assert dataset_options("imagenet") == ("root", "image_size", "resize_size")
    split = load_dataset("imagenet", root=str(imagenet_root), image_size=8, resize_size=10)
    assert split.test[0][0].shape == (3, 8, 8) and split.input_shape == (3, 8, 8)


def _message(path) -> str:
    return re.escape(repr(str(path)))


def test_imagenet_layout_errors(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"^dataset 'imagenet': root {_message(missing)} is not a directory$"):
        load_imagenet_split(str(missing))
    root = _write_imagenet(tmp_path / "a")
    (root / "val").rename(tmp_path / "a_val")
    with pytest.raises(ValueError, match=f"^dataset 'imagenet': {_message(root / 'val')} is missing"):
        load_imagenet_split(str(root))
    (tmp_path / "a_val").rename(root / "train_")
    (root / "train").rename(root / "val")
    with pytest.raises(ValueError, match=f"{_message(root / 'train')} is missing"):
        load_imagenet_split(str(root))

    empty = tmp_path / "b"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(ValueError, match=f"^dataset 'imagenet': image folder {_message(empty / 'train')} "
                                         "has no class folders"):
        load_imagenet_split(str(empty))

    root = _write_imagenet(tmp_path / "c")
    (root / "train" / "n09999999").mkdir()
    (root / "train" / "n09999999" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=f"^dataset 'imagenet': class folder "
                                         f"{_message(root / 'train' / 'n09999999')} has no .jpeg/.jpg/.png images$"):
        load_imagenet_split(str(root), image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE)

    root = _write_imagenet(tmp_path / "d")
    (root / "val" / CLASSES[0]).rename(root / "val" / "n00000001")
    with pytest.raises(ValueError, match=r"^dataset 'imagenet': val classes are not a subset of the train "
                                         f"classes: 'n00000001' are only in {_message(root / 'val')}$"):
        load_imagenet_split(str(root))

    with pytest.raises(ValueError, match=r"resize_size=8 is smaller than image_size=16"):
        load_imagenet_split(str(root), image_size=16, resize_size=8)


def test_imagenet_val_may_hold_fewer_classes(tmp_path: Path):
    root = _write_imagenet(tmp_path / "imagenet")
    for path in (root / "val" / CLASSES[1]).iterdir():
        path.unlink()
    (root / "val" / CLASSES[1]).rmdir()
    split = load_imagenet_split(str(root), image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE)
    assert split.num_classes == 3 and split.test.targets == [0, 0, 2, 2]


def test_corrupt_image_is_named_when_loaded(imagenet_root: Path):
    bad = imagenet_root / "train" / CLASSES[1] / f"{CLASSES[1]}_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    split = load_imagenet_split(str(imagenet_root), image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE)
    index = [p for p, _ in split.train.samples].index(str(bad))
    with pytest.raises(ValueError, match=f"^cannot read image {_message(bad)} \\(") as info:
        split.train[index]
    assert "\n" not in str(info.value)
    split.train[index - 1]  # its neighbours still load


def test_image_folder_dataset_without_transform(imagenet_root: Path):
    dataset = ImageFolderDataset(imagenet_root / "val")
    image, label = dataset[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (40, 30)
    assert int(label) == 1 and dataset.classes == list(CLASSES)


# ----------------------------------------------------------------------------- CIFAR-10


def _hwc(batch: dict, index: int) -> np.ndarray:
    return batch[b"data"][index].reshape(3, 32, 32).transpose(1, 2, 0)


def test_cifar10_split_sizes_labels_and_eval_pixels(cifar_root):
    root, batches = cifar_root
    split = load_cifar10_split(str(root))
    assert (len(split.train), len(split.test)) == (5 * TRAIN_PER_BATCH, TEST_SIZE)
    assert split.num_classes == 10 and split.input_shape == (3, 32, 32)
    train_labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert split.train.targets == train_labels and split.test.targets == batches["test_batch"][b"labels"]
    assert split.train.classes[0] == "airplane" and len(split.train.classes) == 10
    image, label = split.test[2]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == batches["test_batch"][b"labels"][2]
    raw = batches["test_batch"][b"data"][2]
    for channel, y, x in ((0, 0, 0), (1, 5, 31), (2, 31, 17)):
        expected = (raw[channel * 1024 + y * 32 + x] / 255.0 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]
        assert float(image[channel, y, x]) == pytest.approx(expected, abs=1e-5)
    assert torch.equal(image, split.test[2][0])


def test_cifar10_train_items_are_flipped_crops_of_the_reflect_padded_image(cifar_root):
    root, batches = cifar_root
    split = load_cifar10_split(str(root))
    padded = np.pad(_hwc(batches["data_batch_2"], 1), ((4, 4), (4, 4), (0, 0)), mode="reflect")
    normalise = cifar10_eval_transform()
    candidates = [normalise(np.ascontiguousarray(view[top:top + 32, left:left + 32]))
                  for view in (padded, padded[:, ::-1]) for top in range(9) for left in range(9)]
    with torch.random.fork_rng(devices=[]):
        draws = []
        for seed in range(6):
            torch.manual_seed(seed)
            image, label = split.train[TRAIN_PER_BATCH + 1]
            assert int(label) == batches["data_batch_2"][b"labels"][1]
            draws.append(image)
            assert any(torch.allclose(image, c, atol=1e-6) for c in candidates)
        torch.manual_seed(3)
        assert torch.equal(split.train[TRAIN_PER_BATCH + 1][0], draws[3])
    assert len({tuple(d.flatten()[:64].tolist()) for d in draws}) > 1


def test_cifar10_nested_folder_and_registry(tmp_path: Path):
    _write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    assert DATASETS["cifar10"] is load_cifar10_split and dataset_options("cifar10") == ("root",)
    split = load_dataset("cifar10", root=str(tmp_path / "data"))
    assert len(split.train) == 20 and split.train[0][0].shape == (3, 32, 32)


def test_cifar10_errors(cifar_root, tmp_path: Path):
    root, batches = cifar_root
    with pytest.raises(ValueError, match=r"^dataset 'cifar10': root .* is not a directory$"):
        load_cifar10_split(str(tmp_path / "nowhere"))
    (root / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=f"^dataset 'cifar10': missing batch file {_message(root / 'data_batch_3')}"):
        load_cifar10_split(str(root))
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": batches["data_batch_1"][b"data"]}))
    with pytest.raises(ValueError, match=f"^dataset 'cifar10': CIFAR-10 batch {_message(root / 'data_batch_3')} "
                                         r"lacks b'data' or b'labels'"):
        load_cifar10_split(str(root))
    bad_shape = {**batches["data_batch_1"], b"data": np.zeros((4, 1024), dtype=np.uint8)}
    (root / "data_batch_3").write_bytes(pickle.dumps(bad_shape))
    with pytest.raises(ValueError, match=r"data is uint8 \(4, 1024\), expected uint8 \(N, 3072\)$"):
        load_cifar10_split(str(root))
    bad_labels = {**batches["data_batch_1"], b"labels": [0, 1, 2]}
    (root / "data_batch_3").write_bytes(pickle.dumps(bad_labels))
    with pytest.raises(ValueError, match=r"3 labels for 4 images$"):
        load_cifar10_split(str(root))
    out_of_range = {**batches["data_batch_1"], b"labels": [0, 1, 2, 10]}
    (root / "data_batch_3").write_bytes(pickle.dumps(out_of_range))
    with pytest.raises(ValueError, match=r"labels must be in 0..9, found 0..10$"):
        load_cifar10_split(str(root))
    (root / "data_batch_3").write_bytes(b"garbage, not a pickle")
    with pytest.raises(ValueError, match=f"CIFAR-10 file {_message(root / 'data_batch_3')} is not a readable pickle"):
        read_cifar10_batch(root / "data_batch_3")


def test_cifar10_dataset_checks_arrays():
    with pytest.raises(ValueError, match="must be uint8 \\(N, H, W, 3\\)"):
        Cifar10Dataset(np.zeros((2, 32, 32, 3), dtype=np.float32), np.zeros(2, dtype=np.int64))


# ----------------------------------------------------------------------------- transforms


@given(
    width=st.integers(1, 80),
    height=st.integers(1, 80),
    size=st.integers(1, 24) | st.tuples(st.integers(1, 24), st.integers(1, 24)),
    scale_low=st.floats(0.01, 1.0),
    scale_span=st.floats(0.0, 1.0),
    ratio_low=st.floats(0.2, 1.0),
    ratio_span=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_resized_crop_box_in_bounds_and_exact_output(width, height, size, scale_low, scale_span,
                                                            ratio_low, ratio_span, seed):
    crop = RandomResizedCrop(size, scale=(scale_low, scale_low + scale_span),
                             ratio=(ratio_low, ratio_low + ratio_span))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, h, w = crop.params(width, height)
        torch.manual_seed(seed)
        out = crop(Image.new("RGB", (width, height)))
    assert 0 <= top and 0 <= left and 1 <= h and 1 <= w
    assert top + h <= height and left + w <= width
    expected_hw = (size, size) if isinstance(size, int) else size
    assert out.size == (expected_hw[1], expected_hw[0])


def test_random_resized_crop_fallback_is_a_central_crop():
    # A 100x1 strip: no sampled box fits, so the fallback takes the central 1x1 (ratio clamped to 4/3).
    assert RandomResizedCrop(4).params(100, 1) == (0, 49, 1, 1)
    # Impossible scale: whole image when its aspect ratio is allowed.
    assert RandomResizedCrop(4, scale=(2.0, 3.0)).params(30, 40) == (0, 0, 40, 30)
    assert RandomResizedCrop(4, scale=(2.0, 3.0)).params(10, 40) == (13, 0, 13, 10)
    # Fallback boxes never collapse to zero size (torchvision's formula would give height 0 here).
    assert RandomResizedCrop(4, ratio=(3.0, 4.0)).params(1, 10) == (4, 0, 1, 1)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(4, scale=(0.5, 0.1))


def test_geometric_transforms_and_tensor_conversion():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    assert Resize(20)(image).size == (26, 20) and Resize(20)(image.transpose(Image.TRANSPOSE)).size == (20, 26)
    assert Resize((7, 9))(image).size == (9, 7) and Resize(30)(image) is image
    assert np.array_equal(np.asarray(CenterCrop(10)(image)), pixels[10:20, 15:25])
    assert np.array_equal(np.asarray(CenterCrop((4, 5))(image)), pixels[13:17, 18:23])
    padded = np.asarray(CenterCrop(34)(image))  # larger than the image: zero padded
    assert padded.shape == (34, 34, 3) and np.array_equal(padded[2:32], pixels[:, 3:37]) and padded[0].max() == 0
    assert np.array_equal(np.asarray(RandomHorizontalFlip(1.0)(image)), pixels[:, ::-1])
    assert RandomHorizontalFlip(0.0)(image) is image
    assert RandomCrop((30, 40))(image) is image
    assert RandomCrop(36, padding=3)(image).size == (36, 36)
    with pytest.raises(ValueError, match="larger than the"):
        RandomCrop(31)(image)
    tensor = ToTensor()(image)
    assert tensor.shape == (3, 30, 40) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    normalised = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(tensor)
    assert torch.allclose(normalised[1], (tensor[1] - 0.25) / 0.25)
    composed = Compose([CenterCrop(8), ToTensor()])(image)
    assert composed.shape == (3, 8, 8)
    evaluated = imagenet_eval_transform(image_size=8, resize_size=10)(image)
    assert evaluated.shape == (3, 8, 8)


@pytest.mark.parametrize("dataset", ["imagenet", "cifar10"])
def test_one_epoch_end_to_end_through_the_runner(tmp_path: Path, imagenet_root: Path, cifar_root, dataset):
    """The fake folders go through `sparsetrain run`: dense epoch, GP prune, fine-tune epoch, two workers."""
    import yaml

    from sparsetrain.cli import main

    root = imagenet_root if dataset == "imagenet" else cifar_root[0]
    options = {"root": str(root), **({"image_size": 16, "resize_size": 20} if dataset == "imagenet" else {})}
    config = {"name": dataset, "output_dir": str(tmp_path / "run"), "seed": 0, "threads": 1,
              "task": {"dataset": {"name": dataset, "options": options},
                       "model": {"name": "small_resnet", "options": {"width": 4}}},
              "data": {"batch_size": 4, "num_workers": 2}, "training": {"progress": False},
              "stages": [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
                         {"kind": "finetune", "epochs": 1}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sparsity"] == round(0.5 * summary["target_numel"]) / summary["target_numel"]
