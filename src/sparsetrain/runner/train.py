"""One training run from a validated config, readable top to bottom.

``run(config)`` lays the run out as a timeline (stages, optimizer segments, mask events), then
walks it. Mask events are applied in schedule order, exactly once each (``events_applied`` counts
them and is checkpointed), at the start of the epoch whose first step they are due at. Between
events, ``Sparsifier.mask_grads()`` zeroes the pruned weights' gradients before every optimizer step
(after fp16 loss unscaling, before clipping, which sees the masked gradients): with the runner's SGD,
Adam and AdamW that keeps pruned weights and optimizer state exactly zero, as every mask event zeroes
both when it changes the masks (one pass over the gradients per step instead of one over the weights
and all optimizer state). A new
segment (a new training stage, or a GaP step with ``reset_optimizer``) gets a fresh optimizer
and restarts its LR schedule, warm-up included.

P-GaP trains kappa worker copies per round (:mod:`.pgap_rounds`): one after another in this
process, or one per group of g ranks under torchrun (``WORLD_SIZE`` = kappa * g; DDP inside a group
when g > 1). All give the same merged model (bit for bit with g = 1, within float tolerance with
g > 1): each worker's RNG and data order are seeded by (seed, stage, round, worker).

No host sync per step on an accelerator: the epoch's training loss is summed on the device and
read every ``training.stop_check_every`` steps and at the epoch's end (on the CPU, where reading
a scalar costs nothing, and with ``on_nonfinite=skip``, which must decide each update, every
step); the progress bar's sparsity is the one measured at the last mask event.

Outputs in the run directory: ``run.json`` (the marker, see :mod:`.run_dir`), ``config.yaml``,
``train.log`` (every log line), ``metrics.jsonl`` (one line per evaluation), ``events.jsonl`` and
``sparsity/*.csv`` (one per mask event), ``checkpoint.pt`` (atomic; P-GaP workers stopped
mid-round under torchrun write ``checkpoint.rankR.pt`` + ``checkpoint.ranks.json``),
``model_final.pt`` / ``model_best.pt`` (plain state dicts with zeros), ``summary.json``, and with
``training.keep_last_models`` N the newest N epoch-end models in ``models/`` (``sparsetrain average``).

Exact resume: the LR is a pure function of the position in the segment, data order depends only
on (seed, epoch, stream), and the checkpoint holds model, optimizer, masks, grad scaler, P-GaP
round state, the epoch's loss so far and every RNG state (every rank's under data parallelism), so
``run(config, resume=True)`` after a kill ends with the same weights as an uninterrupted run (same
machine, same thread count), from an epoch end or from the middle of an epoch
(``training.checkpoint_every_steps``).

Preemption: while training, SIGTERM and SIGUSR1 only raise a flag; the loop saves a checkpoint
after the current step and raises :class:`Preempted` (the CLI exits with 128 + the signal
number). Ranks in lockstep agree on the stop every ``training.stop_check_every`` steps.
A NaN/inf training loss stops the run (:class:`TrainingDiverged`) unless
``training.on_nonfinite`` says to skip that update or to carry on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..config import RunConfig, dump_config
from ..data.batching import derived_seed
from ..errors import UserError
from ..methods import MaskEvent, method_for, trains_with_workers
from ..sparsity import MaskSet, Sparsifier
from ..tasks.base import TRAIN_LOSS, as_test_metrics
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    init_masks,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from .components import (
    autocast_context,
    build_lr_schedule,
    build_optimizer,
    epoch_loader,
    eval_loader_for,
    pins_memory,
    release_loaders,
    resolve_device,
)
from .distributed import (
    DistContext,
    broadcast_masks_,
    check_same_on_all_ranks,
    init_from_environment,
    shutdown_process_group,
)
from .flops import TRAINING_PASSES, target_forward_flops, training_flops_per_example
from .loggers import MetricLoggers, check_loggers
from .lr_schedules import set_lr
from .outputs import (
    append_jsonl,
    rewrite_jsonl,
    write_layer_csv,
)
from .pgap_rounds import RoundState, train_pgap_stage
from .preflight import data_parallel_error
from .progress import progress_bar
from .run_dir import check_run_dir, prepare_run_dir
from .setup import build_setup
from .timeline import TIMELINE_FILE, Segment, StageSpan, stage_context, timeline_record

CHECKPOINT = "checkpoint.pt"
LOG_FILE = "train.log"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RANK_MANIFEST = "checkpoint.ranks.json"  # a per-rank checkpoint of P-GaP workers under torchrun


EPOCH_MODELS = "models"


class Preempted(Exception):
    """SIGTERM or SIGUSR1 stopped the run after it checkpointed; ``sparsetrain run --resume`` continues it."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {str(checkpoint)!r}" if checkpoint else "rank 0 saved the checkpoint"
        super().__init__(f"stopped by {name} at step {step}: {where}; continue with "
                         f"`sparsetrain run --resume {checkpoint.parent if checkpoint else 'RUN_DIR'}`")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by that signal


