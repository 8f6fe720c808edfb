"""Part segmentation of point clouds: PointNet++ on ShapeNet part, scored by mIoU as the PointNet++ evaluation.

Data (``task.dataset.name``): ``shapenet_part`` reads the ``shapenetcore_partanno_segmentation_benchmark_v0_normal``
directory (``options.root``); ``embedded_parts`` writes the offline parametric-part dataset in the same layout
(:mod:`sparsetrain.data.embedded_parts`) and reads it with the same reader. Every item is ``(points (N, 3|6),
category, part labels (N,))``; which points are sampled (and the training augmentation: one scale in
[0.8, 1.25] and one shift in ±0.1 per cloud) depends only on (seed, shape, epoch), so resume and P-GaP's
worker streams see the same clouds. The model takes ``(B, C, N)`` points and the category one-hot and returns
per-point log-probabilities over the 50 parts; the loss is their negative log-likelihood, a mean over points.

Metrics (percent, names as :meth:`PartSegmentationTask.evaluate` returns them): predictions restricted to the
parts of the shape's (known) category, as the standard evaluation does; per shape, the IoU of every part of its
category (a part absent from both prediction and ground truth counts as 1), averaged; ``instance_miou`` (the
mean over shapes; primary, higher is better), ``class_miou`` (the mean over the categories present of their
shapes' mean), ``iou_<Category>`` per category present, ``accuracy`` (points), and ``loss`` (mean NLL per
point). ``task.options.votes`` > 1 averages the log-probabilities of that many forward passes, each after a
seeded permutation of the points (which moves the farthest-point sampler's start and the neighbourhoods),
the deterministic form of the reference's voting over random sampler starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.base import embedded_cache_dir
from ..errors import UserError
from ..methods.schema import StrictModel
from .base import Task, parse_options
from .registry import register_task

if TYPE_CHECKING:
    from ..config import RunConfig

DATASETS = ("shapenet_part", "embedded_parts")


class PartPlanFacts(StrictModel):
    """What ``plan`` assumes when the data is not on this machine."""

    train_shapes: int = Field(ge=1)


class PartSegDataOptions(StrictModel):
    """``task.dataset.options`` of the part-segmentation task."""

    root: str | None = Field(None, description="shapenet_part: the ..._v0_normal directory")
    npoints: int = Field(2048, ge=32, description="points sampled per shape (with replacement)")
    normal_channel: bool = Field(False, description="feed the normals as 3 more input channels")
    categories: list[str] | None = Field(None, description="only these categories (default: all)")
    train_split: Literal["train", "trainval"] = "trainval"
    eval_split: Literal["val", "test"] = "test"
    augment: bool = Field(True, description="training: one random scale in [0.8, 1.25] and shift in ±0.1 per cloud")
    cache: str | None = Field(None, description="embedded_parts: where it is written (default: $SPARSETRAIN_CACHE "
                              "or ~/.cache/sparsetrain)")
    n_train: int = Field(600, ge=1)
    n_val: int = Field(100, ge=1)
    n_test: int = Field(200, ge=1)
    points_per_shape: int = Field(2048, ge=32)
    plan: PartPlanFacts | None = Field(None, description="sizes `plan` uses when the data is not on this machine")


class PartSegOptions(StrictModel):
    """``task.options`` of the part-segmentation task."""

    votes: int = Field(1, ge=1, description="test-time voting: forward passes averaged per evaluation batch")




class EpochSampled(Dataset):
    """A :class:`~sparsetrain.data.shapenet_part.ShapeNetPart` whose items are keyed by ``(index, epoch)``:
    the clouds of an epoch are a pure function of the key, in the main process and in loader workers alike."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


