"""``sparsetrain demo``: train a small ResNet on digits, prune it with GP and GPMT, fine-tune, compare.

Everything happens in :func:`run_demo`, top to bottom, in one plain training loop (no runner, no
config files; a later version will be built on the runner):

1. seed everything, load scikit-learn's 8x8 digits (embedded, nothing is downloaded);
2. train a dense :func:`~sparsetrain.models.small_resnet.small_resnet` with SGD + Nesterov
   momentum and a per-step cosine learning rate, and measure its top-1 on the test split;
3. for every sparsity and for GP and GPMT: copy the dense model, ``prune`` it, measure top-1 right
   after pruning, fine-tune with a fresh optimizer and ``Sparsifier.step(optimizer)`` after every
   ``optimizer.step()``, measure top-1 again, and check that exactly ``round(s * N)`` target
   weights are pruned and still zero;
4. print a table in the GaP paper's format, plus the per-layer tables of GP and GPMT at the highest
   sparsity, and (with ``out_dir``) write them to files, GPMT rows also in the reference code's
   file formats.

Why these defaults
------------------
- ``width=16`` (77,072 target weights), ``test_fraction=0.5`` (899 train / 898 test images),
  ``dense_epochs=5``, ``finetune_epochs=3``: on the default 70/30 split the dense model reaches
  about 98-98.5% and every pruned model recovers to within a test image or two of it, so the table
  cannot tell anything apart. Training on half the images for a few epochs puts the dense model
  at 96.4-97.9% (seeds 0-4), leaves room below it, and makes each test image worth 0.11%. The
  whole demo then takes a few seconds of CPU time.
- ``min_threshold=0.5`` (percent of all target weights, so the floor is
  ``m = floor(77,072 * 0.5 / 100) = 385`` weights per layer). On this model GP does *not* prune
  the small layers hardest: Kaiming fan-out initialisation gives the narrow layers the largest
  weights, so at 0.9 GP prunes the two big ``layer3`` convs to about 95-96% and the small layers
  only moderately. Over seeds 0-4 it keeps 80-97 of the stem's 144 weights, 307-327 of the
  512 of the ``layer2.0.downsample`` 1x1 conv and 374-403 of the fc's 640. The reference default
  MT of 0.05% would give ``m = 38`` here and never bind. With 0.5%, the stem (144 <= 385
  weights) stays fully dense, as the reference does for layers smaller than ``m``, and at both
  0.8 and 0.9 the downsample conv (GP keeps 350-372 of it at 0.8) is clamped to exactly 385
  kept weights, at 0.9 the fc too when GP leaves it about that many or fewer; the other layers
  give up the difference in proportion to their GP counts. The per-layer tables printed at the
  end name the layers the floor kept dense or clamped.
- ``threads=None`` leaves torch's thread count alone; the command line passes 1. On an idle
  2-core machine a second thread saves only about 20% here, while on a busy one multi-threaded
  small convolutions were seen to run ten times slower or worse; results are reproducible for a
  fixed thread count and may differ slightly between counts.

Accuracies are what was measured on the test split, one run, one seed. Over seeds 0-4 the
fine-tuned GP and GPMT models differ by -0.4 to +0.9 points, i.e. by a handful of test images:
this demo shows the mechanics (exact budgets, where the floor acts), it does not rank the methods.
Accuracy right after pruning at 0.9 is often near chance (10%): the BatchNorm statistics no
longer match the pruned convs until fine-tuning updates them.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .data.digits import load_digits_split
from .interop import gpmt_files
from .models.small_resnet import small_resnet
from .sparsity import MaskSet, Sparsifier, prune, select_targets
from .sparsity.budgets import count_for, max_min_threshold_sparsity, min_threshold_floor
from .sparsity.errors import check_sparsity

DEFAULT_SPARSITIES = (0.8, 0.9)
DEFAULT_MIN_THRESHOLD = 0.5  # percent of all target weights; see the module docstring
DEFAULT_DENSE_EPOCHS = 5
DEFAULT_FINETUNE_EPOCHS = 3
DEFAULT_WIDTH = 16
DEFAULT_TEST_FRACTION = 0.5

METHODS = ("gp", "gpmt")
BATCH_SIZE = 64
DENSE_LR = 0.1
FINETUNE_LR = 0.02
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

TABLE_COLUMNS = (
    "Model",
    "Method",
    "Partition",
    "Sparsity Ratio",
    "Sparsity Distribution",
    "Top-1 Accuracy",
    "Top-1 After Pruning",
    "Measured Sparsity",
)


@dataclass
class DemoRow:
    """One pruned model: accuracies in percent, counts over the target weights."""

    method: str
    sparsity: float
    distribution: str
    pruned: int
    numel: int
    accuracy_after_prune: float
    accuracy: float
    masks: MaskSet = field(repr=False)

    @property
    def measured_sparsity(self) -> float:
        return self.pruned / self.numel


@dataclass
class DemoResult:
    model_name: str
    dense_accuracy: float
    min_threshold: float
    floor: int
    rows: list[DemoRow]
    table: str
    layer_tables: str
    seconds: float
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)


# ---- small helpers the loop below uses ---------------------------------------------------------


def evaluate(model: nn.Module, dataset: TensorDataset) -> float:
    """Top-1 accuracy in percent over the whole dataset (one batch: it is 8x8 images)."""
    model.eval()
    inputs, labels = dataset.tensors
    with torch.no_grad():
        correct = (model(inputs).argmax(dim=1) == labels).sum().item()
    return 100.0 * correct / len(labels)


def train(
    model: nn.Module,
    dataset: TensorDataset,
    epochs: int,
    lr: float,
    seed: int,
    sparsifier: Sparsifier | None = None,
) -> float:
    """SGD + Nesterov momentum, cosine LR per step, fresh optimizer; returns the last epoch's mean loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    mean_loss = math.nan
    for _ in range(epochs):
        model.train()
        total, batches = 0.0, 0
        for inputs, labels in loader:
            loss = nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if sparsifier is not None:
                sparsifier.step(optimizer)  # re-zero pruned weights and their momentum
            scheduler.step()
            total, batches = total + loss.item(), batches + 1
        mean_loss = total / batches
    return mean_loss


