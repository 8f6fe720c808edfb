"""SparsityCallback in a real Lightning Trainer: masks hold after every optimizer step (Adam state included),
schedules reach their targets exactly, RigL sees complete gradients per optimizer step with accumulation, masks
survive a checkpoint resume, P-GaP is refused, and the example's smoke run works."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

pl = pytest.importorskip("lightning.pytorch")

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsetrain
from sparsetrain.errors import UserError
from sparsetrain.integrations.lightning import SparsityCallback
from sparsetrain.sparsity.budgets import count_for

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 5  # per epoch: odd, so accumulate_grad_batches=2 ends each epoch on a partial accumulation


class Tiny(pl.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8 * BATCHES, 16, generator=g)
    return DataLoader(TensorDataset(x, (x[:, :4].argmax(1))), batch_size=8)


def trainer(callbacks, epochs: int, **kwargs) -> pl.Trainer:
    options = {"max_epochs": epochs, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def masks_hold(masks) -> bool:
    return all(bool((p.detach()[~m] == 0).all()) for p, m in zip(masks.params, masks.masks))


class Recorder(pl.Callback):
    """Runs after SparsityCallback: after each micro-batch, the masks' state and whether they hold."""

    def __init__(self, callback: SparsityCallback) -> None:
        self.callback = callback
        self.rows: list[tuple[int, int, int, bool]] = []  # (global_step, pruned, checksum, holds)
        self.at_train_start: int | None = None

    def on_train_start(self, trainer, pl_module):
        self.at_train_start = self.callback.masks.checksum()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        masks = self.callback.masks
        self.rows.append((trainer.global_step, masks.pruned_count(), masks.checksum(), masks_hold(masks)))


class Spy(SparsityCallback):
    """Records the steps at which the driver's three calls ran, and the backward passes each after_backward saw."""

    backwards = 0

    def on_after_backward(self, trainer, pl_module):
        self.backwards += 1

    def _build(self, trainer, pl_module, steps_per_epoch):
        super()._build(trainer, pl_module, steps_per_epoch)
        self.built_steps_per_epoch = steps_per_epoch
        self.calls = {"before_step": [], "after_backward": [], "after_step": []}
        self.accumulated: list[int] = []
        driver = self.driver
        for name in ("before_step", "after_backward"):
            original = getattr(driver, name)

            def spy(step, optimizer, _original=original, _name=name):
                self.calls[_name].append(step)
                if _name == "after_backward":
                    self.accumulated.append(self.backwards)
                    self.backwards = 0
                return _original(step, optimizer)

            setattr(driver, name, spy)
        original_after = driver.after_step

        def after(optimizer):
            self.calls["after_step"].append(trainer.global_step)
            return original_after(optimizer)

        driver.after_step = after


def test_fixed_masks_hold_with_adam_and_count_is_exact():
    model = Tiny()
    masks = sparsetrain.prune(model, 0.7)
    pruned = masks.pruned_count()
    callback = SparsityCallback(masks=masks)
    recorder = Recorder(callback)
    trainer([callback, recorder], epochs=2).fit(model, loader())
    assert trainer_steps(recorder) == 2 * BATCHES
    assert all(row[3] for row in recorder.rows)
    optimizer_state = model.trainer.optimizers[0].state
    for param, mask in zip(masks.params, masks.masks):
        assert (param.detach()[~mask] == 0).all()
        state = optimizer_state[param]
        assert (state["exp_avg"][~mask] == 0).all() and (state["exp_avg_sq"][~mask] == 0).all()
        assert (state["exp_avg"][mask] != 0).any()
    assert sum(int((p == 0).sum()) for p in masks.params) == pruned == masks.pruned_count()
    assert pruned == count_for(masks.numel(), 0.7)  # global magnitude pruning: round(s * N) of all targets


def trainer_steps(recorder: Recorder) -> int:
    return recorder.rows[-1][0]


def test_gmp_reaches_its_target_exactly_at_the_end():
    model = Tiny()
    callback = SparsityCallback(method="gmp", sparsity=0.75, epochs=4, frequency=2)
    recorder = Recorder(callback)
    trainer([callback, recorder], epochs=4).fit(model, loader())
    masks = callback.masks
    expected = sum(count_for(t.numel, 0.75) for t in masks.targets)
    assert masks.pruned_count() == expected
    assert sum(int((p == 0).sum()) for p in masks.params) == expected
    pruned = [row[1] for row in recorder.rows]
    assert pruned[0] < expected and pruned == sorted(pruned)  # rises along the schedule
    assert all(row[3] for row in recorder.rows)


