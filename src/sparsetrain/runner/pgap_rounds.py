"""P-GaP's rounds: kappa workers each grow one partition on a copy of the merged model, then a merge.

A round starts from the merged model and masks. Worker ``w`` loads them, grows partition ``w``
dense, and trains ``epochs_per_step`` epochs with its own RNG and data stream (seeded by
(seed, stage, round, worker)); what it contributes to the merge is the state-dict entries its
partition owns (entries no partition owns come from worker 0). The merge loads the merged state,
overwrites it with every contribution, restores the round's masks and lets the stage's next mask
event prune every partition back to the target. Then rank 0 (or the single process) fine-tunes.

Without torchrun the workers run one after another in this process; under torchrun with
``WORLD_SIZE`` = kappa * g the ranks form kappa groups of g consecutive ranks (:func:`.distributed.
pgap_worker_groups`) and group ``i`` is worker ``i``. With g = 1 each rank is one worker; with g > 1
the group's ranks train their worker with DistributedDataParallel over the group's own process group,
each rank taking its share of every global batch of the worker's data stream
(``step_micro_batches(epoch, stream, rank_in_group, g)``), gradients all-reduced inside the group
only. The merge is a broadcast of each partition's tensors from its group's leader (rank ``i * g``)
to every rank. All layouts give the same masks and the same merged model, because each worker's RNG
and data order depend only on its seeds: bit for bit with g = 1, within float tolerance with g > 1
(the gradient all-reduce sums in a different order). After each merge the RNG is reseeded from
(seed, stage, round), so the fine-tuning draws the same either way. The fine-tuning after the rounds
runs on rank 0 alone (without DDP); the other ranks wait for it.

The round in progress is checkpointed as :class:`RoundState`, so a run stopped between or inside
workers resumes exactly; under torchrun mid-round checkpoints are per global rank
(``checkpoint.rankR.pt``, R = 0 .. kappa*g - 1) and resume with the same ``WORLD_SIZE``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..data.batching import derived_seed
from ..sparsity.partitions import ownership
from .components import seed_everything
from .distributed import (
    WorkerGroups,
    broadcast_merge_,
    check_same_on_all_ranks,
    pgap_worker_groups,
)
from .timeline import Segment, StageSpan

if TYPE_CHECKING:
    from .train import _Run


@dataclass
class RoundState:
    """One P-GaP round in progress.

    ``worker`` is the next worker to train here (the workers before it have contributed);
    ``merged`` and ``masks`` are the model state and mask state the round started from;
    ``contributions[w]`` the state-dict entries worker ``w``'s partition owns after its training;
    ``train_flops_before`` the run's training FLOPs when the round started.
    """

    round: int
    worker: int
    merged: dict[str, torch.Tensor]
    masks: dict[str, Any]
    contributions: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    train_flops_before: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Plain containers of tensors (checkpoints load with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> RoundState | None:
        if state is None:
            return None
        return cls(state["round"], state["worker"], state["merged"], state["masks"],
                   dict(state.get("contributions", {})), state.get("train_flops_before", 0.0))


def train_pgap_stage(run: _Run, span: StageSpan) -> None:
    """Every remaining round of ``span`` (from the run's position), then its fine-tuning on rank 0."""
    layout = span.gap
    assert layout is not None
    per_round = layout.epochs_per_step
    owners = ownership(list(run.model.state_dict()), span.partitions, model=run.model)
    owners = {key: 0 if owner is None else owner for key, owner in owners.items()}
    groups = pgap_worker_groups(run.dist, layout.kappa) if run.dist is not None else None
    workers = [groups.worker] if groups is not None else list(range(layout.kappa))
    first_round = (run.epoch - span.start_epoch) // per_round
    model = run.model  # setup_data_parallel may swap in a SyncBatchNorm copy tied to the group
    if groups is not None and groups.size > 1 and first_round < layout.rounds:
        run.setup_data_parallel(groups.group)  # DDP over this worker's g ranks (they hold the same model here)
    try:
        _train_rounds(run, span, groups, workers, first_round, owners)
    finally:
        # The fine-tuning (rank 0 alone) and later stages train without the group: no DDP, and plain BatchNorm
        # (a SyncBatchNorm of the group would wait for ranks that have left). Parameters and buffers are shared.
        run.model, run.ddp, run.compiled = model, None, None
    if run.dist is not None and not run.dist.is_main:
        return  # rank 0 alone fine-tunes the merged model
    run.train_stage(span)


def _train_rounds(run: _Run, span: StageSpan, groups: WorkerGroups | None, workers: list[int], first_round: int,
                  owners: dict[str, int]) -> None:
    """Rounds ``first_round ..`` of ``span``: this process's ``workers`` train, then every round merges."""
    layout = span.gap
    assert layout is not None
    per_round = layout.epochs_per_step
    spe = run.timeline.steps_per_epoch
    for round_index in range(first_round, layout.rounds):
        round_start = span.start_epoch + round_index * per_round
        segment = Segment(round_start, per_round)
        run.apply_due_events(span)
        if run.pgap is None:
            run.pgap = RoundState(round_index, workers[0], _clone(run.model.state_dict()), run.masks().state_dict(),
                                  train_flops_before=run.train_flops)
        for worker in workers:
            if worker < run.pgap.worker:
                continue
            if run.step == round_start * spe:  # a worker's start: the merged model, its partition grown
                _start_worker(run, span, round_index, worker)
            for epoch in range(run.epoch, round_start + per_round):
                run.prepare_optimizer(span, segment, epoch)
                loss, _ = run.train_epoch(span, segment, epoch, stream=1 + worker)
                if groups is not None and groups.size > 1:
                    loss = _group_mean_loss(run, groups)
                run.epoch = epoch + 1
                run.log(f"stage {span.index} round {round_index + 1} worker {worker} (grows P{worker + 1}) "
                        f"epoch {run.epoch - round_start}/{per_round}: train loss {loss:.4f}")
                if run.dist is None and run.epoch < round_start + per_round:
                    run.save()
            state = run.model.state_dict()
            run.pgap.contributions[worker] = _clone({k: v for k, v in state.items() if owners[k] == worker})
            run.pgap.worker = worker + 1
            run.epoch, run.step = round_start, round_start * spe
            if run.dist is None:
                run.save()
        _merge(run, span, round_index, owners, groups)
        # What trains next (the next round's workers reseed; the fine-tuning does not) draws from an RNG that
        # depends on (seed, stage, round) only, not on which worker this process simulated last.
        seed_everything(derived_seed(run.config.seed, span.index, round_index, layout.kappa))
        run.epoch = round_start + per_round
        run.step = run.epoch * spe
        run.apply_due_events(span)  # the merge's prune: every partition back to the target
        if run.dist is not None:
            check_same_on_all_ranks(run.masks().checksum(), "mask checksum after the P-GaP merge", run.device)
        run.save()


def _group_mean_loss(run: _Run, groups: WorkerGroups) -> float:
    """The epoch's mean training loss over the examples of every rank of this worker's group (what the
    single process logs); each rank's ``epoch_loss`` covers its own share of the batches only."""
    total, seen = run.epoch_loss
    pair = torch.tensor([float(total), float(seen)], dtype=torch.float64, device=run.device)
    torch.distributed.all_reduce(pair, group=groups.group)
    return float(pair[0]) / max(float(pair[1]), 1.0)


def _start_worker(run: _Run, span: StageSpan, round_index: int, worker: int) -> None:
    assert run.pgap is not None
    run.model.load_state_dict(run.pgap.merged)
    masks = run.masks()
    masks.load_state_dict(run.pgap.masks)
    masks.grow_(span.partitions[worker].target_indices)
    run.masks_changed()
    seed_everything(derived_seed(run.config.seed, span.index, round_index, worker))


def _merge(run: _Run, span: StageSpan, round_index: int, owners: dict[str, int],
           groups: WorkerGroups | None) -> None:
    """The round's merged model and masks in ``run``; under torchrun (``groups``) also the round's FLOPs of
    every worker.

    ``owners`` maps each state-dict key to the worker whose partition owns it; under torchrun
    (``WORLD_SIZE`` = kappa * g) the key is broadcast from that worker's group leader.
    """
    assert run.pgap is not None and span.gap is not None
    if groups is not None:  # every worker's training counts, as when they run one after another
        before = run.pgap.train_flops_before
        # Each rank of a group counts its worker's whole global batches: only the leader reports them.
        mine = run.train_flops - before if groups.is_leader else 0.0
        round_flops = torch.tensor([mine], dtype=torch.float64)
        torch.distributed.all_reduce(round_flops)
        run.train_flops = before + float(round_flops)
    merged = dict(run.pgap.merged)
    for contribution in run.pgap.contributions.values():
        merged.update(contribution)
    run.model.load_state_dict(merged)
    if groups is not None:
        assert run.dist is not None
        sources = {key: groups.leader(worker) for key, worker in owners.items()}
        sent = broadcast_merge_(run.model.state_dict(), sources, run.dist.rank)
        run.log(f"stage {span.index} round {round_index + 1} merge: rank {run.dist.rank} sent "
                f"{sent / 2**20:.2f} MiB (its partition{' and the orphans' if run.dist.rank == 0 else ''})")
    run.masks().load_state_dict(run.pgap.masks)
    run.pgap = None


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
