"""Progress bars only where someone watches them.

A tqdm bar redraws itself with carriage returns; in a log file or a CI console (stderr not a
terminal) that is noise. There the runner's own one-line-per-epoch log is the progress.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], description: str, enabled: bool, total: int | None = None) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar if ``enabled`` and stderr is a terminal, else ``iterable`` itself."""
    if not enabled or not _stderr_is_terminal():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True, total=total)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced stream without isatty, or a closed one
        return False