def check_exact_sparsity(masks: MaskSet, sparsity: float, label: str) -> None:
    """Raise unless exactly ``round(s * N)`` target weights are masked and all of them are zero."""
    want = count_for(masks.numel(), sparsity)
    got = masks.pruned_count()
    if got != want:
        raise RuntimeError(
            f"{label}: {got} of {masks.numel()} target weights pruned, expected round({sparsity} * N) = {want}"
        )
    for target, mask in zip(masks.targets, masks.masks):
        alive = int(torch.count_nonzero(target.param.detach()[~mask]))
        if alive:
            raise RuntimeError(f"{label}: {alive} pruned weights of {target.name} are nonzero after fine-tuning")


def table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def sparsity_label(sparsity: float) -> str:
    return repr(float(sparsity))  # exact and file-name safe: 0.8 -> "0.8"


def write_layer_csv(path: Path, masks: MaskSet) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["layer", "shape", "numel", "kept", "pruned", "sparsity", "target_sparsity"])
        for r in masks.table():
            target = "" if r.target is None else repr(r.target)
            shape = "x".join(map(str, r.shape))
            writer.writerow([r.name, shape, r.numel, r.kept, r.numel - r.kept, repr(r.sparsity), target])


def floor_summary(masks: MaskSet, floor: int) -> str:
    """Which layers GPMT's floor kept dense (smaller than ``m``) or clamped to exactly ``m`` kept."""
    dense = [r.name for r in masks.table() if r.numel <= floor]
    clamped = [r.name for r in masks.table() if r.numel > floor and r.kept == floor]
    return (
        f"kept dense (at most {floor:,} weights): {', '.join(dense) or 'none'}\n"
        f"clamped to the floor ({floor:,} kept): {', '.join(clamped) or 'none'}"
    )


# ---- the demo ----------------------------------------------------------------------------------