class TrainingDiverged(UserError):
    """The training loss became NaN or inf and ``training.on_nonfinite`` is ``stop``."""


@dataclass
class RunResult:
    run_dir: Any
    model: nn.Module
    masks: MaskSet | None
    final: dict[str, Any]
    best: dict[str, Any]


class _Run:
    """Mutable state of one run; (stage_index, epoch, step, events_applied) is the position."""

    def __init__(self, config: RunConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.dir = config.run_dir()
        self.device = resolve_device(config.device)
        setup = build_setup(config, device=self.device)
        assert setup.task is not None and setup.timeline is not None
        self.task, self.model, self.targets, self.timeline = setup.task, setup.model, setup.targets, setup.timeline
        if config.training.channels_last:  # before the optimizer and masks see the parameters (same objects)
            self.model = self.model.to(memory_format=torch.channels_last)
        # Host-to-device copies: asynchronous from pinned memory on CUDA; keywords passed only when on.
        self.transfer: dict[str, bool] = {}
        if self.device.type == "cuda" and pins_memory(config.data, self.device):
            self.transfer["non_blocking"] = True
        if config.training.channels_last:
            self.transfer["channels_last"] = True
        self.compiled: tuple[nn.Module, nn.Module] | None = None  # (network, torch.compile(network))
        self.model_numel = setup.model_numel
        self.kept_dense = setup.kept_dense
        self.forward_flops = target_forward_flops(self.model, self.targets, setup.example_input)
        self.schedule = tuple(self.timeline.schedule.events())  # every mask event of the run, in order
        self.dist: DistContext | None = None
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, when data-parallel
        self.eval_loader = eval_loader_for(self.task, config.data, self.device)
        # The masks and their Sparsifier exist from the start: those of an init.checkpoint that is a `sparse`
        # export (enforced from the first step), else, in a run with mask events, dense ones that the
        # Sparsifier enforces after each update once an event has set them.
        masks = init_masks(config.init.checkpoint, self.targets, self.model_numel)
        self.masks_from_init = masks is not None
        if masks is None and self.schedule:
            masks = MaskSet(self.targets, model_numel=self.model_numel)
        self.sparsifier = Sparsifier(self.model, masks) if masks is not None else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending_optimizer_state: dict | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.training.amp == "fp16")
        self.stage_index, self.epoch, self.step, self.events_applied = 0, 0, 0, 0
        self.pgap: RoundState | None = None  # the P-GaP round in progress
        self.train_flops = 0.0
        self.flops_per_example = training_flops_per_example(self.forward_flops, None)
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.epoch_loss = (self.zero_loss(), 0)  # (sum of per-example losses on the device, examples) of the epoch so far
        self.loss_read_every = loss_read_interval(self.device, config.training.stop_check_every)
        self.event_sparsity = 0.0  # target sparsity after the last mask event (the progress bar's; no sync per step)
        self.skipped_steps = 0  # updates skipped for a non-finite loss (training.on_nonfinite=skip)
        self.stop_signal: int | None = None  # SIGTERM/SIGUSR1 received: checkpoint at the next step and stop
        self.metric_loggers: MetricLoggers | None = None  # training.loggers beyond jsonl (rank 0)

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def training_network(self) -> nn.Module:
        """What the training forward runs: the DDP wrapper or the model, through ``torch.compile`` when
        ``training.compile`` (compiled once per wrapper; it shares the model's parameters, so the masks,
        the optimizer and checkpoints see the same tensors)."""
        network = self.ddp if self.ddp is not None else self.model
        if not self.config.training.compile:
            return network
        if self.compiled is None or self.compiled[0] is not network:
            self.compiled = (network, torch.compile(network))
        return self.compiled[1]

    # ---- persistence ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def save(self) -> Path | None:
        """Checkpoint the position; returns the file this process wrote (None: rank 0 writes for it).

        Under data parallelism every rank calls it, and their RNG states are gathered into rank 0's
        file. P-GaP workers under torchrun hold different models mid-round: there each rank writes
        its own ``checkpoint.rankR.pt`` and rank 0 a manifest naming them; the next ordinary
        checkpoint (after the merge) removes both.
        """
        rng = rng_state()
        if self.ddp is not None:  # every rank's own RNG state, so augmentations resume exactly on each rank
            ranks: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(ranks, rng)
            rng = {**rng, "ranks": ranks}
        per_rank = self.dist is not None and self.pgap is not None
        if not (self.is_main or per_rank):
            return None
        path = self.dir / (f"checkpoint.rank{self.dist.rank}.pt" if per_rank else CHECKPOINT)
        save_checkpoint(path, {
            "fingerprint": self.config.fingerprint(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scaler": self.scaler.state_dict(),
            "sparsifier": self.sparsifier.state_dict() if self.sparsifier else None,
            "position": {"stage": self.stage_index, "epoch": self.epoch, "step": self.step,
                         "events_applied": self.events_applied},
            "pgap": self.pgap.state_dict() if self.pgap is not None else None,
            "train_flops": self.train_flops,
            "history": self.history, "events": self.events, "elapsed": self.elapsed(), "rng": rng,
            "epoch_loss": [float(self.epoch_loss[0]), self.epoch_loss[1]], "skipped_steps": self.skipped_steps,
        })
        if per_rank:
            torch.distributed.barrier()  # every rank's file is complete before the manifest names it
            if self.is_main:
                atomic_write(self.dir / RANK_MANIFEST, json.dumps(
                    {"fingerprint": self.config.fingerprint(), "step": self.step,
                     "files": [f"checkpoint.rank{r}.pt" for r in range(self.dist.world_size)]}))
        elif (self.dir / RANK_MANIFEST).exists():
            (self.dir / RANK_MANIFEST).unlink()
            for stale in self.dir.glob("checkpoint.rank*.pt"):
                stale.unlink()
        return path

    def restore(self) -> None:
        state = load_checkpoint(self.checkpoint_to_resume(), self.config.fingerprint())
        self.model.load_state_dict(state["model"])
        position = state["position"]
        self.stage_index, self.epoch, self.step = position["stage"], position["epoch"], position["step"]
        self.events_applied = position["events_applied"]
        if state["sparsifier"] is not None:
            self.masks().load_state_dict(state["sparsifier"]["masks"])
            self.masks_changed()
        self.pending_optimizer_state = state["optimizer"]
        self.scaler.load_state_dict(state["scaler"])
        self.pgap = RoundState.from_state_dict(state["pgap"])
        self.train_flops = state["train_flops"]
        self.history, self.events, self.elapsed_before = state["history"], state["events"], state["elapsed"]
        total, seen = state.get("epoch_loss", (0.0, 0))  # absent in 0.1 checkpoints (epoch ends only)
        self.epoch_loss = (self.zero_loss() + total, seen)
        self.skipped_steps = state.get("skipped_steps", 0)
        if self.is_main:  # drop what was logged after the checkpoint
            rewrite_jsonl(self.dir / "metrics.jsonl", self.history)
            rewrite_jsonl(self.dir / "events.jsonl", self.events)
        rng = state["rng"]
        ranks = rng.get("ranks")
        if ranks is not None and self.dist is not None and len(ranks) == self.dist.world_size:
            rng = ranks[self.dist.rank]
        elif ranks is not None:
            self.log(f"note: the checkpoint was written by {len(ranks)} processes; resuming with a different "
                     "number is not bit-identical")
        restore_rng_state(rng)
        self.log(f"resumed {self.dir} at stage {self.stage_index}, epoch {self.epoch}, step {self.step}")

    def checkpoint_to_resume(self) -> Path:
        """``checkpoint.pt``, or this rank's file of a per-rank P-GaP checkpoint if one is newer."""
        manifest_path = self.dir / RANK_MANIFEST
        if not manifest_path.is_file():
            return self.dir / CHECKPOINT
        try:
            manifest = json.loads(manifest_path.read_text())
            files = list(manifest["files"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"per-rank checkpoint manifest {str(manifest_path)!r} is corrupt") from None
        world = self.dist.world_size if self.dist is not None else 1
        if len(files) != world:
            raise CheckpointError(f"{str(manifest_path)!r}: the run was stopped inside a P-GaP round with "
                                  f"{len(files)} processes; resume it under torchrun with --nproc_per_node="
                                  f"{len(files)} (got WORLD_SIZE={world})")
        return self.dir / files[self.dist.rank]

    # ---- measurements --------------------------------------------------------------------------
    def masks(self) -> MaskSet:
        """The run's masks (only a run with mask events has them)."""
        assert self.sparsifier is not None, "a run without mask events has no masks"
        return self.sparsifier.masks

    def masks_changed(self) -> None:
        """Re-measure what follows from the masks: FLOPs per example and the progress bar's sparsity."""
        self.flops_per_example = training_flops_per_example(self.forward_flops, self.masks())
        self.event_sparsity = self.masks().sparsity()

    def zero_loss(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def sparsity(self) -> tuple[float, float]:
        if self.sparsifier is None:
            return 0.0, 0.0
        return self.sparsifier.masks.sparsity(), self.sparsifier.masks.sparsity_over_parameters()

    def record(self, kind: str, stage_epoch: int, lr: float, train_loss: float | None) -> dict[str, Any]:
        sparsity, sparsity_all = self.sparsity()
        metrics = as_test_metrics(self.task.evaluate(self.model, self.eval_loader, self.device,
                                                     self.config.training.max_eval_batches))
        entry = {"stage": self.stage_index, "stage_kind": kind, "epoch": self.epoch, "stage_epoch": stage_epoch,
                 "step": self.step, "lr": lr, TRAIN_LOSS: train_loss, **metrics, "sparsity": sparsity,
                 "sparsity_all": sparsity_all, "events_applied": self.events_applied,
                 "train_flops": self.train_flops, "time_s": round(self.elapsed(), 3)}
        self.history.append(entry)
        append_jsonl(self.dir / "metrics.jsonl", entry)
        if self.metric_loggers is not None:
            self.metric_loggers.log_record(entry, self.step)
        if entry is self.best_record():
            atomic_torch_save(self.model.state_dict(), self.dir / "model_best.pt")
        return entry

    def best_record(self) -> dict[str, Any] | None:
        """Best primary metric of the task among evaluations under the run's final masks (after its last
        mask event)."""
        candidates = [h for h in self.history if h["events_applied"] == len(self.schedule)]
        return self.task.best(candidates)

    # ---- mask events ---------------------------------------------------------------------------
    def apply_due_events(self, span: StageSpan, after_backward: bool = False) -> None:
        """Apply, in order, every not yet applied event of this stage due at ``self.step`` in this phase."""
        while self.events_applied < len(self.schedule):
            event = self.schedule[self.events_applied]
            if event.stage != span.index or event.step != self.step or event.after_backward != after_backward:
                break
            self.apply_event(span, event)

    def next_event_step(self) -> int | None:
        """The step of the next event to apply (O(1): events are applied in schedule order)."""
        return self.schedule[self.events_applied].step if self.events_applied < len(self.schedule) else None

    def apply_event(self, span: StageSpan, event: MaskEvent) -> None:
        before = self.history[-1][self.task.primary_key()] if self.history else None
        method = method_for(span.kind)  # the module of the stage that scheduled the event
        prepare = getattr(method, "prepare_outputs", None)  # a method's own files (GPMT's reference files)
        prepared = prepare(event, self.masks()) if prepare is not None else None
        method.apply(event, self.masks(), stage_context(span, self.timeline.steps_per_epoch, self.config.seed))
        masks = self.masks()
        if self.dist is not None and self.config.distributed.masks == "broadcast":
            broadcast_masks_(masks.masks)
        # Pruned weights are zero from here on whatever the method did: the step only masks gradients.
        masks.apply_()
        if self.dist is not None:  # masks are computed on every rank; make sure they agree
            check_same_on_all_ranks(masks.checksum(), f"mask checksum after {event.kind} at step {self.step}",
                                    self.device)
        if self.optimizer is not None and not event.resets_optimizer:
            masks.mask_optimizer_state_(self.optimizer)
        self.events_applied += 1
        self.masks_changed()
        if not self.is_main:
            return
        csv_name = f"sparsity/step{self.step:08d}_{self.events_applied:03d}_{event.kind}.csv"
        write_layer_csv(self.dir / csv_name, masks)
        if self.metric_loggers is not None:
            self.metric_loggers.log_layer_sparsity({row.name: row.sparsity for row in masks.table()}, self.step)
        entry = {"step": self.step, "epoch": self.epoch, "stage": span.index, "kind": event.kind,
                 "label": event.label, "sparsity": masks.sparsity(), "csv": csv_name}
        self.events.append(entry)
        append_jsonl(self.dir / "events.jsonl", entry)
        # Evaluate after the events that change the model's sparsity pattern wholesale, not after
        # the frequent ones (GMP's steps, SET/RigL updates) or P-GaP's bookkeeping: the method says.
        if not method.evaluates_after(event):
            return
        after = self.record(span.kind, self.epoch - span.start_epoch, 0.0, None)
        if prepared is not None:
            method.write_outputs(event, prepared, masks, self.dir, before, after[self.task.primary_key()])
        self.log(f"stage {span.index} {event.kind} {event.label}: sparsity {masks.sparsity():.4f}, "
                 f"{self.task.format_primary(after[self.task.primary_key()], ' right after')}")

    # ---- training ------------------------------------------------------------------------------
    def prepare_optimizer(self, span: StageSpan, segment: Segment, epoch: int) -> None:
        """A fresh optimizer at a segment's first step; otherwise keep it (or restore it after resume)."""
        segment_started = self.step > segment.start_epoch * self.timeline.steps_per_epoch
        if not segment_started or self.optimizer is None:
            assert span.optimizer is not None
            self.optimizer = build_optimizer(self.model, span.optimizer)
            if self.pending_optimizer_state is not None and segment_started:
                self.optimizer.load_state_dict(self.pending_optimizer_state)
        self.pending_optimizer_state = None

    def train_epoch(self, span: StageSpan, segment: Segment, epoch: int, stream: int = 0) -> tuple[float, float]:
        """The rest of one epoch of optimizer steps (all of it, unless resumed mid-epoch); returns (mean
        training loss over the epoch's examples, last LR)."""
        assert span.lr_schedule is not None and span.optimizer is not None and self.optimizer is not None
        spe = self.timeline.steps_per_epoch
        schedule = build_lr_schedule(span.lr_schedule, span.optimizer.lr, segment.epochs, spe)
        per_iteration = span.lr_schedule.unit == "iteration"
        segment_start_step = segment.start_epoch * spe
        training = self.config.training
        # This rank's share of each global batch: among every rank, or among a P-GaP worker's group of g ranks.
        group = self.ddp.process_group if self.ddp is not None else None
        rank, world = (0, 1) if group is None else (torch.distributed.get_rank(group),
                                                   torch.distributed.get_world_size(group))
        autocast = autocast_context(training.amp, self.device)  # one context, entered per micro-batch
        if training.bn_momentum is not None:
            set_bn_momentum(self.model, training.bn_momentum, epoch - segment.start_epoch)
        # Every rank runs this loop in step with the others (DDP, or P-GaP workers), so they can agree
        # on a stop; P-GaP's fine-tuning runs on rank 0 alone.
        lockstep = self.dist is not None and (self.ddp is not None or stream > 0)
        steps, global_sizes = self.task.step_micro_batches(epoch, stream, rank, world)
        if len(steps) != spe:
            raise RuntimeError(f"task {self.task.kind!r} gave {len(steps)} batches for epoch {epoch}, but its "
                               f"steps_per_epoch() is {spe}")
        done = self.step - epoch * spe  # batches of this epoch trained before a mid-epoch checkpoint
        if done == 0:
            self.epoch_loss = (self.zero_loss(), 0)
        # Read the loss (a host sync) every step only where it is free (CPU) or needed (skip decides
        # each update); otherwise every loss_read_every steps and at the epoch's end.
        read_each_step = self.loss_read_every == 1 or training.on_nonfinite == "skip"
        window_start = self.step
        flat = [micro for step in steps for micro in step]
        skipped = sum(len(step) for step in steps[:done])
        loader = epoch_loader(self.task.train_set, self.config.data, flat,
                              derived_seed(self.config.seed, epoch, stream, 1), skip=skipped,
                              collate_fn=self.task.collate_fn, device=self.device)
        grouped = _grouped(loader, [len(step) for step in steps[done:]])
        batches = progress_bar(grouped, f"stage {span.index} {span.kind} epoch {epoch - span.start_epoch + 1}/"
                               f"{span.epochs}", training.progress and self.is_main, total=spe - done)
        network = self.training_network()
        self.model.train()
        lr = 0.0
        for batch_index, (micro_batches, global_size) in enumerate(zip(batches, global_sizes[done:]), done):
            if self.next_event_step() == self.step:
                self.apply_due_events(span)
            lr = schedule.lr_at(self.step - segment_start_step if per_iteration else epoch - segment.start_epoch)
            set_lr(self.optimizer, lr)
            finite, loss_value, step_loss, step_count = self.accumulate_gradients(
                network, micro_batches, global_size, world, span, epoch, read_each_step, autocast)
            if self.next_event_step() == self.step:
                self.apply_due_events(span, after_backward=True)  # e.g. RigL, which needs this step's gradients
            if finite:
                masked = self.sparsifier is not None and (self.events_applied or self.masks_from_init)
                if masked or training.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)  # a no-op without fp16 loss scaling
                if masked:  # pruned weights and state stay zero (mask events zero them when masks change)
                    self.sparsifier.mask_grads()
                if training.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total, seen = self.epoch_loss
                self.epoch_loss = (total + step_loss, seen + step_count)  # stays on the device
            self.step += 1
            self.train_flops += self.flops_per_example * global_size
            last_batch = batch_index + 1 == len(steps)
            if not read_each_step and (self.step % self.loss_read_every == 0 or last_batch):
                loss_value = self.check_loss_window(span, epoch, window_start)
                window_start = self.step
            if loss_value is not None and hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", sparsity=f"{self.event_sparsity:.3f}")
            if not last_batch:  # epoch ends are the callers' to checkpoint
                self.checkpoint_or_stop_mid_epoch(lockstep)
        total, seen = self.epoch_loss
        return float(total) / max(seen, 1), lr

    def accumulate_gradients(self, network: nn.Module, micro_batches: list[Any], global_size: int, world: int,
                             span: StageSpan, epoch: int, read_each_step: bool, autocast: Any
                             ) -> tuple[bool, float | None, torch.Tensor, int]:
        """Forward and backward of one step's micro-batches on this rank, gradients accumulated.

        Returns ``(finite, loss read or None, sum of loss x count on the device, count)``. Each
        micro-batch's mean loss is weighted by its share of the global step (its count over the global
        count, times the world size that DDP's gradient average divides by), so the accumulated
        gradient is that of the mean loss over every rank's micro-batches, whatever the split. A single
        micro-batch of a task that cannot count its global batch in advance learns the global count
        from the other ranks. Non-finite (when read): the step's gradients are dropped.
        """
        last = len(micro_batches) - 1
        step_loss, step_count, loss_value = self.zero_loss(), 0, None
        for index, batch in enumerate(micro_batches):
            batch = self.task.to_device(batch, self.device, **self.transfer)
            # Only the last micro-batch's backward all-reduces the gradients under DDP.
            sync = contextlib.nullcontext() if index == last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with autocast:
                    loss, count = self.task.loss(network, batch)
                detached = loss.detach()
                if read_each_step:
                    value = float(detached)
                    loss_value = value if index == 0 else (loss_value * step_count + value * count) / (step_count + count)
                    if not math.isfinite(value) and not self.nonfinite_loss(span, epoch, value,
                                                                           self.task.batch_inputs(batch)):
                        self.optimizer.zero_grad(set_to_none=True)
                        return False, loss_value, step_loss, step_count
                if index == 0:
                    self.optimizer.zero_grad(set_to_none=False)
                if world > 1 or last > 0:
                    global_count = (global_size if self.task.GLOBAL_SIZE_IS_COUNT
                                    else self.global_count(count, global_size))
                    loss = loss * (count * world / global_count)
                self.scaler.scale(loss).backward()
            step_loss = step_loss + detached.double() * count
            step_count += count
        return True, loss_value, step_loss, step_count

    def check_loss_window(self, span: StageSpan, epoch: int, window_start: int) -> float:
        """Read the epoch's loss so far (one host sync); with ``on_nonfinite=stop`` raise if it is not finite.

        The sum turns non-finite at the first non-finite step, so that step lies in
        ``[window_start, self.step)``, the steps since the last read. Returns the epoch's mean so far.
        """
        total, seen = self.epoch_loss
        value = float(total)
        if not math.isfinite(value) and self.config.training.on_nonfinite == "stop":
            where = (f"between steps {window_start} and {self.step - 1} (stage {span.index} {span.kind}, epoch "
                     f"{epoch - span.start_epoch + 1}; read every {self.loss_read_every} steps)")
            culprit = _first_nonfinite(None, self.model)
            raise TrainingDiverged(
                f"training loss became {value} {where}; first non-finite tensor now: {culprit}. Lower "
                "optimizer.lr, set training.grad_clip, or set training.on_nonfinite=skip|continue")
        return value / max(seen, 1)

    def global_count(self, count: int, global_size: int) -> float:
        """Examples (or tokens) the global batch counts: ``global_size`` for a task counting examples."""
        if self.task.COUNT_UNIT == "examples":
            return global_size
        total = torch.tensor([float(count)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total, group=self.ddp.process_group if self.ddp is not None else None)
        return float(total)

    def nonfinite_loss(self, span: StageSpan, epoch: int, value: float, inputs: Any) -> bool:
        """Act on a NaN/inf training loss per ``training.on_nonfinite``; True if the step goes on as usual."""
        policy = self.config.training.on_nonfinite
        where = f"step {self.step} (stage {span.index} {span.kind}, epoch {epoch - span.start_epoch + 1})"
        if policy == "continue":
            return True
        if policy == "skip":
            self.skipped_steps += 1
            self.log(f"warning: training loss {value} at {where}: update skipped ({self.skipped_steps} so far)")
            return False
        culprit = _first_nonfinite(inputs, self.model)
        raise TrainingDiverged(
            f"training loss is {value} at {where}; first non-finite tensor: {culprit}. Lower optimizer.lr, "
            "set training.grad_clip, or set training.on_nonfinite=skip|continue")

    def checkpoint_or_stop_mid_epoch(self, lockstep: bool) -> None:
        """Save every ``checkpoint_every_steps`` steps; on SIGTERM/SIGUSR1 save and raise ``Preempted``.

        Ranks that train in lockstep agree on the stop every ``stop_check_every`` steps (one small
        all-reduce, no host sync per step), so they all save at the same step.
        """
        training = self.config.training
        stop = self.stop_signal
        if lockstep:
            if self.step % training.stop_check_every != 0:
                stop = None
            else:
                flag = torch.tensor([self.stop_signal or 0], dtype=torch.int64, device=self.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop = int(flag) or None
        every = training.checkpoint_every_steps
        if stop is None and not (every and self.step % every == 0):
            return
        path = self.save()
        if stop is not None:
            if self.dist is not None and lockstep:
                torch.distributed.barrier()  # every rank's file is written before any rank leaves
            raise Preempted(stop, self.step, path)

    def train_stage(self, span: StageSpan) -> None:
        """dense, finetune and sgap stages (and the fine-tuning tail of pgap)."""
        training = self.config.training
        for epoch in range(self.epoch, span.end_epoch):
            segment = span.segment_at(epoch)
            self.prepare_optimizer(span, segment, epoch)
            loss, lr = self.train_epoch(span, segment, epoch)
            self.epoch = epoch + 1
            stage_epoch = self.epoch - span.start_epoch
            last = self.epoch == span.end_epoch
            if last:
                self.apply_due_events(span)  # events due when the stage's last step is done (e.g. GMP's last prune)
            if self.is_main and (last or stage_epoch % training.eval_every == 0):
                entry = self.record(span.kind, stage_epoch, lr, loss)
                self.log(f"stage {span.index} {span.kind} epoch {stage_epoch}/{span.epochs}: train loss {loss:.4f}, "
                         f"test {self.task.format_primary(entry[self.task.primary_key()])}, "
                         f"sparsity {entry['sparsity']:.4f}")
            if self.is_main and training.keep_last_models:
                self.save_epoch_model()
            if not last and stage_epoch % training.checkpoint_every == 0:
                self.save()
        self.end_stage(span)

    def save_epoch_model(self) -> None:
        """``models/epoch_NNNN.pt`` (a plain state dict) at this epoch's end; only the newest
        ``training.keep_last_models`` of this run's epoch models are kept (``sparsetrain average`` input)."""
        folder = self.dir / EPOCH_MODELS
        atomic_torch_save(self.model.state_dict(), folder / f"epoch_{self.epoch:04d}.pt")
        for stale in sorted(folder.glob("epoch_*.pt"))[:-self.config.training.keep_last_models]:
            stale.unlink()

    def end_stage(self, span: StageSpan) -> None:
        """Apply the events due at the end of ``span`` (none left if its last epoch applied them), move the
        position to the next stage and checkpoint it. Every stage ends here, trained or not."""
        self.apply_due_events(span)
        self.stage_index += 1
        self.save()

    def setup_data_parallel(self, group: Any = None) -> None:
        """Under torchrun without a P-GaP stage: wrap the model in DistributedDataParallel over every rank.

        P-GaP with g > 1 processes per worker calls it with ``group``, the process group of one worker's
        g ranks, at the start of its rounds (DDP inside the group only; ``self.ddp`` is dropped after them).
        """
        if self.dist is None or (group is None and any(trains_with_workers(span.kind) for span in self.timeline.stages)):
            return
        world = self.dist.world_size if group is None else torch.distributed.get_world_size(group)
        ranks = (f"WORLD_SIZE={world}" if group is None
                 else f"{world} processes per P-GaP worker (WORLD_SIZE={self.dist.world_size})")
        problem = data_parallel_error(self.config, world, ranks)  # preflight checked it already; a direct call too
        if problem is not None:
            raise UserError(problem)
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        sync = self.config.distributed.sync_batchnorm
        if has_batchnorm and (sync == "on" or (sync == "auto" and self.device.type == "cuda")):
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model, group)  # parameters are the same objects
        elif has_batchnorm:
            self.log(f"note: BatchNorm statistics are computed per rank ({world} ranks); "
                     "SyncBatchNorm needs CUDA (distributed.sync_batchnorm)")
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids, process_group=group)
        self.log(f"data parallel over {world} processes{' per P-GaP worker' if group is not None else ''}: global "
                 f"batch {self.config.data.batch_size}")

    def run(self) -> RunResult | None:
        for span in self.timeline.stages[self.stage_index:]:
            if not method_for(span.kind).TRAINS:  # a one-shot mask event
                self.end_stage(span)
            elif trains_with_workers(span.kind):  # P-GaP: kappa workers per round, then a merge
                train_pgap_stage(self, span)
                if not self.is_main:
                    return None
            else:
                self.train_stage(span)
        return self.finish() if self.is_main else None

    def finish(self) -> RunResult:
        masks = self.sparsifier.masks if self.sparsifier else None
        final = self.history[-1]
        best = self.best_record() or final
        atomic_torch_save(self.model.state_dict(), self.dir / "model_final.pt")
        if masks is not None:
            write_layer_csv(self.dir / "sparsity" / "final.csv", masks)
        summary = {"final": final, "best": best, "model_numel": self.model_numel,
                   "target_numel": masks.numel() if masks else None,
                   "sparsity": masks.sparsity() if masks else 0.0, "wall_time_s": round(self.elapsed(), 3),
                   "train_flops": self.train_flops,
                   "dense_train_flops_per_example": TRAINING_PASSES * sum(self.forward_flops),
                   "primary": self.task.primary()}
        figures = self.task.write_figures(self.model, self.dir, self.device)
        if figures:
            summary["figures"] = figures
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2))
        return RunResult(self.dir, self.model, masks, final, best)


