"""Pydantic bases shared by the stage schemas of methods and by ``config.py``.

The methods layer owns its stage schemas; ``config.py`` builds the ``Stage`` union from the
method registry and imports these bases from here (imports point down only).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Frozen, no unknown keys, and no YAML booleans where numbers belong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        """YAML's ``true``/``yes`` are not numbers: pydantic's lax mode would read them as 1."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and is_numeric(field.annotation):
                    raise ValueError(f"{key}={value!r} must be a number, not a boolean")
        return data


def is_numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int/float, maybe optional or constrained) and admits no bool."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return is_numeric(args[0])
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        return bool(members) and all(is_numeric(a) for a in members if typing.get_origin(a) is not dict)
    return annotation in (int, float)


class PartitionConfig(StrictModel):
    scheme: str | list[str] = Field(
        "blocks", description="layers | balanced | blocks | stages | a preset (resnet_stages, resnet50_blocks, "
        "transformer_2/3/6) | a list of name regexes, one per partition")
    kappa: int | None = Field(None, ge=1, description="number of partitions (implied by presets and regex lists)")


def with_pattern_sparsity(cls: type, data: Any) -> Any:
    """A stage mapping whose omitted ``sparsity`` is the one its N:M ``pattern`` implies (``1 - N/M``).

    The "before" validator of the stages that take a ``pattern``; a given sparsity is checked against
    the pattern after validation.
    """
    from ..sparsity.patterns import parse_pattern

    if isinstance(data, Mapping) and isinstance(data.get("pattern"), str) and "sparsity" not in data:
        implied = parse_pattern(data["pattern"]).sparsity
        if implied is not None:
            data = {**data, "sparsity": implied}
    return data
