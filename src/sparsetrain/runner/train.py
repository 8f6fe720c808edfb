"""One training run from a validated config, readable top to bottom.

``run(config)`` lays the run out as a timeline (stages, optimizer segments, mask events), then
walks it. Mask events are applied in schedule order, exactly once each (``events_applied`` counts
them and is checkpointed), at the start of the epoch whose first step they are due at. Between
events, ``Sparsifier.step(optimizer)`` keeps the masks fixed after every optimizer step. A new
segment (a new training stage, or a GaP step with ``reset_optimizer``) gets a fresh optimizer
and restarts its LR schedule, warm-up included.

P-GaP trains kappa worker copies per round: one after another in this process, or one per rank
under torchrun (``WORLD_SIZE`` = kappa). Both give the same merged model: each worker's RNG and
data order are seeded by (seed, stage, round, worker).

Outputs in the run directory: ``config.yaml``, ``metrics.jsonl`` (one line per evaluation),
``events.jsonl`` and ``sparsity/*.csv`` (one per mask event), ``checkpoint.pt`` (atomic),
``model_final.pt`` / ``model_best.pt`` (plain state dicts with zeros), ``summary.json``.

Exact resume: the LR is a pure function of the position in the segment, data order depends only
on (seed, epoch, stream), and the checkpoint holds model, optimizer, masks, grad scaler, P-GaP
round state and every RNG state, so ``run(config, resume=True)`` after a kill ends with the same
weights as an uninterrupted run (same machine, same thread count).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import GaPStage, RunConfig, dump_config
from ..methods import MaskEvent, apply_dst_event, apply_gap_event, apply_prune_event
from ..sparsity import MaskSet, Sparsifier, global_counts, select_targets
from ..sparsity.partitions import ownership, partition_targets
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
from .components import (
    autocast_context,
    build_lr_schedule,
    build_optimizer,
    derived_seed,
    epoch_batches,
    epoch_loader,
    parse_selectors,
    resolve_device,
    seed_everything,
    steps_per_epoch,
)
from .distributed import (
    DistContext,
    broadcast_masks_,
    broadcast_merge_,
    check_same_on_all_ranks,
    init_from_environment,
    shutdown_process_group,
)
from .lr_schedules import set_lr
from .flops import TRAINING_PASSES, target_forward_flops, training_flops_per_example
from .outputs import append_jsonl, rewrite_jsonl, write_gpmt_reference_files, write_layer_csv
from .run_dir import check_run_dir, prepare_run_dir
from .timeline import Segment, StageSpan, Timeline, build_timeline
from ..atomic import atomic_write
from ..errors import UserError

CHECKPOINT = "checkpoint.pt"


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
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.task = build_task(config.task)
        self.model = self.task.build_model().to(self.device)
        if config.init.checkpoint:
            load_model_weights(self.model, config.init.checkpoint)
        self.include = parse_selectors(config.targets.include)
        self.exclude = parse_selectors(config.targets.exclude)
        self.targets = select_targets(self.model, self.include, self.exclude)
        self.model_numel = parameter_count(self.model)
        self.forward_flops = target_forward_flops(self.model, self.targets, self.task.train_set[0][0])
        self.timeline = resolve_timeline(config, self.targets, len(self.task.train_set))
        from .preflight import check_run; check_run(config, self.targets, self.timeline)  # noqa: E702 (no data needed)
        self.dist: DistContext | None = None
        self.ddp: nn.Module | None = None  # the DistributedDataParallel wrapper, when data-parallel
        self.eval_loader = DataLoader(self.task.test_set, batch_size=config.data.eval_batch_size)
        self.sparsifier: Sparsifier | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending_optimizer_state: dict | None = None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.training.amp == "fp16")
        self.stage_index, self.epoch, self.step, self.events_applied = 0, 0, 0, 0
        self.pgap: dict[str, Any] | None = None
        self.train_flops = 0.0
        self.flops_per_example = training_flops_per_example(self.forward_flops, None)
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.started = time.perf_counter()

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    # ---- persistence ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def save(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.dir / CHECKPOINT, {
            "fingerprint": self.config.fingerprint(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scaler": self.scaler.state_dict(),
            "sparsifier": self.sparsifier.state_dict() if self.sparsifier else None,
            "position": {"stage": self.stage_index, "epoch": self.epoch, "step": self.step,
                         "events_applied": self.events_applied},
            "pgap": self.pgap,
            "train_flops": self.train_flops,
            "history": self.history, "events": self.events, "elapsed": self.elapsed(), "rng": rng_state(),
        })

    def restore(self) -> None:
        state = load_checkpoint(self.dir / CHECKPOINT, self.config.fingerprint())
        self.model.load_state_dict(state["model"])
        position = state["position"]
        self.stage_index, self.epoch, self.step = position["stage"], position["epoch"], position["step"]
        self.events_applied = position["events_applied"]
        if state["sparsifier"] is not None:
            self.masks().load_state_dict(state["sparsifier"]["masks"])
        self.pending_optimizer_state = state["optimizer"]
        self.scaler.load_state_dict(state["scaler"])
        self.pgap = state["pgap"]
        self.train_flops = state["train_flops"]
        self.flops_per_example = training_flops_per_example(
            self.forward_flops, self.sparsifier.masks if self.sparsifier else None)
        self.history, self.events, self.elapsed_before = state["history"], state["events"], state["elapsed"]
        if self.is_main:  # drop what was logged after the checkpoint
            rewrite_jsonl(self.dir / "metrics.jsonl", self.history)
            rewrite_jsonl(self.dir / "events.jsonl", self.events)
        restore_rng_state(state["rng"])
        self.log(f"resumed {self.dir} at stage {self.stage_index}, epoch {self.epoch}, step {self.step}")

    # ---- measurements --------------------------------------------------------------------------
    def masks(self) -> MaskSet:
        """The masks in force, created dense on first use."""
        if self.sparsifier is None:
            self.sparsifier = Sparsifier(self.model, MaskSet(self.targets, model_numel=self.model_numel))
        return self.sparsifier.masks

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
                 "train_flops": self.train_flops, "time_s": round(self.elapsed(), 3)}
        self.history.append(entry)
        append_jsonl(self.dir / "metrics.jsonl", entry)
        if entry is self.best_record():
            atomic_torch_save(self.model.state_dict(), self.dir / "model_best.pt")
        return entry

    def best_record(self) -> dict[str, Any] | None:
        """Best test top-1 among evaluations under the run's final masks (after its last mask event)."""
        total_events = len(self.timeline.schedule.events())
        candidates = [h for h in self.history if h["events_applied"] == total_events]
        return max(candidates, key=lambda h: h["test_top1"]) if candidates else None

    # ---- mask events ---------------------------------------------------------------------------
    def apply_due_events(self, span: StageSpan, after_backward: bool = False) -> None:
        """Apply, in order, every not yet applied event of this stage due at ``self.step`` in this phase."""
        schedule = self.timeline.schedule.events()
        while self.events_applied < len(schedule):
            event = schedule[self.events_applied]
            if event.stage != span.index or event.step != self.step or event.after_backward != after_backward:
                break
            self.apply_event(span, event)

    def next_event_step(self) -> int | None:
        schedule = self.timeline.schedule.events()
        return schedule[self.events_applied].step if self.events_applied < len(schedule) else None

    def apply_event(self, span: StageSpan, event: MaskEvent) -> None:
        before = self.history[-1]["test_top1"] if self.history else None
        gp_counts = None
        if event.kind == "prune":
            if event.method == "gpmt":  # the reference code's stage 1 log holds plain GP counts
                gp_counts = global_counts([t.param.detach() for t in self.targets], event.sparsity,
                                          [t.name for t in self.targets])
            self.sparsifier = Sparsifier(self.model, apply_prune_event(event, self.model, self.include, self.exclude))
        elif event.kind in ("dst_init", "set_update", "rigl_update"):
            apply_dst_event(event, self.masks())
        else:
            apply_gap_event(event, self.masks(), [p.target_indices for p in span.partitions])
        masks = self.masks()
        if self.dist is not None:  # masks are computed on every rank; make sure they agree
            if self.config.distributed.masks == "broadcast":
                broadcast_masks_(masks.masks)
                masks.apply_()
            check_same_on_all_ranks(masks.checksum(), f"mask checksum after {event.kind} at step {self.step}",
                                    self.device)
        if self.optimizer is not None and not event.resets_optimizer:
            masks.mask_optimizer_state_(self.optimizer)
        self.events_applied += 1
        self.flops_per_example = training_flops_per_example(self.forward_flops, masks)
        if not self.is_main:
            return
        csv_name = f"sparsity/step{self.step:08d}_{self.events_applied:03d}_{event.kind}.csv"
        write_layer_csv(self.dir / csv_name, masks)
        entry = {"step": self.step, "epoch": self.epoch, "stage": span.index, "kind": event.kind,
                 "label": event.label, "sparsity": masks.sparsity(), "csv": csv_name}
        self.events.append(entry)
        append_jsonl(self.dir / "events.jsonl", entry)
        # Evaluate after the events that change the model's sparsity pattern wholesale, not after
        # the frequent ones (GMP's steps, SET/RigL updates) or P-GaP's bookkeeping.
        if event.kind in ("pgap_round", "set_update", "rigl_update") or span.kind == "gmp":
            return
        after = self.record(span.kind, self.epoch - span.start_epoch, 0.0, None)
        if gp_counts is not None:
            write_gpmt_reference_files(self.dir / "gpmt_reference", masks, gp_counts, before, after["test_top1"])
        self.log(f"stage {span.index} {event.kind} {event.label}: sparsity {masks.sparsity():.4f}, "
                 f"top-1 right after {after['test_top1']:.2f}%")

    # ---- training ------------------------------------------------------------------------------
    def prepare_optimizer(self, span: StageSpan, segment: Segment, epoch: int) -> None:
        """A fresh optimizer at a segment's first epoch; otherwise keep it (or restore it after resume)."""
        if epoch == segment.start_epoch or self.optimizer is None:
            assert span.optimizer is not None
            self.optimizer = build_optimizer(self.model, span.optimizer)
            if self.pending_optimizer_state is not None and epoch != segment.start_epoch:
                self.optimizer.load_state_dict(self.pending_optimizer_state)
        self.pending_optimizer_state = None

    def train_epoch(self, span: StageSpan, segment: Segment, epoch: int, stream: int = 0) -> tuple[float, float]:
        """One epoch of optimizer steps; returns (mean training loss, last LR)."""
        assert span.lr_schedule is not None and span.optimizer is not None and self.optimizer is not None
        schedule = build_lr_schedule(span.lr_schedule, span.optimizer.lr, segment.epochs, self.timeline.steps_per_epoch)
        per_iteration = span.lr_schedule.unit == "iteration"
        segment_start_step = segment.start_epoch * self.timeline.steps_per_epoch
        training = self.config.training
        autocast = autocast_context(training.amp, self.device)
        rank, world = (self.dist.rank, self.dist.world_size) if self.ddp is not None else (0, 1)
        shards, global_sizes = epoch_batches(len(self.task.train_set), self.config.data, self.config.seed, epoch,
                                             stream, rank, world)
        loader = epoch_loader(self.task.train_set, self.config.data, shards)
        batches = _progress(loader, f"stage {span.index} {span.kind} epoch {epoch - span.start_epoch + 1}/{span.epochs}",
                            training.progress and self.is_main)
        network = self.ddp if self.ddp is not None else self.model
        self.model.train()
        loss_sum, seen, lr = 0.0, 0, 0.0
        for (inputs, labels), global_size in zip(batches, global_sizes):
            if self.next_event_step() == self.step:
                self.apply_due_events(span)
            lr = schedule.lr_at(self.step - segment_start_step if per_iteration else epoch - segment.start_epoch)
            set_lr(self.optimizer, lr)
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            with autocast:
                loss = self.task.loss(network(inputs), labels, training.label_smoothing)
            # DDP averages gradients over ranks; weighting each rank's mean by its share of the global
            # batch makes that average the gradient of the global batch's mean, even for uneven shards.
            share = labels.numel() * world / global_size
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss * share if world > 1 else loss).backward()
            if self.next_event_step() == self.step:
                self.apply_due_events(span, after_backward=True)  # e.g. RigL, which needs this step's gradients
            if training.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.sparsifier is not None:
                self.sparsifier.step(self.optimizer)
            self.step += 1
            self.train_flops += self.flops_per_example * global_size
            loss_value = float(loss.detach())
            loss_sum += loss_value * labels.numel()
            seen += labels.numel()
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}", sparsity=f"{self.sparsity()[0]:.3f}")
        return loss_sum / max(seen, 1), lr

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
                         f"test top-1 {entry['test_top1']:.2f}%, sparsity {entry['sparsity']:.4f}")
            if last:
                self.stage_index += 1
            if last or stage_epoch % training.checkpoint_every == 0:
                self.save()

    def train_pgap_stage(self, span: StageSpan) -> None:
        """P-GaP rounds: every worker grows its partition on a copy of the merged model, then merge."""
        layout = span.gap
        assert layout is not None
        per_round = layout.epochs_per_step
        owners = ownership(list(self.model.state_dict()), span.partitions)
        owners = {key: 0 if owner is None else owner for key, owner in owners.items()}
        if self.dist is not None and self.dist.world_size != layout.kappa:
            raise UserError(f"P-GaP with kappa={layout.kappa} needs {layout.kappa} processes, got "
                             f"WORLD_SIZE={self.dist.world_size}")
        workers = [self.dist.rank] if self.dist is not None else list(range(layout.kappa))
        first_round = (self.epoch - span.start_epoch) // per_round
        for round_index in range(first_round, layout.rounds):
            round_start = span.start_epoch + round_index * per_round
            segment = Segment(round_start, per_round)
            self.apply_due_events(span)
            if self.pgap is None:
                self.pgap = {"round": round_index, "worker": workers[0], "merged": _clone(self.model.state_dict()),
                             "masks": self.masks().state_dict(), "contributions": {}}
            for worker in workers:
                if worker < self.pgap["worker"]:
                    continue
                if self.epoch == round_start:  # a worker starts from the merged model with its partition grown
                    self.model.load_state_dict(self.pgap["merged"])
                    self.masks().load_state_dict(self.pgap["masks"])
                    self.masks().grow_(span.partitions[worker].target_indices)
                    self.flops_per_example = training_flops_per_example(self.forward_flops, self.masks())
                    seed_everything(derived_seed(self.config.seed, span.index, round_index, worker))
                for epoch in range(self.epoch, round_start + per_round):
                    self.prepare_optimizer(span, segment, epoch)
                    loss, _ = self.train_epoch(span, segment, epoch, stream=1 + worker)
                    self.epoch = epoch + 1
                    self.log(f"stage {span.index} round {round_index + 1} worker {worker} (grows P{worker + 1}) "
                             f"epoch {self.epoch - round_start}/{per_round}: train loss {loss:.4f}")
                    if self.dist is None and self.epoch < round_start + per_round:
                        self.save()
                state = self.model.state_dict()
                self.pgap["contributions"][worker] = _clone({k: v for k, v in state.items() if owners[k] == worker})
                self.pgap["worker"] = worker + 1
                self.epoch, self.step = round_start, round_start * self.timeline.steps_per_epoch
                if self.dist is None:
                    self.save()
            merged = dict(self.pgap["merged"])
            for contribution in self.pgap["contributions"].values():
                merged.update(contribution)
            self.model.load_state_dict(merged)
            if self.dist is not None:
                sent = broadcast_merge_(self.model.state_dict(), owners, self.dist.rank)
                self.log(f"stage {span.index} round {round_index + 1} merge: rank {self.dist.rank} sent "
                         f"{sent / 2**20:.2f} MiB (its partition{' and the orphans' if self.dist.rank == 0 else ''})")
            self.masks().load_state_dict(self.pgap["masks"])
            self.pgap = None
            self.epoch = round_start + per_round
            self.step = self.epoch * self.timeline.steps_per_epoch
            self.apply_due_events(span)  # the merge: prune every partition back to the target
            if self.dist is not None:
                check_same_on_all_ranks(self.masks().checksum(), "mask checksum after the P-GaP merge", self.device)
            self.save()
        if self.dist is not None and not self.dist.is_main:
            return  # rank 0 alone fine-tunes the merged model
        self.train_stage(span)

    def setup_data_parallel(self) -> None:
        """Under torchrun without a P-GaP stage: wrap the model in DistributedDataParallel."""
        if self.dist is None or any(span.kind == "pgap" for span in self.timeline.stages):
            return
        world = self.dist.world_size
        if self.config.data.batch_size < world:
            raise UserError(f"data.batch_size={self.config.data.batch_size} is the global batch; it must be at "
                             f"least WORLD_SIZE={world}")
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        sync = self.config.distributed.sync_batchnorm
        if has_batchnorm and (sync == "on" or (sync == "auto" and self.device.type == "cuda")):
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # parameters are the same objects
        elif has_batchnorm:
            self.log(f"note: BatchNorm statistics are computed per rank ({world} ranks); "
                     "SyncBatchNorm needs CUDA (distributed.sync_batchnorm)")
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.log(f"data parallel over {world} processes: global batch {self.config.data.batch_size}")

    def run(self) -> RunResult | None:
        for span in self.timeline.stages[self.stage_index:]:
            if span.kind == "prune":
                self.apply_due_events(span)
                self.stage_index += 1
                self.save()
            elif span.kind == "pgap":
                self.train_pgap_stage(span)
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
                   "dense_train_flops_per_example": TRAINING_PASSES * sum(self.forward_flops)}
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2))
        return RunResult(self.dir, self.model, masks, final, best)


