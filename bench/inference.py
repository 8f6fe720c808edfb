"""Benchmark: inference latency and throughput of magnitude-pruned models on this CPU (issue 15).

In one process, for two models,

* **ResNet** -- ``build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))`` in the full
  mode; ``resnet18`` at a smaller 3x64x64 input in ``--quick`` mode (the CPU budget of ``make bench``);
* **MLP** -- a BERT-sized stack of 4 feed-forward blocks, ``Linear(768, 3072) -> GELU ->
  Linear(3072, 768) -> GELU``, one sample being one 768-wide token vector. It stands in for the
  Transformer, whose task (issue 12) is not built yet;

each pruned with sparsetrain's own engine (``sparsetrain.prune(model, s, method="uniform")``:
per-layer magnitude pruning, every conv and Linear weight at exactly ``s``, built on
``per_tensor_smallest_magnitude_masks``) to sparsity ``s`` in 0, 0.8, 0.9, 0.95, 0.98, it times a
forward pass at batch 1 and batch 32 on three back-ends:

1. **dense torch** -- the pruned model as it is (dense tensors holding zeros) under
   ``torch.inference_mode()``; the reference of every speed-up and every output check;
2. **torch CSR** -- a copy where every ``nn.Linear`` is replaced by ``CSRLinear``, holding
   ``weight.to_sparse_csr()`` and computing ``torch.sparse.mm(W, x.T).T + b``. Convolutions stay
   dense (torch has no sparse convolution on CPU), so for the ResNet only the classifier changes;
3. **onnxruntime** -- ``torch.onnx.export`` (the default, dynamo-based exporter, batch axis dynamic)
   of the pruned model, dense tensors with zeros, run by onnxruntime's CPU execution provider with
   ``intra_op_num_threads`` equal to torch's thread count and ``inter_op_num_threads=1``, graph
   optimizations at their default (all).

Threads are pinned: ``torch.set_num_threads(--threads)`` (default 1) and the same count for
onnxruntime. Measurements are interleaved: each round times every back-end once, in an order
rotated from round to round, so a slow drift of a shared machine affects all alike; one measurement
is ``inner`` back-to-back calls (chosen from a first dense call so a measurement lasts >= ~20 ms)
and the latency is the median over rounds of measurement / inner. Throughput = batch / latency.
The speed-up is paired: the median over rounds of (dense torch time / back-end time) in the same
round, which cancels most of a shared machine's slow load changes.
The fraction of the machine's CPU time other processes used while timing is printed.

Every row states whether its output matches dense torch within tolerance: max |difference| <=
atol + rtol * max |dense output| (atol 1e-4, rtol 1e-4; fp32 throughout); the difference itself is
printed. A mismatch makes the script exit with status 1 after printing everything.

GPU part: with ``torch.cuda.is_available()``, the MLP's Linear weights are pruned 2:4 (2 largest
magnitudes kept in every 4 consecutive inputs) and ``torch.sparse.to_sparse_semi_structured`` is
timed against the same dense weights, fp16 and bf16, batch 1 and 32 (x 128 tokens). Without a GPU
it is skipped, and the script says so.

At the end a plain conclusion is computed from the table: from which sparsity (if any) each sparse
back-end beats dense torch, per model and batch.

Usage: ``.venv/bin/python bench/inference.py [--quick] [--threads N] [--rounds N]``
(full mode: ResNet-50 at 3x224x224, 15 rounds; ``--quick``: ResNet-18 at 3x64x64, 11 rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _measure import OtherProcesses, machine_line, share  # noqa: E402

import sparsetrain  # noqa: E402
from sparsetrain.models.registry import build_model  # noqa: E402

SPARSITIES = (0.0, 0.8, 0.9, 0.95, 0.98)
BATCHES = (1, 32)
BACKENDS = ("dense torch", "torch CSR", "onnxruntime")
ATOL = 1e-4
RTOL = 1e-4
MIN_MEASUREMENT_S = 0.02
CLEAR_WIN = 1.10  # a speed-up below this is within the noise of a shared machine


class CSRLinear(nn.Module):
    """``nn.Linear`` with its weight stored as a ``torch.sparse_csr`` tensor (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def to_csr(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``nn.Linear`` replaced by ``CSRLinear``, and how many."""
    model = copy.deepcopy(model)
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, child_name, CSRLinear(child))
                replaced += 1
    return model, replaced


class MLPStack(nn.Sequential):
    """BERT-base-sized feed-forward blocks: ``blocks`` x (Linear(d, 4d), GELU, Linear(4d, d), GELU)."""

    def __init__(self, width: int = 768, hidden: int = 3072, blocks: int = 4) -> None:
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.GELU()]
        super().__init__(*layers)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    note: str


def model_specs(quick: bool) -> list[ModelSpec]:
    if quick:
        resnet, shape = "resnet18", (3, 64, 64)
    else:
        resnet, shape = "resnet50", (3, 224, 224)
    return [
        ModelSpec(
            f"{resnet} {'x'.join(map(str, shape))}",
            lambda: build_model(resnet, num_classes=1000, input_shape=shape),
            shape,
            f"{resnet}, 1000 classes, input {'x'.join(map(str, shape))}"
            + (" (smaller than ImageNet's 224x224 to fit the quick mode)" if quick else ""),
        ),
        ModelSpec(
            "MLP 4x768-3072",
            MLPStack,
            (768,),
            "4 x (Linear(768,3072), GELU, Linear(3072,768), GELU), one sample = one 768-wide token; "
            "stands in for the Transformer (not built yet)",
        ),
    ]


@contextlib.contextmanager
def quiet():
    """Silence the ONNX exporter's progress lines and warnings."""
    sink = io.StringIO()
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def onnx_session(model: nn.Module, sample: torch.Tensor, threads: int, directory: str, tag: str):
    import onnxruntime as ort

    path = os.path.join(directory, f"{tag}.onnx")
    batch = torch.export.Dim("batch", min=1, max=1024)
    with quiet():
        torch.onnx.export(model, (sample,), path, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: batch},), dynamo=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return run


@dataclass
class Row:
    model: str
    sparsity: float
    batch: int
    backend: str
    latency_s: float
    max_diff: float
    matches: bool
    speedup: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.batch / self.latency_s


def time_interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every function in each of ``rounds`` interleaved, rotated rounds."""
    names = list(calls)
    for fn in calls.values():  # warm-up
        fn()
        fn()
    start = time.perf_counter()
    calls[names[0]]()
    first = time.perf_counter() - start
    inner = max(1, min(200, int(MIN_MEASUREMENT_S / max(first, 1e-6)) + 1))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        gc.collect()
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = calls[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return samples


def bench_model(spec: ModelSpec, threads: int, rounds: int, directory: str, log) -> list[Row]:
    rows: list[Row] = []
    torch.manual_seed(0)
    base = spec.build().eval()
    for sparsity in SPARSITIES:
        model = copy.deepcopy(base)
        masks = sparsetrain.prune(model, sparsity, method="uniform")
        achieved = 1 - sum(int(m.sum()) for m in masks.masks) / sum(m.numel() for m in masks.masks)
        csr_model, n_csr = to_csr(model)
        tag = f"{spec.name.split()[0]}_{round(sparsity * 100)}"
        ort_run = onnx_session(model, torch.randn(2, *spec.sample_shape), threads, directory, tag)
        log(f"  {spec.name}: sparsity {sparsity:.2f} (targets at {achieved:.4f}), "
            f"{n_csr} Linear layer(s) as CSR, ONNX exported")
        for batch in BATCHES:
            generator = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, *spec.sample_shape, generator=generator)
            x_np = x.numpy()

            def dense(x=x, model=model):
                with torch.inference_mode():
                    return model(x)

            def csr(x=x, csr_model=csr_model):
                with torch.inference_mode():
                    return csr_model(x)

            def onnx(x_np=x_np, ort_run=ort_run):
                return ort_run(x_np)

            reference = dense()
            outputs = {"dense torch": reference, "torch CSR": csr(), "onnxruntime": torch.from_numpy(onnx())}
            samples = time_interleaved({"dense torch": dense, "torch CSR": csr, "onnxruntime": onnx}, rounds)
            scale = float(reference.abs().max())
            for backend in BACKENDS:
                diff = float((outputs[backend] - reference).abs().max())
                row = Row(spec.name, sparsity, batch, backend, statistics.median(samples[backend]), diff,
                          diff <= ATOL + RTOL * scale)
                row.speedup = statistics.median(  # paired: dense / backend within each round
                    d / b for d, b in zip(samples["dense torch"], samples[backend]))
                rows.append(row)
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = [
        ("| model | sparsity | batch | backend | median latency (ms) | throughput (samples/s) "
         "| speed-up vs dense torch | matches dense (max abs diff) |"),
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.sparsity:.2f} | {r.batch} | {r.backend} | {r.latency_s * 1e3:.3f} "
            f"| {r.throughput:,.0f} | {r.speedup:.2f}x | {'yes' if r.matches else 'NO'} ({r.max_diff:.1e}) |"
        )
    return "\n".join(lines)


def first_winning_sparsity(rows: list[Row], model: str, batch: int, backend: str) -> float | None:
    """Lowest sparsity from which ``backend`` is at least ``CLEAR_WIN`` x dense torch at every higher one."""
    ordered = sorted((r for r in rows if (r.model, r.batch, r.backend) == (model, batch, backend)),
                     key=lambda r: r.sparsity)
    winner = None
    for r in reversed(ordered):
        if r.speedup >= CLEAR_WIN:
            winner = r.sparsity
        else:
            break
    return winner


def _rows(rows: list[Row], model: str, batch: int, backend: str) -> list[Row]:
    return sorted((r for r in rows if (r.model, r.batch, r.backend) == (model, batch, backend)),
                  key=lambda r: r.sparsity)


def conclusion(rows: list[Row]) -> str:
    """One plain paragraph computed from the rows."""
    models = list(dict.fromkeys(r.model for r in rows))
    parts = []
    for model in models:
        phrases = []
        for batch in BATCHES:
            series = _rows(rows, model, batch, "torch CSR")
            start = first_winning_sparsity(rows, model, batch, "torch CSR")
            last = series[-1]
            if start is None:
                phrases.append(f"never at batch {batch} ({last.speedup:.3f}x at {last.sparsity:.0%})")
            else:
                at_start = next(r for r in series if r.sparsity == start)
                phrases.append(f"from {start:.0%} at batch {batch} ({at_start.speedup:.2f}x there, "
                               f"{last.speedup:.2f}x at {last.sparsity:.0%})")
        parts.append(f"{model}: " + ", ".join(phrases))
    ort = [r.speedup for r in rows if r.backend == "onnxruntime"]
    ort_text = []
    ort_from_sparsity = False
    for m in models:
        for b in BATCHES:
            series = _rows(rows, m, b, "onnxruntime")
            ort_text.append(f"{m} batch {b}: {series[0].speedup:.2f}x at 0%, {series[-1].speedup:.2f}x at "
                            f"{series[-1].sparsity:.0%}")
            ort_from_sparsity |= series[-1].speedup / series[0].speedup >= CLEAR_WIN
    spread = max(
        max(r.latency_s for r in _rows(rows, m, b, "dense torch")) / min(r.latency_s for r in _rows(rows, m, b, "dense torch"))
        for m in models for b in BATCHES
    )
    csr_wins = any(first_winning_sparsity(rows, m, b, "torch CSR") is not None for m in models for b in BATCHES)
    return (
        f"Conclusion (computed from the table; 'beats' means at least {CLEAR_WIN:.2f}x dense torch at that "
        "sparsity and every higher one). "
        + ("Unstructured sparsity pays on this CPU through CSR Linear layers: " if csr_wins
           else "Unstructured sparsity does not pay on this CPU in any row: ")
        + "torch CSR beats dense torch " + "; ".join(parts) + ". "
        "For the ResNet only the classifier is CSR (convolutions stay dense), so the whole network cannot "
        "gain much. Dense torch itself computes every zero (its median latency across 0-98% differs by at most "
        f"{spread:.2f}x in any model/batch, which is this shared machine's load, not sparsity). "
        f"onnxruntime ({min(ort):.2f}x-{max(ort):.2f}x dense torch) runs dense kernels on the zeros too: "
        + "; ".join(ort_text)
        + (", so its speed-up comes from its kernels and graph optimizations, not from sparsity."
           if not ort_from_sparsity else
           f"; in some row its speed-up grows by {CLEAR_WIN:.2f}x or more from 0% to 98%, which dense kernels "
           "do not explain: treat it as load noise unless a rerun confirms it.")
    )


def gpu_part(log) -> None:
    if not torch.cuda.is_available():
        log("GPU part (to_sparse_semi_structured 2:4, fp16/bf16, vs dense): skipped -- "
            "torch.cuda.is_available() is False on this machine (CPU-only torch build, no GPU).")
        return
    from torch.sparse import to_sparse_semi_structured

    log("GPU part: MLP Linear weights pruned 2:4, 128 tokens per sample; torch.nn.functional.linear, "
        "dense vs to_sparse_semi_structured")
    log("| dtype | batch | dense (ms) | 2:4 semi-structured (ms) | speed-up | max abs diff |")
    log("|---|---:|---:|---:|---:|---:|")
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        weights = []
        for i in range(8):
            shape = (3072, 768) if i % 2 == 0 else (768, 3072)
            w = torch.randn(shape, device="cuda", dtype=dtype)
            groups = w.abs().reshape(-1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(1, groups.topk(2, dim=1).indices, True)
            weights.append(w * keep.reshape(shape))
        try:
            sparse_weights = [to_sparse_semi_structured(w) for w in weights]
        except (RuntimeError, ValueError, NotImplementedError) as error:  # e.g. a GPU older than Ampere
            log(f"| {dtype} | - | - | - | - | to_sparse_semi_structured failed: {error} |")
            continue
        for batch in BATCHES:
            x = torch.randn(batch * 128, 768, device="cuda", dtype=dtype)

            def run(ws, x=x):
                h = x
                for w in ws:
                    h = torch.nn.functional.gelu(torch.nn.functional.linear(h, w))
                return h

            times = {}
            with torch.inference_mode():
                outs = {"dense": run(weights), "sparse": run(sparse_weights)}
                for key, ws in (("dense", weights), ("sparse", sparse_weights)):
                    for _ in range(5):
                        run(ws)
                    torch.cuda.synchronize()
                    samples = []
                    for _ in range(20):
                        start = time.perf_counter()
                        for _ in range(10):
                            run(ws)
                        torch.cuda.synchronize()
                        samples.append((time.perf_counter() - start) / 10)
                    times[key] = statistics.median(samples)
            diff = float((outs["dense"].float() - outs["sparse"].float()).abs().max())
            log(f"| {str(dtype).replace('torch.', '')} | {batch} | {times['dense'] * 1e3:.3f} "
                f"| {times['sparse'] * 1e3:.3f} | {times['dense'] / times['sparse']:.2f}x | {diff:.1e} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-18 at 3x64x64 instead of ResNet-50 at 3x224x224, 11 rounds (make bench)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default 15, quick 11)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (11 if args.quick else 15)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    def log(line: str = "") -> None:
        print(line, flush=True)

    import onnxruntime

    log(f"Inference benchmark ({'quick' if args.quick else 'full'} mode), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(machine_line())
    log(f"Threads: torch.set_num_threads({args.threads}); onnxruntime intra_op_num_threads={args.threads}, "
        f"inter_op_num_threads=1; onnxruntime {onnxruntime.__version__}")
    log(f"Timing: {rounds} interleaved rounds per row, median; pruning: sparsetrain.prune(method='uniform') "
        "(per-layer magnitude) of every conv/Linear weight")
    specs = model_specs(args.quick)
    for spec in specs:
        log(f"Model {spec.name}: {spec.note}")
    log("torch CSR: nn.Linear -> CSRLinear (weight.to_sparse_csr(), torch.sparse.mm); convolutions stay dense")
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory, OtherProcesses() as others:
        for spec in specs:
            rows += bench_model(spec, args.threads, rounds, directory, log)
    log(f"Timed in {time.perf_counter() - start:.0f} s; other processes used {share(others)} of the machine's "
        "CPU time meanwhile")
    log()
    log(markdown_table(rows))
    log()
    gpu_part(log)
    log()
    log(conclusion(rows))
    failed = [r for r in rows if not r.matches]
    if failed:
        log(f"FAILED: {len(failed)} row(s) do not match dense torch within tolerance")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
