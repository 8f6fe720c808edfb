"""Keyword options of registered loaders and builders, checked before the call.

Registries (datasets, models) call user-named functions with options from a config; checking the
option names against the function's signature first turns a typo into a one-line message that
lists the valid options, instead of a ``TypeError`` from deep inside the function.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from .errors import UserError


def keyword_options(fn: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """``(names, required names, accepts **kwargs)`` of ``fn``'s keyword-passable parameters."""
    names: list[str] = []
    required: list[str] = []
    takes_any = False
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(parameter.name)
            if parameter.default is inspect.Parameter.empty:
                required.append(parameter.name)
    return tuple(names), tuple(required), takes_any


def check_options(kind: str, name: str, fn: Callable[..., Any], options: Mapping[str, Any],
                  supplied: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` for an unknown or missing option of ``fn`` (the ``kind`` called ``name``).

    ``supplied`` are parameters the registry passes itself; they are neither options nor required.
    """
    supplied = tuple(supplied)
    names, required, takes_any = keyword_options(fn)
    allowed = tuple(n for n in names if n not in supplied)
    listing = ", ".join(allowed) if allowed else "none"
    for option in options:
        if option in supplied or (option not in allowed and not takes_any):
            raise UserError(f"{kind} {name!r} has no option {option!r} (options: {listing})")
    for option in required:
        if option not in supplied and option not in options:
            raise UserError(f"{kind} {name!r} needs option {option!r} (options: {listing})")


def is_real_number(value: Any) -> bool:
    """Whether an option value is a finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
