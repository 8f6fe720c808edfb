"""Where a run's numbers go besides ``metrics.jsonl``: TensorBoard and Weights & Biases (``training.loggers``).

``jsonl`` (``metrics.jsonl``, ``events.jsonl``, ``sparsity/*.csv``) is always written; the others are optional
extras (``pip install 'sparsetrain[tensorboard]'`` / ``'[wandb]'``) and receive, on rank 0: every numeric field of
every evaluation record (``test/<metric>``, ``train/loss``, ``lr``, ``sparsity``, ...) at its optimizer step; the
per-layer sparsity after every mask event (``layer_sparsity/<weight name>``); and, once the report is written,
its PNG plots (:func:`log_report_plots`). TensorBoard writes event files to ``<run>/tensorboard``; W&B runs in
offline mode unless ``WANDB_MODE`` says otherwise, under ``<run>/wandb`` (``wandb sync`` uploads it later), with
the run's resolved config. MLflow is not offered: it was not testable here without a server-sized install.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import UserError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb_run.json"
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _require(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(EXTRA[name]) is None:
        raise UserError(f"training.loggers names {name!r}, which needs the {EXTRA[name]!r} package: "
                        f"pip install 'sparsetrain[{name}]' (or drop it from training.loggers)")


def check_loggers(names: Iterable[str]) -> None:
    """Refuse, before training, a logger whose package is not installed (one line naming the extra)."""
    for name in names:
        if name in EXTRA:
            _require(name)


def _numbers(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricLoggers:
    """The run's optional loggers (rank 0 only); every method is a no-op for the ones not configured."""

    def __init__(self, names: Iterable[str], run_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        self.names = [n for n in names if n != "jsonl"]
        check_loggers(self.names)
        self.tensorboard = None
        self.wandb = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if "wandb" in self.names:
            self.wandb = _wandb_run(run_dir, run_name, config)

    def log_record(self, record: Mapping[str, Any], step: int) -> None:
        values = _numbers(record)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:  # one W&B row per record (two records may share a step: an epoch's end and a prune)
            self.wandb.log({**values, "step": float(step)})

    def log_layer_sparsity(self, sparsity_by_layer: Mapping[str, float], step: int) -> None:
        values = {f"layer_sparsity/{name}": float(value) for name, value in sparsity_by_layer.items()}
        self.log_record(values, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(run_dir: Path, run_name: str, config: Mapping[str, Any]) -> Any:
    """A W&B run under ``<run>/wandb``, offline unless WANDB_MODE is set; its id kept in ``wandb_run.json`` so a
    resumed run (or :func:`log_report_plots`) continues the same W&B run."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = json.loads(id_file.read_text())["id"] if id_file.is_file() else uuid.uuid4().hex[:8]
    (run_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sparsetrain"), name=run_name, id=run_id,
                     resume="allow", dir=str(run_dir / WANDB_DIR), config=dict(config),
                     mode=os.environ.get("WANDB_MODE", "offline"))
    if not id_file.is_file():
        from ..atomic import atomic_write

        atomic_write(id_file, json.dumps({"id": run_id}))
    return run


def log_report_plots(run_dir: Path, names: Iterable[str], run_name: str, config: Mapping[str, Any],
                     step: int) -> list[str]:
    """Add the report's PNG plots of ``run_dir`` to its TensorBoard and W&B logs; returns the plots logged."""
    names = [n for n in names if n in EXTRA]
    plots = sorted(run_dir.glob("plot_*.png"))
    if not names or not plots:
        return []
    import numpy as np
    from PIL import Image

    images = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in plots}
    loggers = MetricLoggers(names, run_dir, run_name, config)
    if loggers.tensorboard is not None:
        for tag, image in images.items():
            loggers.tensorboard.add_image(f"report/{tag}", image, step, dataformats="HWC")
    if loggers.wandb is not None:
        import wandb

        loggers.wandb.log({"step": float(step), **{f"report/{tag}": wandb.Image(image) for tag, image in images.items()}})
    loggers.close()
    return list(images)
