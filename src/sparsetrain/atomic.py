"""``atomic_write``: a file is either its old content or its new content, never half of one.

Every file sparsetrain rewrites (checkpoints, model files, summaries, reports, plots, rewritten
logs) goes through :func:`atomic_write`: the content is written to a temporary file in the same
directory, flushed and fsynced, renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsynced so the rename itself survives a power cut. A failure at
any point (full disk, read-only directory, an exception while producing the bytes) removes the
temporary file and leaves the previous file untouched.

Written by hand because the standard library has no atomic replace-with-fsync, and the
packages that do (``atomicwrites``) are unmaintained. Files get the permissions a plain
``open(path, "w")`` would give (``0o666`` minus the umask), not ``mkstemp``'s private ``0o600``.
This module imports only the standard library, so every layer may use it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import UserOSError, os_error_message


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike[str], content: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Replace ``path`` atomically with ``content`` (bytes, text as UTF-8, or a writer of a binary file).

    Returns the path. Missing parent directories are created. OS failures (read-only or full
    disk, a parent that is a file) raise :class:`~sparsetrain.errors.UserOSError` naming the path;
    the previous file, if any, is unchanged and no temporary file is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as failure:
        _remove_quietly(tmp)
        # Writers that stream through C++ (torch.save's zip writer) report a failed write as a
        # RuntimeError; the OSError behind it (full disk, file too large) is its context.
        exc = failure if isinstance(failure, OSError) else failure.__context__
        if not isinstance(exc, OSError):
            raise
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise UserOSError(os_error_message(exc, "write")) from None
    except BaseException:  # KeyboardInterrupt, SystemExit: no half file either
        _remove_quietly(tmp)
        raise
    _fsync_directory(path.parent)
    return path
