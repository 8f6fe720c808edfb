"""One training run from a validated config, readable top to bottom.

``run(config)`` lays the run out as a timeline (stages and mask events), then walks it: each
training stage builds a fresh optimizer and LR schedule and trains epoch by epoch; a ``prune``
stage applies its mask event and from then on ``Sparsifier.step(optimizer)`` keeps the masks fixed.

Outputs in the run directory: ``config.yaml``, ``metrics.jsonl`` (one line per evaluation),
``events.jsonl`` and ``sparsity/*.csv`` (one per mask event), ``checkpoint.pt`` (atomic, every
``training.checkpoint_every`` epochs and at stage ends), ``model_final.pt`` / ``model_best.pt``
(plain state dicts with zeros), ``summary.json`` and the report.

Exact resume: the data order of epoch ``e`` comes from a generator seeded by (seed, e), the LR is
a pure function of the position in the stage, and the checkpoint holds model, optimizer,
sparsifier, grad scaler and every RNG state, so ``run(config, resume=True)`` after a kill ends
with the same weights as an uninterrupted run (same machine, same thread count).
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..config import LRScheduleConfig, OptimizerConfig, RunConfig, dump_config
from ..interop import gpmt_files
from ..methods import apply_event
from ..sparsity import MaskSet, Sparsifier, global_counts, select_targets
from ..sparsity.targets import parameter_count
from ..tasks import build_task
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from .lr_schedules import LRSchedule, set_lr
from .timeline import StageSpan, Timeline, build_timeline

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    masks: MaskSet | None
    final: dict[str, Any]
    best: dict[str, Any]


# ---- building blocks ---------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    optimizer = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return optimizer(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def build_lr_schedule(config: LRScheduleConfig, base_lr: float, span: StageSpan) -> LRSchedule:
    total = span.steps if config.unit == "iteration" else span.epochs
    return LRSchedule(config.kind, base_lr, total, config.warmup, config.warmup_init_lr, config.min_lr,
                      config.step_size, config.milestones, config.gamma)


def parse_selectors(patterns: list[str] | None) -> list[Any] | None:
    """Config selectors: ``nn.Linear`` style names become module types, anything else is a regex."""
    if patterns is None:
        return None
    selectors: list[Any] = []
    for pattern in patterns:
        if pattern.startswith("nn."):
            module_type = getattr(nn, pattern[3:], None)
            if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
                raise ValueError(f"targets selector {pattern!r} is not a torch.nn module type")
            selectors.append(module_type)
        else:
            selectors.append(pattern)
    return selectors


def autocast_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("training.amp='fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_loader(dataset, batch_size: int, seed: int, epoch: int, config) -> DataLoader:
    """The training batches of global epoch ``epoch``: their order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(dataset, generator=generator),
                      num_workers=config.num_workers, drop_last=config.drop_last)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def write_layer_csv(path: Path, masks: MaskSet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "shape", "numel", "kept", "sparsity", "target"])
        for row in masks.table():
            target = "" if row.target is None else f"{row.target:.6f}"
            writer.writerow([row.name, "x".join(map(str, row.shape)), row.numel, row.kept, f"{row.sparsity:.6f}", target])


def write_gpmt_reference_files(
    directory: Path, masks: MaskSet, gp_counts: list[int], accuracy_before: float | None, accuracy_after: float
) -> None:
    """The GPMT reference code's outputs for one GPMT prune, for side-by-side comparisons.

    ``prune_log.csv`` holds the plain GP counts of its stage 1 (the GP-pruned model is not
    evaluated, so its Post Accuracy is left empty); ``prune_refined_log.csv`` the final counts and
    the accuracy right after pruning; accuracies in percent.
    """
    directory.mkdir(parents=True, exist_ok=True)
    numels = [t.numel for t in masks.targets]
    counts = [n - k for n, k in zip(numels, masks.kept_counts())]
    gpmt_files.write_prune_log(directory / "prune_log.csv", numels, gp_counts, None, accuracy_before)
    gpmt_files.write_layer_sparsities(directory / "layer_sparsities.csv", [c / n for c, n in zip(counts, numels)])
    gpmt_files.write_prune_log(directory / "prune_refined_log.csv", numels, counts, accuracy_after, accuracy_before)
    gpmt_files.write_weight_mask_npy(directory / "weight_mask.npy", masks.masks)
    gpmt_files.save_mask_list(directory / "mask_list.pt", masks.masks)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


# ---- the run -----------------------------------------------------------------------------------


