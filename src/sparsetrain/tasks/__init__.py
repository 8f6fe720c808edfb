"""Tasks: a dataset, a model, a loss and a metric, found by the config's ``task.kind``
(see :mod:`.base` for the protocol and :mod:`.registry` to add one)."""

from .base import Task
from .classification import ClassificationTask  # registers "classification"
from .registry import TASKS, build_task, get_task, register_task, task_kinds

__all__ = ["TASKS", "ClassificationTask", "Task", "build_task", "get_task", "register_task", "task_kinds"]