def test_rigl_keeps_sparsity_constant_and_changes_masks():
    model = Tiny()
    callback = SparsityCallback(method="rigl", sparsity=0.8, epochs=4, update_every=2, steps_per_epoch=BATCHES)
    recorder = Recorder(callback)
    trainer([callback, recorder], epochs=4).fit(model, loader())
    pruned = {row[1] for row in recorder.rows}
    assert pruned == {sum(count_for(t.numel, 0.8) for t in callback.masks.targets)}
    assert len({row[2] for row in recorder.rows}) > 2  # drop-and-grow moved the masks
    assert all(row[3] for row in recorder.rows)


def test_gradient_accumulation_events_per_optimizer_step():
    model = Tiny()
    callback = Spy(method="rigl", sparsity=0.8, epochs=3, update_every=1)
    recorder = Recorder(callback)
    trainer([callback, recorder], epochs=3, accumulate_grad_batches=2).fit(model, loader())
    per_epoch = math.ceil(BATCHES / 2)
    assert callback.built_steps_per_epoch == per_epoch
    steps = list(range(3 * per_epoch))
    assert callback.calls["before_step"] == steps
    assert callback.calls["after_backward"] == steps
    assert callback.calls["after_step"] == [s + 1 for s in steps]  # once per real optimizer step
    assert callback.accumulated == [2, 2, 1] * 3  # RigL's gradients: every micro-batch of the step (last partial)
    assert len(recorder.rows) == 3 * BATCHES and all(row[3] for row in recorder.rows)
    assert len({row[1] for row in recorder.rows}) == 1 and len({row[2] for row in recorder.rows}) > 2


def test_masks_survive_checkpoint_resume(tmp_path):
    model = Tiny()
    callback = SparsityCallback(method="gmp", sparsity=0.75, epochs=4, frequency=1)
    run = trainer([callback], epochs=2)
    run.fit(model, loader())
    saved, saved_pruned = callback.masks.checksum(), callback.masks.pruned_count()
    assert 0 < saved_pruned < sum(count_for(t.numel, 0.75) for t in callback.masks.targets)
    path = tmp_path / "mid.ckpt"
    run.save_checkpoint(path)

    fresh = Tiny(seed=1)  # different weights: everything comes back from the checkpoint
    resumed = SparsityCallback(method="gmp", sparsity=0.75, epochs=4, frequency=1)
    recorder = Recorder(resumed)
    trainer([resumed, recorder], epochs=4).fit(fresh, loader(), ckpt_path=path)
    assert recorder.at_train_start == saved
    assert recorder.rows[0][0] == 2 * BATCHES + 1  # went on from the saved step
    assert resumed.masks.pruned_count() == sum(count_for(t.numel, 0.75) for t in resumed.masks.targets)
    assert all(row[3] for row in recorder.rows)

    fixed = Tiny(seed=2)  # fixed masks: the checkpoint's masks replace the ones given
    other = sparsetrain.prune(fixed, 0.5, method="random", seed=3)
    fixed_callback = SparsityCallback(masks=other)
    trainer([fixed_callback], epochs=3).fit(fixed, loader(), ckpt_path=path)
    assert other.checksum() == saved and masks_hold(other)


def test_sgap_runs_without_an_epochs_field_and_ends_at_its_target():
    """S-GaP's stage has no ``epochs`` field: the trainer's max_epochs must not be forced into it."""
    callback = SparsityCallback(method="sgap", sparsity=0.5, partitions={"scheme": "layers", "kappa": 2},
                                epochs_per_step=1, rounds=1, finetune_epochs=1)
    module = Tiny()
    trainer([callback], epochs=4).fit(module, loader())
    assert callback.masks.sparsity() == pytest.approx(0.5, abs=1e-3) and masks_hold(callback.masks)


def test_pgap_is_refused_in_one_line():
    with pytest.raises(UserError) as info:
        trainer([SparsityCallback(method="pgap", sparsity=0.9)], epochs=1).fit(Tiny(), loader())
    assert "pgap" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError):
        SparsityCallback()


def test_example_smoke_runs():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_prune.py"), "--smoke"],
                            check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy" in result.stdout and "sparsity" in result.stdout
    assert time.perf_counter() - start < 20
