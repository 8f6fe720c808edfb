"""Image/signal classification: cross-entropy (optionally label-smoothed) and top-1 accuracy.

Metrics: ``top1`` in percent (0-100, the primary metric, higher is better) and ``loss``, the
plain cross-entropy (no smoothing) as a mean over examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.registry import dataset_facts, load_dataset
from ..models import build_model
from .base import Task
from .registry import register_task

if TYPE_CHECKING:
    from ..config import RunConfig


@register_task("classification")
class ClassificationTask(Task):
    PRIMARY = ("top1", "max")
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "Top-1 Accuracy", "short": "Top-1", "log": "top-1", "percent": True}

    def __init__(self, config: RunConfig, train_set: Dataset, eval_set: Dataset, num_classes: int,
                 input_shape: tuple[int, ...]) -> None:
        super().__init__(config, train_set, eval_set)
        self.num_classes = num_classes
        self.input_shape = input_shape

    @property
    def test_set(self) -> Dataset:  # the name before the task protocol
        return self.eval_set

    @classmethod
    def build(cls, config: RunConfig) -> ClassificationTask:
        split = load_dataset(config.task.dataset.name, **config.task.dataset.options)
        return cls(config, split.train, split.test, split.num_classes, tuple(split.input_shape))

    def build_model(self) -> nn.Module:
        return _model(self.config, self.input_shape, self.num_classes)

    @classmethod
    def plan_facts(cls, config: RunConfig) -> tuple[int, nn.Module, Any] | None:
        dataset = config.task.dataset
        facts = dataset_facts(dataset.name, **dataset.options)
        if facts is None:
            return None
        num_train, _, input_shape, num_classes = facts
        return num_train, _model(config, input_shape, num_classes), torch.zeros(input_shape)

    @staticmethod
    def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        inputs, labels = batch
        return self.cross_entropy(model(inputs), labels, self.config.training.label_smoothing), labels.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
        """``loss`` (plain cross-entropy, no smoothing) and ``top1`` in percent."""
        was_training = model.training
        model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, labels = self.to_device(batch, device)
            logits = model(inputs).float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += labels.numel()
        model.train(was_training)
        return {"loss": loss_sum / max(seen, 1), "top1": 100.0 * correct / max(seen, 1)}


def _model(config: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = config.task.model
    return build_model(model.name, input_shape=input_shape, num_classes=num_classes, **model.options)
