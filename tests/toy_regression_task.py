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
        squared, absolute, seen = 0.0, 0.0, 0
        for inputs, targets in self.eval_batches(model, loader, device, max_batches):
            error = model(inputs).float() - targets
            squared += float((error ** 2).sum())
            absolute += float(error.abs().sum())
            seen += targets.numel()
        return {"loss": squared / seen, "mae": absolute / seen, "seen": float(seen)}


@register_task("toy_budget_regression")
class ToyBudgetRegressionTask(ToyRegressionTask):
    """The toy regression with its own batching, as a translation task batches sentences by tokens.

    An example's "length" is its number of non-zero pixels. Batches are fixed once, filled in
    length order up to a budget of ``data.batch_size * 40`` length units (so their example counts
    differ); each epoch visits them in a seeded order. Under data parallelism a batch's examples
    are split into contiguous near-equal parts.
    """

    def batches(self) -> list[list[int]]:
        if not hasattr(self, "_batches"):
            inputs = self.train_set.tensors[0]
            lengths = (inputs.flatten(1) != inputs.flatten(1).min()).sum(1).tolist()
            budget = self.config.data.batch_size * 40
            batches, current, used = [], [], 0
            for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
                if current and used + lengths[index] > budget:
                    batches.append(current)
                    current, used = [], 0
                current.append(index)
                used += lengths[index]
            self._batches = batches + [current] if current else batches
        return self._batches

    def steps_per_epoch(self) -> int:
        return len(self.batches())

    def epoch_batches(self, epoch, stream=0, rank=0, world_size=1):
        from sparsetrain.data.batching import derived_seed

        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, epoch, stream))
        order = torch.randperm(len(self.batches()), generator=generator).tolist()
        shards, sizes = [], []
        for b in order:
            batch = self.batches()[b]
            base, extra = divmod(len(batch), world_size)
            begin = rank * base + min(rank, extra)
            shards.append(batch[begin : begin + base + (rank < extra)])
            sizes.append(len(batch))
        return shards, sizes
