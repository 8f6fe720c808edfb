"""Run directories: a run writes only into an empty directory or into one of its own.

A run directory carries a marker, ``run.json`` (:data:`MARKER`), written before any other file::

    {"format": "sparsetrain-run-v1", "fingerprint": "<config.fingerprint()>", "name": "<config.name>",
     "created": "<UTC time, ISO 8601>", "sparsetrain_version": "<version>"}

:func:`prepare_run_dir` applies these rules before a run writes anything:

* a missing or empty directory is created and marked;
* a marked directory holding more than its marker (a run finished, stopped, or running) is
  refused unless ``overwrite``, which deletes only what a run writes (:data:`RUN_FILES`, the
  files of :data:`RUN_FOLDERS` and temporary files of these left by an interrupted write) and
  keeps anything else;
* an unmarked directory holding anything is refused, ``overwrite`` or not: nothing tells its
  files apart from the user's;
* ``resume`` needs the marker, written under the same config fingerprint (or, in a directory of
  sparsetrain 0.1, a run checkpoint of the same config).

A runner that writes a new kind of file must add it to :data:`RUN_FILES` or :data:`RUN_FOLDERS`,
or ``overwrite`` leaves it in place.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .. import __version__
from ..atomic import atomic_write
from ..config import RunConfig
from ..errors import UserError, UserOSError, os_error_message
from .checkpoint import load_checkpoint

MARKER = "run.json"
FORMAT = "sparsetrain-run-v1"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"

RUN_FILES = re.compile(
    r"run\.json|config\.yaml|metrics\.jsonl|events\.jsonl|train\.log|checkpoint\.pt|checkpoint\.ranks\.json"
    r"|checkpoint\.rank\d+\.pt|model_final\.pt|model_best\.pt|summary\.json|report\.md|plot_metrics\.png"
    r"|plot_layer_sparsity\.png|timeline\.json")
"""Names of the files a run (or ``sparsetrain report``) writes at the top of its directory."""

RUN_FOLDERS: dict[str, re.Pattern[str]] = {
    "sparsity": re.compile(r"(step\d+_\d+_\w+|final)\.csv"),
    "gpmt_reference": re.compile(r"prune_log\.csv|prune_refined_log\.csv|layer_sparsities\.csv|weight_mask\.npy"
                                 r"|mask_list\.pt"),
    "models": re.compile(r"epoch_\d+\.pt"),  # training.keep_last_models
}
"""Folders a run writes, with the names of the files it writes in them."""

RunStatus = Literal["finished", "stopped", "unstarted"]


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of run directory ``path``; None when there is none or ``run.json`` is not ours."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory sparsetrain marked as a run directory."""
    return read_marker(path) is not None


def run_status(path: str | Path) -> RunStatus:
    """What the run in marked directory ``path`` got to: finished (``summary.json``), stopped (it has a
    checkpoint to resume from) or unstarted (it stopped, or is running, before its first checkpoint)."""
    path = Path(path)
    if (path / SUMMARY).is_file():
        return "finished"
    if any((path / name).is_file() for name in (CHECKPOINT, "checkpoint.ranks.json", "model_final.pt")):
        return "stopped"
    return "unstarted"


def marker_for(config: RunConfig) -> dict[str, Any]:
    """The content of ``run.json`` for a run of ``config`` starting now."""
    return {"format": FORMAT, "fingerprint": config.fingerprint(), "name": config.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sparsetrain_version": __version__}


def _entries(path: Path) -> list[Path]:
    """The entries of directory ``path``, sorted by name; [] when it does not exist."""
    try:
        return sorted(path.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        blocking = next((p for p in (path, *path.parents) if p.is_file()), path)
        what = "is a file, not a directory" if blocking == path else f"cannot be created: {str(blocking)!r} is a file"
        raise UserError(f"output directory {str(path)!r} {what}; choose another output_dir") from None
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "read")) from None


