"""A toy second task for tests: regression of the digit's label (as a float in [0, 1]) from its pixels.

Registered as ``toy_regression`` when imported; a config names it with ``imports: [toy_regression_task]``
(with ``tests/`` on ``sys.path``). Primary metric: ``loss`` (mean squared error), lower is better.
Its loss counts "targets" rather than examples, so a data-parallel run all-reduces the counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsetrain.data import load_dataset
from sparsetrain.models import build_model
from sparsetrain.tasks import Task, register_task


def _regression(dataset: TensorDataset) -> TensorDataset:
    inputs, labels = dataset.tensors
    return TensorDataset(inputs, labels.float().unsqueeze(1) / 9.0)


@register_task("toy_regression")
class ToyRegressionTask(Task):
    PRIMARY = ("loss", "min")
    METRIC_LABEL: ClassVar[dict[str, Any]] = {"title": "Test MSE", "short": "MSE", "log": "mse", "percent": False}
    COUNT_UNIT = "targets"

    @classmethod
    def build(cls, config):
        split = load_dataset(config.task.dataset.name, **config.task.dataset.options)
        task = cls(config, _regression(split.train), _regression(split.test))
        task.input_shape = tuple(split.input_shape)
        return task

    def build_model(self) -> nn.Module:
        model = self.config.task.model
        return build_model(model.name, input_shape=self.input_shape, num_classes=1, **model.options)

    def loss(self, model, batch):
        inputs, targets = batch
        return nn.functional.mse_loss(model(inputs).float(), targets), targets.numel()

    @torch.no_grad()
    def evaluate(self, model, loader: DataLoader, device, max_batches=None):
        was_training = model.training
        model.eval()
        squared, absolute, seen = 0.0, 0.0, 0
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, targets = self.to_device(batch, device)
            error = model(inputs).float() - targets
            squared += float((error ** 2).sum())
            absolute += float(error.abs().sum())
            seen += targets.numel()
        model.train(was_training)
        return {"loss": squared / seen, "mae": absolute / seen, "seen": float(seen)}
