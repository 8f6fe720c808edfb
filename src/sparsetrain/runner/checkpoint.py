"""Checkpoints: written atomically, refused clearly when corrupt or from another config.

A checkpoint is one ``torch.save`` file holding the model, optimizer, sparsifier, position in the
run (stage, epoch, step), metric history and every RNG state (Python, NumPy, torch CPU and CUDA).
It is written to a temporary file in the same directory, flushed to disk and renamed over the
target, so a crash leaves either the old checkpoint or the new one, never half of one.

``load_state_dict_from`` reads plain model state dicts for ``init.checkpoint`` and ``eval``:
raw dicts, ``{'state_dict': ...}`` / ``{'model': ...}`` / ``{'model_state_dict': ...}`` wrappers
(GaP, GPMT, fairseq, PointNet++, NVIDIA SSD) and DDP ``module.`` prefixes, and ``.safetensors``
files: ``sparsetrain export`` output in the ``sparse`` format (decoded by
:func:`~sparsetrain.export.load_sparse`, pruned weights exact zeros) or any plain safetensors state dict.

Every file is read by :func:`~sparsetrain.safe_pickle.safe_torch_load`: only tensors, numbers,
strings, containers, ``argparse.Namespace`` and numpy arrays/scalars are built, and a file naming
any other global is refused before anything in it runs. Run checkpoints of format v2 hold no
numpy objects at all (the NumPy RNG state is stored as a list of ints); v1 files, whose NumPy RNG
state is an array, still load and are converted on reading.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import UserError
from ..safe_pickle import UnsafePickleError, safe_torch_load

FORMAT = "sparsetrain-checkpoint-v2"
FORMAT_V1 = "sparsetrain-checkpoint-v1"
_FORMAT_PREFIX = "sparsetrain-checkpoint-"
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line and names the file."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`~sparsetrain.atomic.atomic_write`: the old file or the new one, never half."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain Python values and tensors, so a checkpoint needs no numpy global.

    ``numpy`` is NumPy's legacy tuple with the 624 MT19937 keys as a list of ints:
    ``("MT19937", [keys], pos, has_gauss, cached_gaussian)``.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (str(name), keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s result; the NumPy keys may be a list (v2) or an array (v1)."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; give the checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return safe_torch_load(path)
    except UnsafePickleError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):  # torch's message is a paragraph about weights_only
            reason = "neither a torch zip archive nor pickle data"
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch file ({reason[:120]})") from None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, **payload}, path)


def load_checkpoint(path: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """A run checkpoint in the current format (v1 files are converted); with ``fingerprint``,
    refuse one written under a different config."""
    path = Path(path)
    payload = _read(path)
    found = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(found, str) or not found.startswith(_FORMAT_PREFIX):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a sparsetrain run checkpoint")
    if found not in (FORMAT, FORMAT_V1):
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {found!r}, which this sparsetrain cannot read "
            f"(it reads {FORMAT_V1!r} and {FORMAT!r})"
        )
    if found == FORMAT_V1:
        payload = _from_v1(payload)
    if fingerprint is not None and payload.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by config {payload.get('fingerprint')} but this run's config is "
            f"{fingerprint}; resume with the run's own config.yaml"
        )
    return payload


def _from_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A v1 run checkpoint as v2: the only difference is the NumPy RNG keys (array -> list of ints)."""
    rng = dict(payload["rng"])
    name, keys, *rest = rng["numpy"]
    rng["numpy"] = (name, np.asarray(keys).tolist(), *rest)
    return {**payload, "format": FORMAT, "rng": rng}


def load_state_dict_from(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a plain, wrapped or DDP-prefixed file (ours included).

    Wrappers are searched in the order ``state_dict``, ``model``, ``model_state_dict``, each
    applied when its value is a dict, so the model of a fairseq, PointNet++ or NVIDIA SSD
    checkpoint is found beside its optimizer state, args and metadata.
    """
    path = Path(path)
    if path.suffix == ".safetensors":  # never a pickle: sparsetrain export's formats or any safetensors file
        from ..export import load_sparse

        payload = load_sparse(path)
    else:
        payload = _read(path)
    for key in _STATE_DICT_KEYS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no model state dict")
    if payload and all(k.startswith("module.") for k in payload):
        payload = {k.removeprefix("module."): v for k, v in payload.items()}
    return payload


def init_masks(path: str | Path | None, targets: list, model_numel: int | None = None) -> Any:
    """The masks a ``sparse`` export at ``path`` stores for ``targets`` (a MaskSet), or None.

    None unless ``path`` is a ``.safetensors`` file in sparsetrain's ``sparse`` format (a dense file or
    a torch checkpoint carries no masks: its zeros are only zeros). A target the file holds no
    mask for is kept whole (all True). The runner enforces these masks from the first step, so a
    run whose ``init.checkpoint`` is a ``sparse`` export keeps its pruned weights at zero through
    ``dense``/``finetune`` stages, and prune events start from them.
    """
    if not path or Path(path).suffix != ".safetensors":
        return None
    from ..export import load_sparse_masks
    from ..sparsity import MaskSet

    stored = load_sparse_masks(path)
    if not stored:
        return None
    masks = []
    for target in targets:
        mask = stored.get(target.name)
        if mask is not None and tuple(mask.shape) != tuple(target.shape):
            raise CheckpointError(f"checkpoint {str(path)!r}: the mask of {target.name} has shape "
                                  f"{tuple(mask.shape)}, the model's weight {tuple(target.shape)}")
        masks.append(mask if mask is not None else torch.ones(target.shape, dtype=torch.bool))
    return MaskSet(targets, masks, model_numel=model_numel)


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load ``path`` strictly into ``model``; mismatches are one-line errors naming keys."""
    load_state_into(model, load_state_dict_from(path), path)


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` (read from ``path``) strictly into ``model``; mismatches are one-line errors naming keys."""
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