class _Run:
    """Mutable state of one run; ``position`` is (stage index, global epoch) of the next work."""

    def __init__(self, config: RunConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.dir = config.run_dir()
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.task = build_task(config.task)
        self.model = self.task.build_model().to(self.device)
        if config.init.checkpoint:
            load_model_weights(self.model, config.init.checkpoint)
        self.include = parse_selectors(config.targets.include)
        self.exclude = parse_selectors(config.targets.exclude)
        self.timeline: Timeline = build_timeline(
            config, steps_per_epoch(len(self.task.train_set), config.data.batch_size, config.data.drop_last))
        for span in self.timeline.stages:  # a schedule that does not fit its stage fails before training
            if span.lr_schedule is not None:
                try:
                    build_lr_schedule(span.lr_schedule, span.optimizer.lr, span)
                except ValueError as exc:
                    raise ValueError(f"stages.{span.index}.lr_schedule: {exc} ({span.epochs} epochs of "
                                     f"{self.timeline.steps_per_epoch} steps)") from None
        self.eval_loader = DataLoader(self.task.test_set, batch_size=config.data.eval_batch_size)
        self.sparsifier: Sparsifier | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.training.amp == "fp16")
        self.stage_index, self.epoch, self.step, self.events_applied = 0, 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.model_numel = parameter_count(self.model)

    # -- persistence --
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def save(self) -> None:
        save_checkpoint(self.dir / CHECKPOINT, {
            "fingerprint": self.config.fingerprint(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scaler": self.scaler.state_dict(),
            "sparsifier": self.sparsifier.state_dict() if self.sparsifier else None,
            "position": {"stage": self.stage_index, "epoch": self.epoch, "step": self.step,
                         "events_applied": self.events_applied},
            "history": self.history, "events": self.events, "elapsed": self.elapsed(), "rng": rng_state(),
        })

    def restore(self) -> None:
        state = load_checkpoint(self.dir / CHECKPOINT, self.config.fingerprint())
        self.model.load_state_dict(state["model"])
        position = state["position"]
        self.stage_index, self.epoch, self.step = position["stage"], position["epoch"], position["step"]
        self.events_applied = position["events_applied"]
        if state["sparsifier"] is not None:
            masks = MaskSet(select_targets(self.model, self.include, self.exclude), model_numel=self.model_numel)
            self.sparsifier = Sparsifier(self.model, masks)
            self.sparsifier.load_state_dict(state["sparsifier"])
        span = self.timeline.stages[self.stage_index] if self.stage_index < len(self.timeline.stages) else None
        if state["optimizer"] is not None and span is not None and span.optimizer and self.epoch > span.start_epoch:
            self.optimizer = build_optimizer(self.model, span.optimizer)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.history, self.events, self.elapsed_before = state["history"], state["events"], state["elapsed"]
        _rewrite_jsonl(self.dir / "metrics.jsonl", self.history)
        _rewrite_jsonl(self.dir / "events.jsonl", self.events)
        restore_rng_state(state["rng"])
        self.log(f"resumed {self.dir} at stage {self.stage_index}, epoch {self.epoch}, step {self.step}")

    # -- measurements --
    def sparsity(self) -> tuple[float, float]:
        if self.sparsifier is None:
            return 0.0, 0.0
        return self.sparsifier.masks.sparsity(), self.sparsifier.masks.sparsity_over_parameters()

    def record(self, kind: str, stage_epoch: int, lr: float, train_loss: float | None) -> dict[str, Any]:
        sparsity, sparsity_all = self.sparsity()
        metrics = self.task.evaluate(self.model, self.eval_loader, self.device)
        entry = {"stage": self.stage_index, "stage_kind": kind, "epoch": self.epoch, "stage_epoch": stage_epoch,
                 "step": self.step, "lr": lr, "train_loss": train_loss, **metrics, "sparsity": sparsity,
                 "sparsity_all": sparsity_all, "events_applied": self.events_applied,
                 "time_s": round(self.elapsed(), 3)}
        self.history.append(entry)
        _append_jsonl(self.dir / "metrics.jsonl", entry)
        if entry is self.best_record():
            atomic_torch_save(self.model.state_dict(), self.dir / "model_best.pt")
        return entry

    def best_record(self) -> dict[str, Any] | None:
        """Best test top-1 among evaluations under the run's final masks (after its last mask event)."""
        total_events = len(self.timeline.schedule.events())
        candidates = [h for h in self.history if h["events_applied"] == total_events]
        return max(candidates, key=lambda h: h["test_top1"]) if candidates else None

    # -- stages --
    def apply_mask_events(self, span: StageSpan) -> None:
        for event in self.timeline.schedule.events_at(span.start_step):
            before = self.history[-1]["test_top1"] if self.history else None
            gp_counts = None
            if event.method == "gpmt":  # the reference code's stage 1 log holds plain GP counts
                targets = select_targets(self.model, self.include, self.exclude)
                gp_counts = global_counts([t.param.detach() for t in targets], event.sparsity, [t.name for t in targets])
            masks = apply_event(event, self.model, self.include, self.exclude)
            self.sparsifier = Sparsifier(self.model, masks)
            self.events_applied += 1
            csv_name = f"sparsity/step{self.step:08d}_{event.kind}.csv"
            write_layer_csv(self.dir / csv_name, masks)
            entry = {"step": self.step, "epoch": self.epoch, "stage": span.index, "kind": event.kind,
                     "label": event.label, "sparsity": masks.sparsity(), "csv": csv_name}
            self.events.append(entry)
            _append_jsonl(self.dir / "events.jsonl", entry)
            after = self.record(span.kind, 0, 0.0, None)
            if gp_counts is not None:
                write_gpmt_reference_files(self.dir / "gpmt_reference", masks, gp_counts, before, after["test_top1"])
            self.log(f"stage {span.index} {event.label}: sparsity {masks.sparsity():.4f}, "
                     f"top-1 right after {after['test_top1']:.2f}%")

    def train_stage(self, span: StageSpan) -> None:
        assert span.optimizer is not None and span.lr_schedule is not None
        if self.optimizer is None or self.epoch == span.start_epoch:
            self.optimizer = build_optimizer(self.model, span.optimizer)
        schedule = build_lr_schedule(span.lr_schedule, span.optimizer.lr, span)
        per_iteration = span.lr_schedule.unit == "iteration"
        training = self.config.training
        autocast = autocast_context(training.amp, self.device)
        for epoch in range(self.epoch, span.end_epoch):
            stage_epoch = epoch - span.start_epoch
            loader = epoch_loader(self.task.train_set, self.config.data.batch_size, self.config.seed, epoch,
                                  self.config.data)
            bar = _progress(loader, f"stage {span.index} {span.kind} epoch {stage_epoch + 1}/{span.epochs}",
                            training.progress)
            self.model.train()
            loss_sum, seen, lr = 0.0, 0, 0.0
            for inputs, labels in bar:
                position = self.step - span.start_step if per_iteration else stage_epoch
                lr = schedule.lr_at(position)
                set_lr(self.optimizer, lr)
                inputs, labels = inputs.to(self.device), labels.to(self.device)
                with autocast:
                    loss = self.task.loss(self.model(inputs), labels, training.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if training.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.sparsifier is not None:
                    self.sparsifier.step(self.optimizer)
                self.step += 1
                loss_value = float(loss.detach())
                loss_sum += loss_value * labels.numel()
                seen += labels.numel()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", sparsity=f"{self.sparsity()[0]:.3f}")
            self.epoch = epoch + 1
            last = self.epoch == span.end_epoch
            if last or (stage_epoch + 1) % training.eval_every == 0:
                entry = self.record(span.kind, stage_epoch + 1, lr, loss_sum / max(seen, 1))
                self.log(f"stage {span.index} {span.kind} epoch {stage_epoch + 1}/{span.epochs}: "
                         f"train loss {entry['train_loss']:.4f}, test top-1 {entry['test_top1']:.2f}%, "
                         f"sparsity {entry['sparsity']:.4f}")
            if last:
                self.stage_index += 1
            if last or (stage_epoch + 1) % training.checkpoint_every == 0:
                self.save()

    def run(self) -> RunResult:
        for span in self.timeline.stages[self.stage_index:]:
            if span.kind == "prune":
                self.apply_mask_events(span)
                self.stage_index += 1
                self.save()
            else:
                self.train_stage(span)
        return self.finish()

    def finish(self) -> RunResult:
        masks = self.sparsifier.masks if self.sparsifier else None
        final = self.history[-1]
        best = self.best_record() or final
        atomic_torch_save(self.model.state_dict(), self.dir / "model_final.pt")
        if masks is not None:
            write_layer_csv(self.dir / "sparsity" / "final.csv", masks)
        summary = {"final": final, "best": best, "model_numel": self.model_numel,
                   "target_numel": masks.numel() if masks else None,
                   "sparsity": masks.sparsity() if masks else 0.0, "wall_time_s": round(self.elapsed(), 3)}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return RunResult(self.dir, self.model, masks, final, best)


def _progress(loader: DataLoader, description: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True)


def run(config: RunConfig, resume: bool = False, log: Callable[[str], None] = print) -> RunResult:
    """Train ``config`` in ``config.run_dir()``; with ``resume``, continue from its checkpoint."""
    state = _Run(config, log)
    state.dir.mkdir(parents=True, exist_ok=True)
    if resume:
        if not (state.dir / CHECKPOINT).is_file():
            raise CheckpointError(f"cannot resume: {str(state.dir / CHECKPOINT)!r} does not exist")
        state.restore()
    else:
        if (state.dir / CHECKPOINT).exists():
            raise CheckpointError(f"run directory {str(state.dir)!r} already holds a run; resume it or choose another")
        (state.dir / "config.yaml").write_text(dump_config(config))
        for name in ("metrics.jsonl", "events.jsonl"):
            (state.dir / name).write_text("")
    return state.run()
