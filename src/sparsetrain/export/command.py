"""``sparsetrain export``: a run's final model (or any checkpoint) as a ``sparse`` or dense
safetensors file, or as ONNX checked with onnxruntime.

The source is a run directory (its ``model_final.pt`` and ``config.yaml``; ``--config`` replaces
the config) or a checkpoint file with ``--config``. The model is built from the config exactly as
``eval`` builds it and the weights are loaded strictly, so a checkpoint that does not fit the
config is refused before anything is written. For ``sparse`` the masks are the targets' non-zero
bit patterns (a weight of exactly ``+0.0`` is pruned; ``-0.0`` counts as kept, so the file loads
back bit for bit), and the config's YAML text is stored in the file's metadata under ``config``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError

FORMATS = ("sparse", "safetensors", "onnx")
SAMPLE_BATCH = 4
"""Examples in the batch the ONNX export is checked on (the task's first training inputs)."""


def _source(source: str, config: str | None) -> tuple[Path, Path]:
    path = Path(source)
    if path.is_dir():
        weights = path / "model_final.pt"
        if not weights.is_file():
            raise UserError(f"{source!r} has no model_final.pt: give a finished run directory or a checkpoint file")
        config_path = Path(config) if config else path / "config.yaml"
        if not config_path.is_file():
            raise UserError(f"{str(config_path)!r} does not exist; give the run's config with --config")
        return weights, config_path
    if not path.is_file():
        raise UserError(f"cannot export {source!r}: no such run directory or checkpoint file")
    if not config:
        raise UserError(f"exporting the checkpoint {source!r} needs --config (the config that defines its model)")
    return path, Path(config)


def export(source: str, *, config: str | None, fmt: str, out: str, overwrite: bool = False) -> str:
    """Export ``source`` to ``out`` in format ``fmt``; returns the one-line summary the command prints."""
    from ..config import load_config
    from ..runner.setup import build_setup, load_weights
    from .sparse_format import save_dense, save_sparse

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out_path = Path(out)
    if out_path.is_dir():
        raise UserError(f"--out {out!r} is a directory; give a file path")
    if out_path.exists() and not overwrite:
        raise UserError(f"--out {out!r} exists; pass --overwrite to replace it")
    weights, config_path = _source(source, config)
    # Only the ONNX check runs the model on data; the other formats build the model as `plan` does,
    # without reading the dataset where the task can tell its shapes without it (ImageNet, CIFAR-10).
    needs_data = fmt == "onnx"
    run_config = load_config(config_path, [], check_files=needs_data)
    setup = build_setup(run_config, lay_out=False, load_init=False, read_data=needs_data)
    model = setup.model
    load_weights(setup.task, model, weights)
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if fmt == "onnx":
        from .onnx_export import export_onnx

        if setup.task is None or not torch.is_tensor(setup.example_input):
            raise UserError(f"--format onnx needs a task whose inputs are tensors; {run_config.task.kind!r} has not")
        sample = torch.stack([setup.task.train_set[i][0] for i in range(min(SAMPLE_BATCH, setup.num_train))])
        diff = export_onnx(model, sample, out_path, overwrite=overwrite)
        return (f"wrote {out}: onnx, {out_path.stat().st_size:,} bytes; onnxruntime matches PyTorch on "
                f"{len(sample)} examples (max abs difference {diff:.2g})")
    if fmt == "safetensors":
        save_dense(model, out_path, overwrite=overwrite)
        return f"wrote {out}: dense safetensors, {out_path.stat().st_size:,} bytes"
    int_of = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    masks = {}
    for target in setup.targets:
        value = target.param.detach().cpu()
        bits = value.view(int_of[value.element_size()]) if value.element_size() in int_of else value
        masks[target.name] = bits != 0
    save_sparse(model, out_path, masks, metadata={"config": config_path.read_text(encoding="utf-8"),
                                                  "source": str(weights)}, overwrite=overwrite)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    size = out_path.stat().st_size
    return (f"wrote {out}: sparse, {size:,} bytes = {size / dense_bytes:.3f}x the dense tensors; "
            f"sparsity {1 - kept / total:.4f} over {len(masks)} targets")
