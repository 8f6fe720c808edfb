"""Checkpoints: written atomically, refused clearly when corrupt or from another config.

A checkpoint is one ``torch.save`` file holding the model, optimizer, sparsifier, position in the
run (stage, epoch, step), metric history and every RNG state (Python, NumPy, torch CPU and CUDA).
It is written to a temporary file in the same directory, flushed to disk and renamed over the
target, so a crash leaves either the old checkpoint or the new one, never half of one.

``load_state_dict_from`` reads plain model state dicts for ``init.checkpoint`` and ``eval``:
raw dicts, ``{'state_dict': ...}`` / ``{'model': ...}`` wrappers and DDP ``module.`` prefixes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import UserError

FORMAT = "sparsetrain-checkpoint-v1"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line and names the file."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`~sparsetrain.atomic.atomic_write`: the old file or the new one, never half."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch file ({reason[:120]})") from None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, **payload}, path)


def load_checkpoint(path: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """A run checkpoint; with ``fingerprint``, refuse one written under a different config."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a sparsetrain run checkpoint")
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by config {payload.get('fingerprint')} but this run's config is "
            f"{fingerprint}; resume with the run's own config.yaml"
        )
    return payload


def load_state_dict_from(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a plain, wrapped or DDP-prefixed file (ours included)."""
    path = Path(path)
    payload = _read(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        payload = payload["model"]
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no model state dict")
    if payload and all(k.startswith("module.") for k in payload):
        payload = {k.removeprefix("module."): v for k, v in payload.items()}
    return payload


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load ``path`` strictly into ``model``; mismatches are one-line errors naming keys."""
    state = load_state_dict_from(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {detail}")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=True)