def run_demo(
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    min_threshold: float = DEFAULT_MIN_THRESHOLD,
    dense_epochs: int = DEFAULT_DENSE_EPOCHS,
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS,
    width: int = DEFAULT_WIDTH,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    log: Callable[[str], object] = print,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DemoResult:
    """Train dense, prune with GP and GPMT at each of ``sparsities``, fine-tune, report (see module doc).

    ``min_threshold`` is GPMT's MT in percent of all target weights. ``out_dir`` (created if
    missing) receives ``results.md``, ``layer_sparsity_<method>_<s>.csv`` per row and, per GPMT
    row, ``gpmt_<s>/`` with the reference code's ``prune_log.csv`` (its stage 1, i.e. GP),
    ``layer_sparsities.csv``, ``prune_refined_log.csv`` and ``weight_mask.npy``, plus
    ``mask_list.pt`` (:func:`~sparsetrain.interop.gpmt_files.save_mask_list`). Bad arguments raise
    ``ValueError`` before any training.
    """
    started = time.perf_counter()
    # ---- validate everything up front, so a typo fails in milliseconds, not after training
    sparsities = [check_sparsity(s) for s in sparsities]
    if not sparsities:
        raise ValueError("sparsities is empty; give at least one sparsity in [0, 1)")
    if len(set(sparsities)) != len(sparsities):
        raise ValueError(f"sparsities={sparsities} lists a value twice")
    for name, value, low in (("dense_epochs", dense_epochs, 1), ("finetune_epochs", finetune_epochs, 0),
                             ("width", width, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be an integer >= 1")
    model = small_resnet(in_channels=1, num_classes=10, width=width)
    numels = [t.numel for t in select_targets(model)]
    floor = min_threshold_floor(sum(numels), min_threshold)  # validates min_threshold
    # Upper bound on what GPMT can reach whatever GP does: every layer above the floor pruned to it.
    reachable = max_min_threshold_sparsity(numels, numels, min_threshold)
    if max(sparsities) > reachable:
        raise ValueError(
            f"sparsity={max(sparsities)} is unreachable with min_threshold={min_threshold}% on this model "
            f"(every layer keeps at least {floor} weights): the highest reachable sparsity is {reachable:.4%}"
        )
    out = Path(out_dir) if out_dir is not None else None

    old_threads, old_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        # re-create the model after seeding, so its initial weights depend on `seed` only
        model = small_resnet(in_channels=1, num_classes=10, width=width)
        model_name = f"SmallResNet-w{width}"

        # ---- data
        split = load_digits_split(test_fraction=test_fraction, seed=seed)
        log(f"digits: {len(split.train)} train / {len(split.test)} test images; {model_name}: "
            f"{sum(numels):,} target weights in {len(numels)} conv/linear layers, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters; {torch.get_num_threads()} thread(s)")

        # ---- dense training
        loss = train(model, split.train, dense_epochs, DENSE_LR, seed)
        dense_accuracy = evaluate(model, split.test)
        log(f"dense: {dense_epochs} epochs, last-epoch loss {loss:.4f}, top-1 {dense_accuracy:.2f}%")

        # ---- prune + fine-tune, every (sparsity, method) from the same dense weights
        rows: list[DemoRow] = []
        for sparsity in sparsities:
            for method in METHODS:
                sparse_model = copy.deepcopy(model)
                mt = min_threshold if method == "gpmt" else None
                masks = prune(sparse_model, sparsity, method=method, min_threshold=mt)
                accuracy_after_prune = evaluate(sparse_model, split.test)
                sparsifier = Sparsifier(sparse_model, masks)
                # same data order for every fine-tune, so rows differ only by their masks
                train(sparse_model, split.train, finetune_epochs, FINETUNE_LR, seed + 1, sparsifier)
                accuracy = evaluate(sparse_model, split.test)
                check_exact_sparsity(masks, sparsity, f"{method} at sparsity {sparsity}")
                distribution = "Global" if method == "gp" else f"Global + MT {min_threshold:g}%"
                rows.append(DemoRow(method, sparsity, distribution, masks.pruned_count(), masks.numel(),
                                    accuracy_after_prune, accuracy, masks))
                log(f"{method:<4} s={sparsity:g}: pruned {masks.pruned_count():,}/{masks.numel():,}, "
                    f"top-1 {accuracy_after_prune:.2f}% after pruning -> {accuracy:.2f}% after "
                    f"{finetune_epochs} fine-tuning epochs")

        # ---- the results table, in the GaP paper's format plus two columns
        lines = [table_row(TABLE_COLUMNS), table_row(["---"] * len(TABLE_COLUMNS)),
                 table_row([model_name, "Dense", "-", "0", "-", f"{dense_accuracy:.2f}%", "-", "-"])]
        for r in rows:
            lines.append(table_row([
                model_name, r.method.upper(), "-", f"{r.sparsity:g}", r.distribution, f"{r.accuracy:.2f}%",
                f"{r.accuracy_after_prune:.2f}%", f"{r.measured_sparsity:.4%} ({r.pruned:,}/{r.numel:,})",
            ]))
        table = "\n".join(lines)

        # ---- per-layer tables at the highest sparsity: where GPMT's floor kicks in
        top = max(sparsities)
        parts = []
        for r in rows:
            if r.sparsity == top:
                parts.append(f"{r.method.upper()} ({r.distribution}) at sparsity {top:g}:\n{r.masks.format_table()}")
                if r.method == "gpmt":
                    formula = f"floor({sum(numels):,} * {min_threshold:g} / 100)"
                    parts.append(f"GPMT floor m = {formula} = {floor:,} weights\n" + floor_summary(r.masks, floor))
        layer_tables = "\n\n".join(parts)

        log("")
        log(table)
        log("")
        log(layer_tables)

        # ---- files
        files: list[Path] = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            settings = (f"digits ({len(split.train)} train / {len(split.test)} test), {dense_epochs} dense epochs, "
                        f"{finetune_epochs} fine-tuning epochs, seed {seed}, MT {min_threshold:g}% (m = {floor})")
            results = out / "results.md"
            results.write_text(f"# sparsetrain demo\n\n{settings}\n\n{table}\n\n```\n{layer_tables}\n```\n")
            files.append(results)
            gp_by_sparsity = {r.sparsity: r for r in rows if r.method == "gp"}
            for r in rows:
                csv_path = out / f"layer_sparsity_{r.method}_{sparsity_label(r.sparsity)}.csv"
                write_layer_csv(csv_path, r.masks)
                files.append(csv_path)
                if r.method != "gpmt":
                    continue
                # The GPMT reference code's files: stage 1 (plain GP) log, the MT-adjusted per-layer
                # sparsities, the stage 3 (final) log and the masks. Accuracies in percent, as there.
                ref = out / f"gpmt_{sparsity_label(r.sparsity)}"
                ref.mkdir(exist_ok=True)
                gp = gp_by_sparsity[r.sparsity]
                layer_numels = [t.numel for t in r.masks.targets]
                gp_pruned = [n - k for n, k in zip(layer_numels, gp.masks.kept_counts())]
                gpmt_pruned = [n - k for n, k in zip(layer_numels, r.masks.kept_counts())]
                gpmt_files.write_prune_log(ref / "prune_log.csv", layer_numels, gp_pruned,
                                           post_accuracy=gp.accuracy_after_prune, pre_accuracy=dense_accuracy)
                gpmt_files.write_layer_sparsities(ref / "layer_sparsities.csv",
                                                  [p / n for p, n in zip(gpmt_pruned, layer_numels)])
                gpmt_files.write_prune_log(ref / "prune_refined_log.csv", layer_numels, gpmt_pruned,
                                           post_accuracy=r.accuracy_after_prune, pre_accuracy=dense_accuracy)
                gpmt_files.write_weight_mask_npy(ref / "weight_mask.npy", r.masks.masks)
                gpmt_files.save_mask_list(ref / "mask_list.pt", r.masks.masks)
                files += [ref / n for n in ("prune_log.csv", "layer_sparsities.csv", "prune_refined_log.csv",
                                            "weight_mask.npy", "mask_list.pt")]
            log("")
            log(f"wrote {len(files)} files to {out}/")
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)

    seconds = time.perf_counter() - started
    log(f"done in {seconds:.1f} s")
    return DemoResult(model_name, dense_accuracy, min_threshold, floor, rows, table, layer_tables, seconds, out, files)