def resolve_timeline(config: RunConfig, targets, num_train_examples: int) -> Timeline:
    """The run's timeline with GaP partitions resolved against the model's targets; LR schedules checked."""
    partitions = {
        i: partition_targets(targets, stage.partitions.scheme, stage.partitions.kappa)
        for i, stage in enumerate(config.stages) if isinstance(stage, GaPStage)
    }
    spe = steps_per_epoch(num_train_examples, config.data.batch_size, config.data.drop_last)
    timeline = build_timeline(config, spe, partitions)
    for span in timeline.stages:  # a schedule that does not fit its segment fails before training
        for segment in span.segments:
            try:
                build_lr_schedule(span.lr_schedule, span.optimizer.lr, segment.epochs, spe)
            except ValueError as exc:
                raise UserError(f"stages.{span.index}.lr_schedule: {exc} ({segment.epochs} epochs of "
                                 f"{spe} steps)") from None
    return timeline


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _progress(loader: DataLoader, description: str, enabled: bool):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True)


def run(config: RunConfig, resume: bool = False, log: Callable[[str], None] = print, *,
        overwrite: bool = False) -> RunResult | None:
    """Train ``config`` in ``config.run_dir()``; with ``resume``, continue from its checkpoint.

    The directory must be missing, empty or a run directory (see :mod:`.run_dir`): a previous run
    there is replaced only with ``overwrite``, and a directory holding files sparsetrain did not
    write is refused (``UserError``) before anything is written.

    Under torchrun (WORLD_SIZE > 1) only P-GaP stages use the extra processes; rank 0 writes every
    file and returns the result, other ranks return None after the last merge.
    """
    if resume or os.environ.get("RANK", "0") == "0":  # other ranks would see the marker rank 0 writes
        check_run_dir(config, resume, overwrite)  # refuse before the data loads and anything is logged
    state = _Run(config, log)
    state.dist = init_from_environment(state.device)
    if not state.is_main:
        state.log = lambda line: None
    state.setup_data_parallel()
    if state.is_main:
        prepare_run_dir(config, resume, overwrite)
    if resume:
        if not (state.dir / CHECKPOINT).is_file():
            raise CheckpointError(f"cannot resume: {str(state.dir / CHECKPOINT)!r} does not exist")
        state.restore()
    elif state.is_main:
        atomic_write(state.dir / "config.yaml", dump_config(config))
        for name in ("metrics.jsonl", "events.jsonl"):
            atomic_write(state.dir / name, "")
    try:
        result = state.run()
        if state.dist is not None:
            # Every rank waits for rank 0 (its final files; after P-GaP, its fine-tuning) before the
            # process group is torn down: a rank leaving early can abort gloo's connections.
            torch.distributed.barrier()
        return result
    finally:
        if state.dist is not None:
            shutdown_process_group()
