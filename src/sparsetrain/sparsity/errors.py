"""The one exception type the engine raises for bad input.

It subclasses ``UserError`` (a ``ValueError``), so callers that catch ``ValueError`` keep working; the command line
prints its message as a single line. Every message names the bad value and the valid range.
"""

from ..errors import UserError


class SparsityError(UserError):
    """Invalid sparsity request: bad value, empty selection, unreachable budget, corrupt state."""


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """Return ``value`` as a float if it is a sparsity in [0, 1), else raise ``SparsityError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SparsityError(f"{name}={value!r} must be a number in [0, 1)")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise SparsityError(f"{name}={value!r} is outside [0, 1)")
    return value
