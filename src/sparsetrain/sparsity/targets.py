"""Which parameters of a model may become sparse.

A target is one parameter tensor, named by its fully qualified name (``layer1.0.conv1.weight``).
The default selection is the ``weight`` of every Conv1d/Conv2d/Conv3d and Linear module, in
``model.modules()`` order, which is also the order of the GPMT reference code's mask files.
Biases, norms and embeddings are never targets unless a pattern names them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import SparsityError

DEFAULT_TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

Selector = type[nn.Module] | str
"""A module type (selects that module's ``weight``) or a regex searched in parameter names."""


@dataclass(frozen=True)
class Target:
    """One parameter that may be pruned; ``name`` is its fully qualified parameter name."""

    name: str
    module_name: str
    param: nn.Parameter = field(compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def numel(self) -> int:
        return self.param.numel()


def _as_selectors(spec: Selector | Iterable[Selector] | None) -> list[Selector]:
    if spec is None:
        return []
    if isinstance(spec, (str, type)):
        return [spec]
    selectors = list(spec)
    for item in selectors:
        if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, nn.Module))):
            raise SparsityError(f"selector {item!r} must be an nn.Module subclass or a regex string")
    return selectors


def _compile(pattern: str, role: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SparsityError(f"{role} pattern {pattern!r} is not a valid regex: {exc}") from None


def _matches(selector: Selector, regex: re.Pattern[str] | None, module: nn.Module, pname: str, fqn: str) -> bool:
    if regex is not None:
        return regex.search(fqn) is not None
    return isinstance(module, selector) and pname == "weight"


def select_targets(
    model: nn.Module,
    include: Selector | Iterable[Selector] | None = None,
    exclude: Selector | Iterable[Selector] | None = None,
) -> list[Target]:
    """The model's prunable parameters in ``modules()`` order.

    ``include`` replaces the default selection (Conv1d/2d/3d and Linear weights); ``exclude``
    removes from it. Each selector is a module type (its ``weight``) or a regex searched in fully
    qualified parameter names. A selector that matches nothing, or an empty result, is an error.
    A parameter shared by several modules is listed once, under its first name.
    """
    user_include = _as_selectors(include)
    includes = user_include or list(DEFAULT_TARGET_TYPES)
    excludes = _as_selectors(exclude)
    compiled = {
        ("include", i): _compile(s, "include") if isinstance(s, str) else None for i, s in enumerate(includes)
    } | {("exclude", i): _compile(s, "exclude") if isinstance(s, str) else None for i, s in enumerate(excludes)}
    used: set[tuple[str, int]] = set()
    seen: set[int] = set()
    targets: list[Target] = []
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            fqn = f"{module_name}.{pname}" if module_name else pname
            hit_in = [i for i, s in enumerate(includes) if _matches(s, compiled["include", i], module, pname, fqn)]
            hit_ex = [i for i, s in enumerate(excludes) if _matches(s, compiled["exclude", i], module, pname, fqn)]
            used.update(("include", i) for i in hit_in)
            used.update(("exclude", i) for i in hit_ex)
            if hit_in and not hit_ex:
                if not param.is_floating_point():
                    raise SparsityError(f"parameter {fqn!r} has dtype {param.dtype}; targets must be floating point")
                targets.append(Target(fqn, module_name, param))
    model_name = type(model).__name__
    for role, selectors in (("include", user_include), ("exclude", excludes)):
        for i, selector in enumerate(selectors):
            if (role, i) not in used:
                shown = selector.__name__ if isinstance(selector, type) else repr(selector)
                raise SparsityError(f"{role} selector {shown} matches no parameter of {model_name}")
    if not targets:
        raise SparsityError(f"the selection holds no prunable parameter of {model_name}")
    return targets


def parameter_count(model: nn.Module) -> int:
    """Number of elements over all distinct parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def check_targets_belong(model: nn.Module, params: Sequence[torch.Tensor]) -> None:
    """Raise if any of ``params`` is not a parameter of ``model`` (by identity)."""
    owned = {id(p) for p in model.parameters()}
    for i, param in enumerate(params):
        if id(param) not in owned:
            raise SparsityError(f"mask {i} belongs to a parameter that is not part of {type(model).__name__}")
