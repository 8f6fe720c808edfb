"""A run killed with SIGKILL after a checkpoint and resumed ends exactly like an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

RUN = """
import sys
from sparsetrain.config import load_config
from sparsetrain.runner.train import run
run(load_config(sys.argv[1]), resume=sys.argv[2] == "resume", log=lambda line: None)
"""


GPMT_STAGES = [
    {"kind": "dense", "epochs": 2},
    {"kind": "prune", "method": "gpmt", "sparsity": 0.8, "min_threshold": 1.0},
    {"kind": "finetune", "epochs": 6, "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}},
]
SGAP_STAGES = [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 3,
                "rounds": 1, "finetune_epochs": 2, "distribution": "non-uniform"}]
RIGL_STAGES = [{"kind": "rigl", "sparsity": 0.8, "epochs": 6, "update_every": 7}]
PGAP_STAGES = [{"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "blocks", "kappa": 2}, "epochs_per_step": 3,
                "rounds": 2, "finetune_epochs": 1}]


def _config(tmp_path: Path, name: str, stages=GPMT_STAGES) -> Path:
    config = {
        "name": name,
        "output_dir": str(tmp_path / name),
        "seed": 3,
        "threads": 1,
        "task": {"dataset": {"name": "digits"}, "model": {"name": "small_resnet", "options": {"width": 4}}},
        "data": {"batch_size": 32},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "training": {"progress": False, "checkpoint_every": 1},
        "stages": stages,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(config: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", RUN, str(config), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def _position(run_dir: Path) -> dict | None:
    try:
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    except Exception:  # not written yet (the rename is atomic, so never half a file)
        return None
    return {**state["position"], "pgap": state["pgap"]}


def _mid_finetune(p):  # the fine-tuning stage has checkpointed an epoch but not finished
    return p["stage"] == 2 and 3 <= p["epoch"] < 8


def _mid_gap_step(p):  # inside the second S-GaP step (epochs 3-5), after its first epoch
    return p["epoch"] == 4


def _mid_rigl(p):  # RigL updates happen mid-epoch; the checkpoint after epoch 3 sits between two of them
    return p["epoch"] == 3


def _mid_pgap_worker(p):  # round 2, worker 1 has trained one of its three epochs
    return p["pgap"] is not None and p["pgap"]["round"] == 1 and p["pgap"]["worker"] == 1 and p["epoch"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("stages, kill_when", [(GPMT_STAGES, _mid_finetune), (SGAP_STAGES, _mid_gap_step),
                                               (PGAP_STAGES, _mid_pgap_worker), (RIGL_STAGES, _mid_rigl)],
                         ids=["gpmt", "sgap", "pgap", "rigl"])
def test_resume_after_sigkill_is_bit_identical(tmp_path, stages, kill_when):
    reference_cfg, killed_cfg = _config(tmp_path, "reference", stages), _config(tmp_path, "killed", stages)
    reference = _launch(reference_cfg, "fresh")

    for attempt in range(3):  # the kill window is one checkpoint interval; a busy machine can let it pass
        shutil.rmtree(tmp_path / "killed", ignore_errors=True)
        killed = _launch(killed_cfg, "fresh")
        deadline = time.time() + 120
        position = None
        while time.time() < deadline and killed.poll() is None:
            position = _position(tmp_path / "killed")
            if position is not None and kill_when(position):
                killed.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        killed.wait()
        if killed.returncode == -signal.SIGKILL:
            break
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed where intended (last position {position})"

    resumed = _launch(killed_cfg, "resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()

    a = torch.load(tmp_path / "reference" / "model_final.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model_final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    masks_a = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=False)["sparsifier"]["masks"]
    masks_b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)["sparsifier"]["masks"]
    assert all(torch.equal(x, y) for x, y in zip(masks_a["bits"], masks_b["bits"]))
    assert _metrics(tmp_path / "reference") == _metrics(tmp_path / "killed")
    assert (tmp_path / "killed" / "events.jsonl").read_text() == (tmp_path / "reference" / "events.jsonl").read_text()


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    from sparsetrain.config import load_config
    from sparsetrain.runner.checkpoint import CheckpointError
    from sparsetrain.runner.train import run

    from sparsetrain.config import dump_config
    from sparsetrain.errors import UserError

    config = load_config(_config(tmp_path, "c"), ["stages.2.epochs=1", "stages.0.epochs=1"])
    run_dir = tmp_path / "c"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(config))  # a run directory of 0.1, which had no run.json
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="is corrupt or not a torch file"):
        run(config, resume=True, log=lambda s: None)
    with pytest.raises(UserError, match="holds files sparsetrain did not write"):
        run(config, log=lambda s: None)
    for path in run_dir.iterdir():
        path.unlink()
    run(config, log=lambda s: None)
    with pytest.raises(UserError, match="holds a finished run"):
        run(config, log=lambda s: None)
    other = load_config(_config(tmp_path, "c"), ["stages.2.epochs=2", "stages.0.epochs=1"])
    with pytest.raises(UserError, match="its run is of config .* but this config is"):
        run(other, resume=True, log=lambda s: None)
    with pytest.raises(UserError, match="cannot resume .*: the directory does not exist"):
        run(load_config(_config(tmp_path, "fresh")), resume=True, log=lambda s: None)
