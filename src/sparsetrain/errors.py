"""The one exception type sparsetrain raises for bad input: ``UserError``.

Every place that checks what a user hands us (configs, overrides, files, data, sparsity requests,
command-line arguments) raises ``UserError`` (or a subclass) with a one-line message that names
the bad value and the valid range. The command line prints exactly these as ``error: <message>``
and exits with status 2; any other exception is a bug and keeps its traceback.

``UserError`` subclasses ``ValueError`` so library callers that catch ``ValueError`` keep working.
This module imports nothing, so every layer (the engine included) may use it.
"""


class UserError(ValueError):
    """Bad input from the user; the message is one line and names the bad value and the valid range."""


class UserOSError(UserError):
    """A file or directory the user named could not be read or written (missing, read-only, full disk)."""


def os_error_message(exc: OSError, action: str = "access") -> str:
    """``cannot <action> '<path>': <reason>`` for an ``OSError``, without the errno noise."""
    path = exc.filename if exc.filename is not None else "?"
    reason = exc.strerror or type(exc).__name__
    return f"cannot {action} {str(path)!r}: {reason}"
