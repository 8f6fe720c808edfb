"""Preemption: mid-epoch checkpoints, SIGTERM/SIGUSR1 stops, non-finite losses, closed output pipes.

A run stopped anywhere (a signal, or a crash after a ``checkpoint_every_steps`` checkpoint) and
resumed ends bit for bit like an uninterrupted run, for every method (same thread count).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparsetrain.config import load_config
from sparsetrain.errors import UserError
from sparsetrain.runner.train import Preempted, TrainingDiverged, run
from sparsetrain.tasks import ClassificationTask

STAGES = {
    "dense": [{"kind": "dense", "epochs": 3}],
    "gpmt": [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gpmt", "sparsity": 0.8, "min_threshold": 1.0},
             {"kind": "finetune", "epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}}],
    "sgap": [{"kind": "sgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 1,
              "finetune_epochs": 1, "distribution": "non-uniform"}],
    "pgap": [{"kind": "pgap", "sparsity": 0.8, "partitions": {"scheme": "layers", "kappa": 2}, "epochs_per_step": 2,
              "rounds": 2, "finetune_epochs": 1}],
    "gmp": [{"kind": "gmp", "sparsity": 0.8, "epochs": 3, "frequency": 4}],
    "rigl": [{"kind": "rigl", "sparsity": 0.8, "epochs": 3, "update_every": 4}],
    "set": [{"kind": "set", "sparsity": 0.8, "epochs": 3, "update_every": 4}],
}
STEPS_PER_EPOCH = 13  # digits: 1,258 training examples in batches of 100


def _config_file(tmp_path: Path, name: str, stages: list, **training) -> Path:
    config = {
        "name": name, "output_dir": str(tmp_path / name), "seed": 2, "threads": 1,
        "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [24, 16]}}},
        "data": {"batch_size": 100},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "training": {"progress": False, **training},
        "stages": stages,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _quiet(line: str) -> None:
    pass


def _interrupt_at_loss_call(monkeypatch, call: int, action) -> None:
    """Run ``action()`` inside the ``call``-th training loss computation (1-based)."""
    original = ClassificationTask.cross_entropy
    calls = {"n": 0}

    def counting(logits, labels, label_smoothing=0.0):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(logits, labels, label_smoothing)

    monkeypatch.setattr(ClassificationTask, "cross_entropy", staticmethod(counting))


def _outputs(run_dir: Path) -> tuple[dict, list, str]:
    model = torch.load(run_dir / "model_final.pt", weights_only=True)
    metrics = [{k: v for k, v in json.loads(line).items() if k != "time_s"}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return model, metrics, (run_dir / "events.jsonl").read_text()


def _assert_same_run(a: Path, b: Path) -> None:
    model_a, metrics_a, events_a = _outputs(a)
    model_b, metrics_b, events_b = _outputs(b)
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    assert metrics_a == metrics_b
    assert events_a == events_b


def _position(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["position"]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STAGES))
def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path, monkeypatch, method):
    run(load_config(_config_file(tmp_path, "reference", STAGES[method])), log=_quiet)
    stopped = load_config(_config_file(tmp_path, "stopped", STAGES[method]))
    call = 2 * STEPS_PER_EPOCH + 6  # in the third epoch of training, whatever the stage layout
    _interrupt_at_loss_call(monkeypatch, call, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Preempted) as stop:
        run(stopped, log=_quiet)
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_status == 143
    assert stop.value.checkpoint == tmp_path / "stopped" / "checkpoint.pt"
    position = _position(tmp_path / "stopped")
    assert position["step"] % STEPS_PER_EPOCH != 0  # in the middle of an epoch
    assert not (tmp_path / "stopped" / "model_final.pt").exists()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored after the run
    run(stopped, resume=True, log=_quiet)
    _assert_same_run(tmp_path / "reference", tmp_path / "stopped")


@pytest.mark.parametrize("method", ["sgap", "rigl"])
def test_crash_after_a_step_checkpoint_resumes_bit_identically(tmp_path, monkeypatch, method):
    run(load_config(_config_file(tmp_path, "reference", STAGES[method])), log=_quiet)
    crashed = load_config(_config_file(tmp_path, "crashed", STAGES[method], checkpoint_every_steps=4))

    def crash():
        raise RuntimeError("simulated crash")

    _interrupt_at_loss_call(monkeypatch, 38, crash)  # 37 steps done: the checkpoint at step 36 is mid-epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(crashed, log=_quiet)
    assert _position(tmp_path / "crashed")["step"] == 36 and 36 % STEPS_PER_EPOCH != 0
    monkeypatch.undo()
    run(crashed, resume=True, log=_quiet)
    _assert_same_run(tmp_path / "reference", tmp_path / "crashed")


def test_sigusr1_stops_too(tmp_path, monkeypatch):
    config = load_config(_config_file(tmp_path, "usr1", STAGES["dense"]))
    _interrupt_at_loss_call(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    with pytest.raises(Preempted, match=r"stopped by SIGUSR1 at step 3: checkpoint saved to .*checkpoint\.pt"):
        run(config, log=_quiet)


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sparsetrain", *args], env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_nonfinite_loss_stops_the_run_with_a_one_line_error(tmp_path):
    path = _config_file(tmp_path, "diverges", STAGES["dense"])
    out = _cli("run", str(path), "optimizer.lr=1e30")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: training loss is nan at step ")
    # lr 1e30 leaves the weights huge but finite; the logits overflow in the loss
    assert "(stage 0 dense, epoch 1); first non-finite tensor: none (inputs, parameters and buffers are finite" \
        in lines[0]
    assert not (tmp_path / "diverges" / "model_final.pt").exists()


@pytest.mark.parametrize("policy", ["skip", "continue"])
def test_nonfinite_policies_skip_and_continue_finish(tmp_path, monkeypatch, policy):
    config = load_config(_config_file(tmp_path, policy, STAGES["dense"], on_nonfinite=policy))
    original = ClassificationTask.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, labels, label_smoothing=0.0):
        calls["n"] += 1
        loss = original(logits, labels, label_smoothing)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(ClassificationTask, "cross_entropy", staticmethod(poisoned))
    lines: list[str] = []
    result = run(config, log=lines.append)
    finite = all(bool(torch.isfinite(p).all()) for p in result.model.parameters())
    if policy == "skip":  # the poisoned batch changes nothing: the weights stay finite
        assert finite
        assert any("training loss nan at step 4 (stage 0 dense, epoch 1): update skipped (1 so far)" in line
                   for line in lines)
    else:  # the pre-0.2 behaviour: NaN gradients poison the weights
        assert not finite


def test_nonfinite_check_names_a_bad_input_batch(tmp_path, monkeypatch):
    config = load_config(_config_file(tmp_path, "badinput", STAGES["dense"]))
    original = ClassificationTask.to_device
    calls = {"n": 0}

    def poisoned(self, batch, device):  # a transform that produced a NaN in the third training batch
        if not isinstance(batch, (list, tuple)):  # to_device recurses into the (inputs, labels) pair
            return original(self, batch, device)
        inputs, labels = original(self, batch, device)
        calls["n"] += 1
        if calls["n"] == 3:
            inputs = inputs.clone()
            inputs.view(-1)[5] = float("nan")
        return inputs, labels

    monkeypatch.setattr(ClassificationTask, "to_device", poisoned)
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at step 2 \(stage 0 dense, epoch 1\); "
                       "first non-finite tensor: the input batch"):
        run(config, log=_quiet)


def test_npz_inputs_with_nan_are_refused_before_training(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(40, 1, 8)).astype(np.float32)
    x[3, 0, 2] = np.nan
    y = np.arange(40) % 3
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    config = load_config(_config_file(tmp_path, "badinput", STAGES["dense"]),
                         [f"task.dataset={{name: npz, options: {{path: {tmp_path / 'data.npz'}}}}}", "data.batch_size=40"])
    with pytest.raises(UserError, match=r"x_train holds NaN at index \(3, 0, 2\)"):
        run(config, log=_quiet)
    assert not (tmp_path / "badinput" / "metrics.jsonl").exists() or \
        (tmp_path / "badinput" / "metrics.jsonl").read_text() == ""


@pytest.mark.slow
def test_sigterm_through_the_cli_then_resume(tmp_path):
    path = _config_file(tmp_path, "cli", STAGES["gpmt"], checkpoint_every_steps=5)
    process = subprocess.Popen([sys.executable, "-m", "sparsetrain", "run", str(path)],
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cli" / "train.log"
    for line in process.stdout:  # wait until training has started (the first evaluation is logged)
        if "epoch 1/1" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM at step" in stderr and "--resume" in stderr
    assert "epoch 1/1" in log.read_text()  # the run's own log file
    resumed = _cli("run", "--resume", str(tmp_path / "cli"))
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "cli" / "model_final.pt").is_file()


def test_closed_output_pipe_does_not_end_the_run(tmp_path):
    path = _config_file(tmp_path, "piped", STAGES["gpmt"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "sparsetrain", "run", str(path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()  # `| head -1`: read one line, then close the pipe
    process.stdout.close()
    assert process.wait(timeout=120) == 0, process.stderr.read().decode()
    assert (tmp_path / "piped" / "model_final.pt").is_file()  # the run went on to the end
    assert "finetune epoch 2/2" in (tmp_path / "piped" / "train.log").read_text()


def _torchrun(config_args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                             "-m", "sparsetrain", "run", *config_args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gpmt", "pgap"])
def test_sigterm_under_torchrun_then_resume_is_bit_identical(tmp_path, method):
    """Two gloo processes (data parallel for GPMT; one P-GaP worker each) stopped by SIGTERM, as a
    scheduler sends it to the whole job, then resumed under torchrun, equal a run never stopped."""
    stages = STAGES[method]
    reference_config = _config_file(tmp_path, "reference", stages, stop_check_every=2)
    # P-GaP in one process equals its torchrun run bit for bit (tests/test_gap.py); data parallelism does not
    reference = None if method == "pgap" else _torchrun([str(reference_config)])
    stopped_config = _config_file(tmp_path, "stopped", stages, stop_check_every=2)
    stopped = _torchrun([str(stopped_config)])
    for line in stopped.stdout:  # rank 0 logs; stop once training is under way
        if "epoch 1/" in line:
            break
    os.killpg(stopped.pid, signal.SIGTERM)
    _, stderr = stopped.communicate(timeout=120)
    assert stopped.returncode != 0
    assert "stopped by SIGTERM at step" in stderr, stderr[-3000:]
    run_dir = tmp_path / "stopped"
    if method == "pgap":  # the workers hold different models mid-round: one file per rank and a manifest
        manifest = json.loads((run_dir / "checkpoint.ranks.json").read_text())
        assert manifest["files"] == ["checkpoint.rank0.pt", "checkpoint.rank1.pt"]
        assert all((run_dir / name).is_file() for name in manifest["files"])
    resumed = _torchrun(["--resume", str(run_dir)])
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    if reference is None:
        run(load_config(reference_config), log=_quiet)
    else:
        _, reference_err = reference.communicate(timeout=300)
        assert reference.returncode == 0, reference_err[-3000:]
    _assert_same_run(tmp_path / "reference", run_dir)
    assert not (run_dir / "checkpoint.ranks.json").exists()  # the post-merge checkpoint superseded it


def test_skip_policy_is_refused_under_data_parallelism(tmp_path):
    from sparsetrain.errors import UserError
    from sparsetrain.runner.distributed import DistContext
    from sparsetrain.runner.train import _Run

    state = _Run(load_config(_config_file(tmp_path, "ddp_skip", STAGES["dense"], on_nonfinite="skip")), _quiet)
    state.dist = DistContext(rank=0, world_size=2)  # as under torchrun, without joining a process group
    with pytest.raises(UserError, match="on_nonfinite='skip' is not supported with data parallelism"):
        state.setup_data_parallel()
