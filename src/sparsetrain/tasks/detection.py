"""Object detection: SSD on COCO-2017 (or the embedded shapes), scored by COCO mAP through pycocotools.

Data (``task.dataset.name``): ``coco2017`` reads COCO as distributed (``options.root`` holding
``annotations/instances_{train,val}2017.json`` and the ``train2017/``, ``val2017/`` images);
``embedded_shapes`` writes the offline detection dataset in the same layout
(:mod:`sparsetrain.data.embedded_detection`) and reads it with the same reader
(:class:`~sparsetrain.data.coco_detection.CocoDetection`). An item is ``(image (3, S, S) normalised,
{"boxes": (n, 4) ltrb in [0, 1], "labels": (n,) in 1..C, "image_id", "orig_size"})`` with ``S`` the
model's input side; the training augmentation (SSD's IoU-constrained crop, flip, colour jitter) depends only
on (seed, image, epoch), so resume and P-GaP's worker streams see the same images.

Training: the model maps images to ``(offsets (B, 4, D), logits (B, classes, D))`` over its ``D`` default
boxes; every image's ground truth is matched to the default boxes and the loss is SSD's multibox loss
(smooth-L1 on positives + cross-entropy on positives and 3:1 hard negatives, per image over its positives,
mean over images) — :mod:`.detection_boxes`. Evaluation decodes, keeps scores > 0.05, the top 200 per
class, NMS at IoU 0.5 per class, at most 200 per image (NVIDIA's SSD300 v1.1 post-processing; all in
``task.options``), writes the detections in the COCO results format and runs ``COCOeval``
(:mod:`.detection_coco_eval`).

Metrics (percent): ``map`` (mAP@[.5:.95], primary, higher is better), ``ap50``, ``ap75``, ``ap_small``,
``ap_medium``, ``ap_large``, ``ar1``, ``ar10``, ``ar100``, ``ar_small/medium/large`` (those COCOeval
defines for the split), ``detections`` (per image, not a percent) and ``loss`` (the multibox loss).
Evaluation runs where the runner evaluates: on rank 0, over the whole evaluation split, so under torchrun
there is nothing to gather.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.base import embedded_cache_dir
from ..errors import UserError
from ..methods.schema import StrictModel
from .base import Task, parse_options
from .registry import register_task

if TYPE_CHECKING:
    from ..config import RunConfig

DATASETS = ("coco2017", "embedded_shapes")
COCO_CLASSES = 80
"""COCO-2017's detection categories (``plan`` builds an 81-way model without reading the annotations)."""


class DetectionPlanFacts(StrictModel):
    """What ``plan`` assumes when the data is not on this machine."""

    train_images: int = Field(ge=1)


class DetectionDataOptions(StrictModel):
    """``task.dataset.options`` of the detection task."""

    root: str | None = Field(None, description="coco2017: the directory holding annotations/, train2017/, val2017/")
    train_split: Literal["train", "val"] = Field("train", description="annotations/instances_<split>2017.json "
                                                 "trained on (with SSD's augmentation; images without boxes skipped)")
    eval_split: Literal["train", "val"] = Field("val", description="the split evaluated (every image)")
    augment: Literal["ssd", "flip", "none"] = Field("ssd", description="training augmentation: ssd = IoU-constrained "
                                                    "crop + flip + colour jitter (the reference), flip = horizontal flip only")
    cache: str | None = Field(None, description="embedded_shapes: where it is written (default: $SPARSETRAIN_CACHE "
                              "or ~/.cache/sparsetrain)")
    n_train: int = Field(600, ge=1, description="embedded_shapes: training images")
    n_val: int = Field(200, ge=1, description="embedded_shapes: evaluation images")
    plan: DetectionPlanFacts | None = Field(None, description="sizes `plan` uses when the data is not on this machine")


class DetectionOptions(StrictModel):
    """``task.options``: matching, loss and post-processing (defaults: NVIDIA's SSD300 v1.1)."""

    match_iou: float = Field(0.5, gt=0.0, lt=1.0, description="a default box is positive above this IoU")
    negative_ratio: float = Field(3.0, gt=0.0, description="hard negatives per positive in the loss")
    score_threshold: float = Field(0.05, ge=0.0, lt=1.0, description="detections scoring at most this are dropped")
    candidates_per_class: int = Field(200, ge=1, description="top-scoring boxes per class entering NMS")
    nms_iou: float = Field(0.5, gt=0.0, le=1.0, description="NMS suppresses a box above this IoU with a better one")
    max_detections: int = Field(200, ge=1, description="detections kept per image (best scores)")
    figure_images: int = Field(6, ge=0, le=24, description="test images drawn with their predictions in the report")
    figure_min_score: float = Field(0.3, ge=0.0, le=1.0, description="the least score of a detection drawn there")