@register_task("part_segmentation")
class PartSegmentationTask(Task):
    PRIMARY = ("instance_miou", "max")
    EPOCH_KEYED_ITEMS = True  # items are (index, epoch): the point sample and augmentation follow the key
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "Instance mIoU", "short": "Inst. mIoU",
                                              "log": "instance mIoU", "percent": True}
    DEMO = "../configs/demo_part_segmentation"
    """``sparsetrain demo --task part_segmentation``: dense, GP, S-GaP and P-GaP (kappa 2: SA | FP + head) at 0.8
    and 0.9 on the embedded parts (400 training / 160 test shapes) with ``pointnet2_part_seg_small`` at 256
    points, 10 epochs per row, every conv weight a target (about 9 minutes for 3 seeds on 2 cores)."""
    DEMO_DESCRIPTION = ("Instance mIoU (percent) on the embedded part-segmentation test split (160 shapes of 8 ShapeNet "
                        "categories built from primitives), final epoch; equal epoch budget (10) per row.")

    def __init__(self, config: RunConfig, train_set: Dataset, eval_set: Dataset, data_options: PartSegDataOptions,
                 options: PartSegOptions) -> None:
        super().__init__(config, train_set, eval_set)
        self.data_options, self.options = data_options, options
        from ..data.shapenet_part import CATEGORIES, SEG_CLASSES

        self.category_names = CATEGORIES
        self.num_parts = max(max(parts) for parts in SEG_CLASSES.values()) + 1
        # (categories, parts) additive mask: 0 on a category's own parts, -inf elsewhere
        allowed = torch.full((len(CATEGORIES), self.num_parts), float("-inf"))
        for index, name in enumerate(CATEGORIES):
            allowed[index, list(SEG_CLASSES[name])] = 0.0
        self.allowed = allowed

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        cls.check_catalog(config, "part-segmentation dataset", "PointNet++ part-segmentation model")
        parse_options(PartSegDataOptions, config.task.dataset.options, "task.dataset.options")
        parse_options(PartSegOptions, config.task.options, "task.options")

    @classmethod
    def build(cls, config: RunConfig) -> PartSegmentationTask:
        from ..data.shapenet_part import ShapeNetPart

        data = parse_options(PartSegDataOptions, config.task.dataset.options, "task.dataset.options")
        options = parse_options(PartSegOptions, config.task.options, "task.options")
        root = _data_root(config.task.dataset.name, data)
        common = {"npoints": data.npoints, "normal_channel": data.normal_channel, "categories": data.categories,
                  "seed": config.seed}
        train = ShapeNetPart(root, data.train_split, augment=data.augment, **common)
        test = ShapeNetPart(root, data.eval_split, augment=False, **common)
        return cls(config, EpochSampled(train), EpochSampled(test), data, options)

    def build_model(self) -> nn.Module:
        return _model(self.config, self.data_options)

    @classmethod
    def plan_facts(cls, config: RunConfig) -> tuple[Any, ...] | None:
        """From ``task.dataset.options.plan`` when the ShapeNet directory is absent (the paper configs)."""
        data = parse_options(PartSegDataOptions, config.task.dataset.options, "task.dataset.options")
        if data.plan is None or (data.root is not None and Path(data.root).is_dir()):
            return None
        return data.plan.train_shapes, _model(config, data), _example(data)

    @classmethod
    def catalog(cls) -> dict[str, list[str]]:
        from ..models.pointnet2 import POINTNET2_MODELS

        return {"datasets": list(DATASETS), "models": list(POINTNET2_MODELS)}

    def example_input(self) -> Any:
        """One cloud of ``npoints`` points at the origin (channels first) and the first category's one-hot."""
        return _example(self.data_options)

    # ---- batches ------------------------------------------------------------------------------
    def batch_inputs(self, batch: Any) -> Any:
        return batch[0]

    # ---- loss and metrics -----------------------------------------------------------------------
    def forward(self, model: nn.Module, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, N, parts)`` of ``points`` ``(B, N, C)`` of categories ``category`` ``(B,)``."""
        one_hot = F.one_hot(category, len(self.category_names)).to(points.dtype)
        log_probs, _ = model(points.transpose(1, 2), one_hot)
        return log_probs

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """``(mean negative log-likelihood per point, shapes in the batch)``."""
        points, category, parts = batch
        log_probs = self.forward(model, points, category).float()
        return F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), parts.reshape(-1)), parts.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
        shape_ious: dict[int, list[float]] = {}
        nll, correct, seen = 0.0, 0, 0
        allowed = self.allowed.to(device)
        for points, category, parts in self.eval_batches(model, loader, device, max_batches):
            log_probs = self.voted(model, points, category)
            nll += float(F.nll_loss(log_probs.reshape(-1, log_probs.shape[-1]), parts.reshape(-1), reduction="sum"))
            predicted = (log_probs + allowed[category][:, None, :]).argmax(-1)  # only the category's own parts
            correct += int((predicted == parts).sum())
            seen += parts.numel()
            for cat, pred, truth in zip(category.tolist(), predicted, parts):
                shape_ious.setdefault(cat, []).append(shape_iou(pred, truth, self.allowed[cat]))
        instances = [iou for ious in shape_ious.values() for iou in ious]
        per_category = {self.category_names[c]: float(np.mean(ious)) for c, ious in sorted(shape_ious.items())}
        metrics = {"instance_miou": 100.0 * float(np.mean(instances)) if instances else 0.0,
                   "class_miou": 100.0 * float(np.mean(list(per_category.values()))) if per_category else 0.0,
                   "accuracy": 100.0 * correct / max(seen, 1), "loss": nll / max(seen, 1)}
        metrics |= {f"iou_{name}": 100.0 * value for name, value in per_category.items()}
        return metrics

    def voted(self, model: nn.Module, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Log-probabilities averaged over ``task.options.votes`` passes; pass ``v > 0`` sees the points in a
        permutation seeded by (seed, v) and is permuted back."""
        total = self.forward(model, points, category).float()
        for vote in range(1, self.options.votes):
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + vote)
            order = torch.randperm(points.shape[1], generator=generator).to(points.device)
            permuted = self.forward(model, points[:, order], category).float()
            total += permuted[:, torch.argsort(order)]
        return total / self.options.votes


