"""Image/signal classification: cross-entropy (optionally label-smoothed) and top-1 accuracy.

Accuracy is reported in percent (0-100) and losses are means over examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import TaskConfig
from ..data.registry import load_dataset
from ..models.registry import build_model


@dataclass
class ClassificationTask:
    train_set: Dataset
    test_set: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    config: TaskConfig

    def build_model(self) -> nn.Module:
        model = self.config.model
        return build_model(model.name, input_shape=self.input_shape, num_classes=self.num_classes, **model.options)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """``test_loss`` (plain cross-entropy, no smoothing) and ``test_top1`` in percent."""
        was_training = model.training
        model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs).float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += labels.numel()
        model.train(was_training)
        return {"test_loss": loss_sum / seen, "test_top1": 100.0 * correct / seen}


def build_task(config: TaskConfig) -> ClassificationTask:
    split = load_dataset(config.dataset.name, **config.dataset.options)
    return ClassificationTask(split.train, split.test, split.num_classes, tuple(split.input_shape), config)
