"""``sparsetrain average``: the element-wise mean of several model checkpoints (fairseq's
``scripts/average_checkpoints.py``, which the reference recipe's "average the last N" means).

Inputs are read with the safe loader (plain, wrapped or ``module.``-prefixed state dicts, our
epoch models in ``<run>/models/``, fairseq checkpoints' ``model``); they must hold the same keys
with the same shapes. Floating-point tensors are averaged in float64 and cast back to their dtype;
integer tensors (counters such as BatchNorm's ``num_batches_tracked``) get the floor of their mean, as
fairseq's script does. The result is a plain state dict written
atomically; an existing output is refused without ``overwrite``.

Sparsity: a weight is zero in the mean exactly when it is zero in every input (up to cancellation,
which the report counts), so epochs trained under the same masks average to a model with those
masks; :func:`average_checkpoints` reports how many entries are zero in every input and in the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import UserError


def average_checkpoints(inputs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> str:
    """Write the mean of ``inputs`` to ``out``; returns a one-line summary."""
    from ..runner.checkpoint import load_state_dict_from

    if len(inputs) < 2:
        raise UserError(f"average needs at least 2 checkpoints, got {len(inputs)}")
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise UserError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
    states = [load_state_dict_from(path) for path in inputs]
    first = states[0]
    for path, state in zip(inputs[1:], states[1:]):
        if state.keys() != first.keys():
            extra = sorted(set(state) ^ set(first))[:3]
            raise UserError(f"checkpoint {str(path)!r} has other keys than {str(inputs[0])!r} (e.g. {extra})")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise UserError(f"checkpoint {str(path)!r}: {key} has shape {tuple(value.shape)}, "
                                f"{str(inputs[0])!r} has {tuple(first[key].shape)}")
    mean: dict[str, torch.Tensor] = {}
    zero_everywhere = zero_in_mean = 0
    for key, value in first.items():
        tensors = [state[key] for state in states]
        if not torch.is_floating_point(value):  # counters (BatchNorm's num_batches_tracked): floor of the mean
            mean[key] = torch.stack([t.to(torch.int64) for t in tensors]).sum(0).div(len(tensors),
                                                                                  rounding_mode="floor").to(value.dtype)
            continue
        total = torch.stack([t.double() for t in tensors]).sum(0)
        mean[key] = (total / len(tensors)).to(value.dtype)
        zero_everywhere += int(torch.stack([t == 0 for t in tensors]).all(0).sum())
        zero_in_mean += int((mean[key] == 0).sum())
    atomic_write(out_path, lambda f: torch.save(mean, f))
    return (f"averaged {len(states)} checkpoints into {out}: {len(mean)} tensors; {zero_in_mean:,} zero entries "
            f"({zero_everywhere:,} zero in every input)")