def shape_iou(predicted: torch.Tensor, truth: torch.Tensor, allowed: torch.Tensor) -> float:
    """Mean IoU over the parts a shape's category has (``allowed`` is 0 there): a part absent from both the
    prediction and the ground truth counts as 1, as the PointNet++ evaluation."""
    ious = []
    for part in torch.nonzero(allowed == 0).flatten().tolist():
        p, t = predicted == part, truth == part
        union = int((p | t).sum())
        ious.append(1.0 if union == 0 else int((p & t).sum()) / union)
    return float(np.mean(ious))


def _model(config: RunConfig, data: PartSegDataOptions) -> nn.Module:
    from ..data.shapenet_part import CATEGORIES, SEG_CLASSES
    from ..models.pointnet2 import build_pointnet2

    num_parts = max(max(parts) for parts in SEG_CLASSES.values()) + 1
    return build_pointnet2(config.task.model.name, num_parts=num_parts, num_categories=len(CATEGORIES),
                           normal_channel=data.normal_channel, **config.task.model.options)


def _example(data: PartSegDataOptions) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.shapenet_part import CATEGORIES

    channels = 6 if data.normal_channel else 3
    points = torch.linspace(-1, 1, channels * data.npoints).reshape(channels, data.npoints)
    return points, F.one_hot(torch.tensor(0), len(CATEGORIES)).float()


def _data_root(name: str, data: PartSegDataOptions) -> Path:
    """The dataset's directory; the embedded one is fixed (generator seed 0) whatever the run's seed."""
    if name == "embedded_parts":
        from ..data.embedded_parts import embedded_part_dataset

        return embedded_part_dataset(embedded_cache_dir(data.cache), n_train=data.n_train, n_val=data.n_val,
                                     n_test=data.n_test, points_per_shape=data.points_per_shape)
    if data.root is None:
        raise UserError("task.dataset.name='shapenet_part' reads a directory: set task.dataset.options.root "
                        "(shapenetcore_partanno_segmentation_benchmark_v0_normal)")
    return Path(data.root)