def set_bn_momentum(model: nn.Module, schedule: Any, segment_epoch: int) -> float:
    """Set every BatchNorm's momentum for epoch ``segment_epoch`` of a segment (``training.bn_momentum``)."""
    momentum = max(schedule.initial * schedule.decay ** (segment_epoch // schedule.every), schedule.minimum)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    return momentum


def _grouped(batches: Any, sizes: list[int]) -> Any:
    """``batches`` in consecutive lists of ``sizes[0]``, ``sizes[1]``, ... items (a step's micro-batches)."""
    iterator = iter(batches)
    for size in sizes:
        yield [next(iterator) for _ in range(size)]


def loss_read_interval(device: torch.device, stop_check_every: int) -> int:
    """Optimizer steps between two reads of the training loss: 1 on the CPU (a read costs nothing
    there), else ``training.stop_check_every`` (each read waits for the accelerator's queue)."""
    return 1 if device.type == "cpu" else stop_check_every


def _first_nonfinite(inputs: torch.Tensor | None, model: nn.Module) -> str:
    """Where a NaN/inf first shows: the input batch (when given), then parameters and buffers in
    ``state_dict`` order."""
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        return "the input batch (check the data)"
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{kind} {name!r}"
    return "none (inputs, parameters and buffers are finite: the loss itself overflowed)"


class _LogLines:
    """The run's log: each line to ``log`` (stdout by default) and appended to the run's log file.

    If the reader of stdout goes away (``sparsetrain run ... | head``), training goes on and the
    lines go to the log file only; the run still ends with its final files and exit status.
    """

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path, self.log, self.reader_gone = path, log, False

    def __call__(self, line: str) -> None:
        if self.path.parent.is_dir():
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.reader_gone:
            return
        try:
            self.log(line)
        except BrokenPipeError:
            self.reader_gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # later flushes go nowhere


@contextlib.contextmanager
def _stop_signals_recorded(state: _Run):
    """While training, SIGTERM and SIGUSR1 only set ``state.stop_signal``; the loop checkpoints and stops.

    Cluster schedulers send one of them some time before they kill a job. Outside the main
    thread (where Python cannot install handlers) the signals keep their default behaviour.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def record(signum: int, frame: Any) -> None:
        state.stop_signal = signum  # nothing else here: a handler may interrupt a print or a file write

    previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(config: RunConfig, resume: bool = False, log: Callable[[str], None] = print, *,
        overwrite: bool = False) -> RunResult | None:
    """Train ``config`` in ``config.run_dir()``; with ``resume``, continue from its checkpoint.

    The directory must be missing, empty or a run directory (see :mod:`.run_dir`): a previous run
    there is replaced only with ``overwrite``, and a directory holding files sparsetrain did not
    write is refused (``UserError``) before anything is written.

    Under torchrun (WORLD_SIZE > 1) only P-GaP stages use the extra processes; rank 0 writes every
    file and returns the result, other ranks return None after the last merge.
    """
    check_loggers(config.training.loggers)  # a logger whose package is missing: refused before anything is written
    if resume or os.environ.get("RANK", "0") == "0":  # other ranks would see the marker rank 0 writes
        check_run_dir(config, resume, overwrite)  # refuse before the data loads and anything is logged
    state = _Run(config, _LogLines(config.run_dir() / LOG_FILE, log))
    state.dist = init_from_environment(state.device)
    if not state.is_main:
        state.log = lambda line: None
    state.setup_data_parallel()
    if state.is_main:
        prepare_run_dir(config, resume, overwrite)
        if config.training.loggers != ["jsonl"]:
            state.metric_loggers = MetricLoggers(config.training.loggers, state.dir, config.name,
                                                 config.model_dump(mode="json"))
    if resume:
        if not ((state.dir / CHECKPOINT).is_file() or (state.dir / RANK_MANIFEST).is_file()):
            raise CheckpointError(f"cannot resume: {str(state.dir / CHECKPOINT)!r} does not exist")
        state.restore()
    elif state.is_main:
        atomic_write(state.dir / "config.yaml", dump_config(config))
        record = timeline_record(state.timeline, config, [t.shape for t in state.targets])
        record["kept_dense"] = [{"name": name, "why": why} for name, why in state.kept_dense]
        atomic_write(state.dir / TIMELINE_FILE, json.dumps(record, indent=2) + "\n")
        for name in ("metrics.jsonl", "events.jsonl"):
            atomic_write(state.dir / name, "")
    try:
        with _stop_signals_recorded(state):
            result = state.run()
        if state.dist is not None:
            # Every rank waits for rank 0 (its final files; after P-GaP, its fine-tuning) before the
            # process group is torn down: a rank leaving early can abort gloo's connections.
            torch.distributed.barrier()
        return result
    finally:
        release_loaders()  # data.persistent_workers: the workers end with the run
        if state.metric_loggers is not None:
            state.metric_loggers.close()
        if state.dist is not None:
            # DDP's reducer holds the process group inside reference cycles (autograd hooks); left to
            # the garbage collector, gloo's threads could be torn down during interpreter shutdown,
            # which aborts the process ("terminate called without an active exception").
            state.ddp = None
            gc.collect()
            shutdown_process_group()