def _is_temp_of(name: str, ours: re.Pattern[str]) -> bool:
    """Whether ``name`` is a temporary file an interrupted atomic write of one of ``ours`` left behind."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    stem = name[1:-len(".tmp")]  # e.g. "checkpoint.pt.1f2e3d4c" from ".checkpoint.pt.1f2e3d4c.tmp"
    candidates = [stem[:i] for i in range(1, len(stem)) if stem[i] == "."]
    return any(ours.fullmatch(c) for c in candidates)


def check_run_dir(config: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Refuse (``UserError``) an output directory the run may not use; returns ``config.run_dir()``.

    Reads only; :func:`prepare_run_dir` makes the same checks and then acts.
    """
    path = config.run_dir()
    if resume and overwrite:
        raise UserError(f"resume and overwrite exclude each other (run directory {str(path)!r}): resume "
                        "continues a run, overwrite replaces it")
    entries = _entries(path)
    marker = read_marker(path)
    if resume:
        if not path.is_dir():
            raise UserError(f"cannot resume {str(path)!r}: the directory does not exist")
        if marker is None and not ((path / CHECKPOINT).is_file() and (path / "config.yaml").is_file()):
            raise UserError(f"cannot resume {str(path)!r}: it is not a sparsetrain run directory (no {MARKER})")
        if marker is not None and marker.get("fingerprint") != config.fingerprint():
            raise UserError(f"cannot resume {str(path)!r}: its run is of config {marker.get('fingerprint')} but "
                            f"this config is {config.fingerprint()}; resume with the run's own config.yaml")
        return path
    if not entries:
        return path
    if marker is None:
        foreign = entries[0].name
        hint = "; --overwrite replaces only sparsetrain runs" if overwrite else ""
        raise UserError(f"output directory {str(path)!r} holds files sparsetrain did not write (e.g. {foreign!r}; "
                        f"no {MARKER}); choose another output_dir or move them away{hint}")
    if overwrite or [e.name for e in entries] == [MARKER]:
        return path
    status = run_status(path)
    what = {"finished": "a finished run", "stopped": "a stopped run",
            "unstarted": "a run that stopped before its first checkpoint (or is still running)"}[status]
    action = "pass --overwrite to replace it or choose another output_dir"
    if marker.get("fingerprint") != config.fingerprint():
        what += f" of another config ({marker.get('fingerprint')}; this one is {config.fingerprint()})"
    elif status == "stopped":
        action = "resume it with --resume or pass --overwrite to replace it"
    raise UserError(f"output directory {str(path)!r} holds {what}; {action}")


def remove_run_files(path: str | Path) -> None:
    """Delete what a run wrote in ``path``, the marker last; anything else stays."""
    path = Path(path)
    try:
        for entry in _entries(path):
            name = entry.name
            if name in RUN_FOLDERS and entry.is_dir() and not entry.is_symlink():
                for inner in _entries(entry):
                    pattern = RUN_FOLDERS[name]
                    if inner.is_file() and (pattern.fullmatch(inner.name) or _is_temp_of(inner.name, pattern)):
                        inner.unlink()
                if not any(entry.iterdir()):
                    entry.rmdir()
            elif name != MARKER and entry.is_file() and (RUN_FILES.fullmatch(name) or _is_temp_of(name, RUN_FILES)):
                entry.unlink()
        (path / MARKER).unlink(missing_ok=True)
    except OSError as exc:
        raise UserOSError(os_error_message(exc, "delete")) from None


def prepare_run_dir(config: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Make ``config.run_dir()`` ready for the run, or refuse it (see the module's rules); returns it.

    A new run finds the directory created, emptied of a previous run's files when allowed, and
    marked. ``resume`` only checks, and marks a run directory of sparsetrain 0.1 (which had no
    marker) once its checkpoint is found to be a run checkpoint of this config.
    """
    path = check_run_dir(config, resume, overwrite)
    if resume:
        if not is_run_dir(path):  # sparsetrain 0.1 wrote no marker; its checkpoint proves the directory ours
            load_checkpoint(path / CHECKPOINT, config.fingerprint())
            atomic_write(path / MARKER, json.dumps(marker_for(config), indent=2) + "\n")
        return path
    if is_run_dir(path):
        remove_run_files(path)
    atomic_write(path / MARKER, json.dumps(marker_for(config), indent=2) + "\n")
    return path
