"""sparsetrain's runner logging to TensorBoard (and, with --wandb, to an offline Weights & Biases run).

GP at 0.8 on scikit-learn's digits with a small MLP: 3 dense epochs, one prune, 2 fine-tuning epochs. The
metrics of every evaluation, the per-layer sparsity at the prune and the report's plots go to
``<out>/run/tensorboard`` (``tensorboard --logdir <out>/run/tensorboard``). ``--smoke``: one epoch each.

    python examples/logging_tensorboard.py --out /tmp/sparsetrain-logging [--wandb] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import yaml

from sparsetrain.cli import main as sparsetrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="directory for the run (default: a temporary one)")
    parser.add_argument("--wandb", action="store_true", help="also log to an offline W&B run")
    parser.add_argument("--smoke", action="store_true", help="one epoch per stage")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="sparsetrain-logging-"))
    epochs = (1, 1) if args.smoke else (3, 2)
    config = {
        "name": "logging_example", "seed": 0, "threads": 1, "output_dir": str(out / "run"),
        "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [64]}}},
        "data": {"batch_size": 64},
        "training": {"progress": False, "loggers": ["tensorboard", *(["wandb"] if args.wandb else [])]},
        "stages": [{"kind": "dense", "epochs": epochs[0]}, {"kind": "prune", "method": "gp", "sparsity": 0.8},
                   {"kind": "finetune", "epochs": epochs[1]}],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    os.environ.setdefault("WANDB_MODE", "offline")
    status = sparsetrain(["run", str(path), "--overwrite"] if (out / "run" / "run.json").exists() else ["run", str(path)])
    print(f"TensorBoard event files: {out / 'run' / 'tensorboard'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