@register_task("detection")
class DetectionTask(Task):
    PRIMARY = ("map", "max")
    EPOCH_KEYED_ITEMS = True  # items are (index, epoch): the augmentation is a function of the key
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "mAP@[.5:.95]", "short": "mAP", "log": "mAP",
                                              "percent": True}
    DEMO = "../configs/demo_detection"
    """``sparsetrain demo --task detection``: dense, GP, S-GaP and P-GaP at 0.8 and 0.9 on the embedded shapes with
    the small SSD (every conv weight a target)."""
    DEMO_DESCRIPTION = ("COCO mAP@[.5:.95] (percent, pycocotools) on the embedded shapes' evaluation split, final "
                        "epoch; equal epoch budget per row.")

    def __init__(self, config: RunConfig, train_set: Dataset, eval_set: Dataset, data_options: DetectionDataOptions,
                 options: DetectionOptions) -> None:
        super().__init__(config, train_set, eval_set)
        from ..data.coco_detection import collate

        self.data_options, self.options = data_options, options
        self.collate_fn = collate
        self.num_classes = eval_set.num_classes  # with the background, label 0
        self._coders: dict[torch.device, Any] = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        cls.check_catalog(config, "detection dataset", "SSD model")
        parse_options(DetectionDataOptions, config.task.dataset.options, "task.dataset.options")
        parse_options(DetectionOptions, config.task.options, "task.options")

    @classmethod
    def build(cls, config: RunConfig) -> DetectionTask:
        from ..data.coco_detection import CocoDetection

        data = parse_options(DetectionDataOptions, config.task.dataset.options, "task.dataset.options")
        options = parse_options(DetectionOptions, config.task.options, "task.options")
        size = _model_on_meta(config, COCO_CLASSES + 1).image_size
        root = _data_root(config.task.dataset.name, data, size)
        train = CocoDetection(root, data.train_split, image_size=size, train=True, seed=config.seed,
                              augment=data.augment)
        test = CocoDetection(root, data.eval_split, image_size=size, train=False, seed=config.seed)
        if train.label_to_category_id != test.label_to_category_id:
            raise UserError(f"{root}: the {data.train_split!r} and {data.eval_split!r} annotations list different "
                            "categories; valid: the same categories in both")
        return cls(config, train, test, data, options)

    def build_model(self) -> nn.Module:
        return _model(self.config, self.num_classes)

    @classmethod
    def plan_facts(cls, config: RunConfig) -> tuple[Any, ...] | None:
        """From ``task.dataset.options.plan`` when the COCO directory is absent (the paper configs): an 81-way model."""
        data = parse_options(DetectionDataOptions, config.task.dataset.options, "task.dataset.options")
        if data.plan is None or (data.root is not None and Path(data.root).is_dir()):
            return None
        model = _model(config, COCO_CLASSES + 1)
        return data.plan.train_images, model, torch.zeros(3, model.image_size, model.image_size)

    @classmethod
    def load_backbone(cls, model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
        """A torchvision-format ResNet-50 state dict (``conv1``, ``bn1``, ``layer1..3``; ``layer4`` and ``fc`` are
        ignored) into an SSD-R50's ``feature_extractor``."""
        from ..models.ssd import load_backbone

        load_backbone(model, state)

    @classmethod
    def catalog(cls) -> dict[str, list[str]]:
        from ..models.ssd import SSD_MODELS

        return {"datasets": list(DATASETS), "models": list(SSD_MODELS)}

    def example_input(self) -> Any:
        return self.eval_set[0][0]

    # ---- batches ------------------------------------------------------------------------------
    def coder(self, model: nn.Module, device: torch.device) -> Any:
        """The :class:`~.detection_boxes.BoxCoder` of ``model``'s default boxes on ``device`` (built once)."""
        if device not in self._coders:
            from .detection_boxes import BoxCoder

            inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
            self._coders[device] = BoxCoder(inner.default_boxes().to(device))
        return self._coders[device]

    # ---- loss and metrics -----------------------------------------------------------------------
    def targets(self, coder: Any, targets: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(offsets (B, 4, D), labels (B, D))`` the network should output for a batch's ground truth."""
        locations, labels = coder.encode_batch([(t["boxes"], t["labels"]) for t in targets], self.options.match_iou)
        return coder.offsets(locations), labels

    def batch_loss(self, model: nn.Module, images: torch.Tensor, targets: list[dict[str, Any]],
                   coder: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(multibox loss, predicted offsets, logits)`` of one batch."""
        from .detection_boxes import multibox_loss

        offsets, logits = model(images)
        target_offsets, target_labels = self.targets(coder, targets)
        loss = multibox_loss(offsets.float(), logits.float(), target_offsets, target_labels,
                             negative_ratio=self.options.negative_ratio)
        return loss, offsets, logits

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """``(multibox loss of the batch, images in it)``."""
        images, targets = batch
        loss, _, _ = self.batch_loss(model, images, targets, self.coder(model, images.device))
        return loss, images.shape[0]

    def detect(self, offsets: torch.Tensor, logits: torch.Tensor, coder: Any) -> list[Any]:
        """Per image ``(boxes ltrb relative, labels, scores)`` after NVIDIA's post-processing."""
        from .detection_boxes import postprocess

        o = self.options
        return postprocess(coder, offsets.float(), logits.float(), score_threshold=o.score_threshold,
                           candidates_per_class=o.candidates_per_class, nms_iou=o.nms_iou,
                           max_detections=o.max_detections)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
        from .detection_coco_eval import coco_metrics, coco_results

        coder = self.coder(model, device)
        results: list[dict[str, Any]] = []
        image_ids: list[int] = []
        loss_sum, images_seen = 0.0, 0
        for images, targets in self.eval_batches(model, loader, device, max_batches):
            loss, offsets, logits = self.batch_loss(model, images, targets, coder)
            loss_sum += float(loss) * images.shape[0]
            images_seen += images.shape[0]
            for (boxes, labels, scores), target in zip(self.detect(offsets, logits, coder), targets):
                image_ids.append(int(target["image_id"]))
                results += coco_results(boxes, labels, scores, target["image_id"], target["orig_size"],
                                        self.eval_set.label_to_category_id)
        metrics = coco_metrics(self.eval_set.coco, results, image_ids)
        return {**metrics, "detections": len(results) / max(images_seen, 1), "loss": loss_sum / max(images_seen, 1)}

    # ---- the run report's picture ---------------------------------------------------------------
    def write_figures(self, model: nn.Module, run_dir: Path, device: torch.device) -> list[dict[str, str]]:
        """``predictions.png``: the first ``task.options.figure_images`` test images with the model's detections
        scoring at least ``task.options.figure_min_score`` (coloured by class, labelled with class and score) and the
        ground truth (white, dashed)."""
        count = min(self.options.figure_images, len(self.eval_set))
        if count == 0:
            return []
        from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from .detection_figure import draw_predictions

        coder = self.coder(model, device)
        items = [self.eval_set[i] for i in range(count)]
        images = torch.stack([image for image, _ in items]).to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                offsets, logits = model(images)
                detections = self.detect(offsets, logits, coder)
        finally:
            model.train(was_training)
        name = "predictions.png"
        draw_predictions(run_dir / name, images.cpu(), [t for _, t in items],
                         [tuple(t.cpu() for t in d) for d in detections], self.eval_set.category_names,
                         min_score=self.options.figure_min_score, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return [{"file": name, "caption": f"detections (score >= {self.options.figure_min_score}, coloured) and ground "
                                          f"truth (white, dashed) on the first {count} test images"}]


def _model(config: RunConfig, num_classes: int) -> nn.Module:
    from ..models.ssd import build_ssd

    return build_ssd(config.task.model.name, num_classes=num_classes, **config.task.model.options)


def _model_on_meta(config: RunConfig, num_classes: int) -> nn.Module:
    """The model's structure without allocating its weights (its input size)."""
    with torch.device("meta"):
        return _model(config, num_classes)


def _data_root(name: str, data: DetectionDataOptions, image_size: int) -> Path:
    """The dataset's directory; the embedded one is fixed (generator seed 0) whatever the run's seed, drawn at the
    model's input side ``image_size``."""
    if name == "embedded_shapes":
        from ..data.embedded_detection import embedded_detection_dataset

        return embedded_detection_dataset(embedded_cache_dir(data.cache), n_train=data.n_train, n_val=data.n_val,
                                          image_size=image_size)
    if data.root is None:
        raise UserError("task.dataset.name='coco2017' reads a directory: set task.dataset.options.root (holding "
                        "annotations/instances_train2017.json, train2017/, val2017/)")
    return Path(data.root)

