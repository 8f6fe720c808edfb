"""Tasks by kind, like the model and dataset registries: ``task.kind`` in a config names one.

Built-in tasks are listed by module so that validating a config imports nothing heavy; a task
of your own registers itself when its module is imported (name the module under ``imports:`` in
the config, so every process of a torchrun job imports it too)::

    @register_task("regression")
    class MyTask(Task): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import RunConfig
    from .base import Task

_BUILTIN = {"classification": "sparsetrain.tasks.classification",
            "translation": "sparsetrain.tasks.translation",
            "part_segmentation": "sparsetrain.tasks.part_segmentation",
            "detection": "sparsetrain.tasks.detection"}  # kind -> module that registers it
TASKS: dict[str, type[Task]] = {}
_T = TypeVar("_T")


def register_task(kind: str) -> Callable[[_T], _T]:
    """Class decorator: register a :class:`~sparsetrain.tasks.base.Task` subclass under ``kind``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a task kind must be a non-empty string, got {kind!r}")

    def register(cls: _T) -> _T:
        existing = TASKS.get(kind)
        if existing is not None and existing.__qualname__ != cls.__qualname__:  # re-import of one module is fine
            raise ValueError(f"task kind {kind!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        cls.kind = kind
        TASKS[kind] = cls
        return cls

    return register


def task_kinds() -> list[str]:
    """Every kind a config may name: the built-in ones and those registered so far."""
    return sorted(set(_BUILTIN) | set(TASKS))


def get_task(kind: str) -> type[Task]:
    if kind not in TASKS and kind in _BUILTIN:
        importlib.import_module(_BUILTIN[kind])
    if kind not in TASKS:
        raise UserError(f"task.kind={kind!r} is not a registered task; registered: {', '.join(task_kinds())} "
                        "(a task of your own: name its module under imports)")
    return TASKS[kind]


def primary_of_config(raw: Any) -> dict[str, Any] | None:
    """``Task.primary()`` of the task a run's config (a ``config.yaml`` mapping) names; None if unknown.

    Reports of runs that did not record their primary metric (stopped, or written by an earlier
    version) learn it here; the config's ``imports:`` are imported first.
    """
    from ..config import TaskConfig, import_modules

    if not isinstance(raw, dict):
        return None
    task = raw.get("task") if isinstance(raw.get("task"), dict) else {}
    try:
        imports = raw.get("imports")
        import_modules(imports if isinstance(imports, list) else None)
        return get_task(str(task.get("kind", TaskConfig.model_fields["kind"].default))).primary()
    except UserError:
        return None


def build_task(config: RunConfig) -> Task:
    """The config's task with its datasets read."""
    return get_task(config.task.kind).build(config)
