"""Tasks: a dataset, a model, a loss and a metric, found by the config's ``task.kind``."""

from .classification import ClassificationTask, build_task

__all__ = ["ClassificationTask", "build_task"]
