"""The ``sparsetrain`` command line.

    sparsetrain run CONFIG [key=value ...]      train a config (overrides as dotted keys)
    sparsetrain run --resume RUN_DIR            continue a stopped run exactly
    sparsetrain plan CONFIG [key=value ...]     print stages, epochs and every mask event, no training
    sparsetrain eval CHECKPOINT --config CONFIG test metrics and per-layer sparsity of any checkpoint
    sparsetrain report RUN_DIR                  (re)write report.md and the plots of a run
    sparsetrain export RUN_DIR --format sparse|safetensors|onnx --out PATH   the final model as a file to ship
    sparsetrain average RUN_DIR --last N --out PATH   the mean of the last N epoch models (or of given files)
    sparsetrain demo [--task KIND|all] [--out DIR] [--fresh]   a task's demo table (default: embedded MNIST-1D)
    sparsetrain list                            registered tasks, datasets, models, methods, partitions

Bad input (a ``UserError``: config, sparsity, checkpoint and data errors all are) prints one
line, ``error: <message>``, to stderr and exits with status 2, without a traceback. So does an
``OSError`` that names a file (``error: cannot access '<path>': <reason>``: a missing, unreadable
or misplaced file the user gave). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import UserError, UserOSError, os_error_message


class _Parser(argparse.ArgumentParser):
    """Takes ``key=value`` overrides anywhere on the line, before or after the options.

    argparse fills an ``nargs='*'`` positional with the first run of positionals only, so in
    ``eval CKPT --config C seed=1`` the override ``seed=1`` would be left over ("unrecognized
    arguments"). Left-over ``key=value`` words join the command's ``overrides``, in order.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        overrides = getattr(namespace, "overrides", None)
        if isinstance(overrides, list):
            overrides.extend(a for a in extras if "=" in a and not a.startswith("-"))
            extras = [a for a in extras if not ("=" in a and not a.startswith("-"))]
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        """A usage error as one line, like every other bad input (argparse also prints the usage)."""
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive finite number")
    return value


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds, e.g. 0,1,2") from None
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: seeds must be distinct integers >= 0, e.g. 0,1,2")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparsetrain",
        description="Make PyTorch models sparse and keep them accurate: global magnitude pruning (GP, GPMT), "
        "scheduled grow-and-prune (S-GaP, P-GaP) and the baselines GMP, SET, RigL, random and layer-wise "
        "magnitude pruning, from one YAML config per run. 'sparsetrain COMMAND --help' describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"sparsetrain {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "run", help="train one config, or continue a stopped run with --resume RUN_DIR",
        description="Train one config (key=value overrides as dotted keys), or continue a stopped run from its "
        "last checkpoint with --resume RUN_DIR.")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. stages.1.sparsity=0.8 seed=1")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in the output directory (deletes only the files a run writes; "
                   "a directory holding files sparsetrain did not write is refused all the same)")

    p = commands.add_parser(
        "plan", help="print the stages, epochs and every mask event of a config, without training",
        description="Print the stages, epochs, optimizer steps, partitions and every mask event of a config, "
        "and its training FLOPs with a GPU-hours estimate. Nothing is trained; ImageNet and CIFAR-10 configs "
        "need no data on disk.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config keys, e.g. seed=1")
    p.add_argument("--gpu-tflops", type=_positive_float, default=60.0,
                   help="effective training throughput of one GPU for the GPU-hours estimate (default %(default)s)")

    p = commands.add_parser(
        "eval", help="print a checkpoint's per-layer sparsity table and its test metrics (top-1, BLEU, ...)",
        description="Load CHECKPOINT into the model of --config and print its per-layer sparsity table (counted "
        "from the zero weights of the targets) and one line with the task's test metrics (top-1 and loss; BLEU, chrF, "
        "loss and perplexity for translation) and sparsity over the "
        "targets and over all parameters; with --masks, first one line with that mask file's sparsity and the "
        "number of weights that are non-zero where it prunes. key=value overrides may come before or after "
        "the options.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="run checkpoint, plain state dict, {'state_dict': ...} or module.-prefixed")
    p.add_argument("--config", required=True, help="the config that defines task, model and targets")
    p.add_argument("--masks", help="a mask list in modules() order (the GPMT reference's weight_mask.npy, or "
                   "our torch mask file): report its sparsity and check the weights are zero where it prunes")
    p.add_argument("--dict", dest="dictionary", metavar="DICT_TXT",
                   help="translation: the dictionary the checkpoint was trained with, where the checkpoint holds "
                   "none (e.g. a P-GaP combine checkpoint of the GaP fork); same as task.dataset.options.dictionary=DICT_TXT")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config keys, e.g. device=cuda")

    p = commands.add_parser(
        "report", help="write report.md and plots for a run directory",
        description="(Re)write report.md, plot_metrics.png and plot_layer_sparsity.png of a run directory from "
        "its files, and print the report's path.")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = commands.add_parser(
        "export", help="write a run's final model (or a checkpoint) as sparse or dense safetensors, or ONNX",
        description="Write the model of RUN_DIR (its model_final.pt and config.yaml) or of CHECKPOINT (with "
        "--config) to --out: 'sparse' is one safetensors file with the kept values and a bit-packed mask per "
        "target (about 0.13x the dense file at 90%% sparsity), loaded back bit for bit by sparsetrain.load_sparse "
        "or as init.checkpoint; 'safetensors' the plain dense state dict; 'onnx' torch.onnx's export, checked "
        "against PyTorch with onnxruntime on a sample batch. An existing --out is refused without --overwrite.")
    p.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--config", help="the config that defines the model (default: RUN_DIR/config.yaml)")
    p.add_argument("--format", dest="fmt", required=True, choices=("sparse", "safetensors", "onnx"))
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    p = commands.add_parser(
        "average", help="the element-wise mean of checkpoints (e.g. a run's last N epoch models)",
        description="Average CHECKPOINT files element-wise (fairseq's checkpoint averaging) into --out, a plain "
        "state dict; with --last N and a run directory, its newest N models/epoch_*.pt (written when "
        "training.keep_last_models >= N). Keys and shapes must match; an existing --out is refused without "
        "--overwrite. Prints how many entries are zero in every input and in the mean.")
    p.add_argument("inputs", nargs="+", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("--last", type=int, metavar="N", help="with one run directory: its newest N epoch models")
    p.add_argument("--out", required=True, metavar="PATH")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    p = commands.add_parser(
        "demo", help="dense, GP, GPMT, S-GaP and P-GaP at sparsity 0.8 and 0.9 on embedded MNIST-1D, one table "
        "(--task: another task's demo)",
        description="Run every config of a task's demo through the runner and write one table to "
        "OUT/results.md, with one run directory per config. The default, --task classification (what make demo "
        "runs with --seeds 0,1,2 --jobs 2), is the packaged demo on embedded MNIST-1D with the same 34-epoch budget "
        "and the same targets (stem and classifier dense) each: dense; GP, GPMT, "
        "S-GaP uniform, S-GaP non-uniform, S-GaP ERK and P-GaP uniform, each at sparsity 0.8 and 0.9 (GaP with kappa 4), "
        "in the GaP paper's format. --task KIND runs the demo that task KIND declares (Task.DEMO) and --task all "
        "the demo of every registered task that has one; classification writes into OUT itself, any other task "
        "into OUT/KIND. --configs runs another directory's *.yaml instead, under the chosen task.")
    p.add_argument("--out", default="runs/demo", help="output directory (default: %(default)s)")
    p.add_argument("--task", default="classification", metavar="KIND",
                   help="the task whose demo runs, or 'all' (default: %(default)s); see 'sparsetrain list'")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that a task of your own registers itself (repeatable)")
    p.add_argument("--configs", default=None, help="directory of demo configs (default: the task's own)")
    p.add_argument("--fresh", action="store_true",
                   help="rerun every config (default: keep runs finished under the same config, resume stopped ones)")
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,...",
                   help="run every config once per seed into OUT/seed<S>/ and write the table as mean ± std over "
                   "the seeds (default: each config's own seed, once)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs at a time, in worker processes (each run pins its own threads; default %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every demo config")

    commands.add_parser(
        "list", help="print the registered tasks, datasets, models, methods and partition schemes",
        description="Print what a config may name, one per line under a heading each: tasks (task.kind), "
        "datasets (task.dataset.name), models (task.model.name), methods (the stage kinds; prune with its "
        "budgets) and partition schemes and presets (partitions.scheme of a GaP stage).")
    return parser


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .reports import write_report
    from .runner.train import Preempted, run

    if args.resume:
        if args.config or args.overrides:
            raise UserError("--resume RUN_DIR takes no CONFIG or overrides: the run's own config.yaml is used")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"cannot resume {str(run_dir)!r}: the directory does not exist")
        config = load_config(run_dir / "config.yaml", [f"output_dir={run_dir}"])
    elif args.config:
        config = load_config(args.config, args.overrides)
    else:
        raise UserError("run needs a CONFIG file or --resume RUN_DIR")
    try:
        result = run(config, resume=bool(args.resume), overwrite=args.overwrite)
    except Preempted as stop:
        print(f"sparsetrain: {stop}", file=sys.stderr)
        return stop.exit_status
    if result is None:  # a non-zero rank of a multi-process run: rank 0 writes the results
        return 0
    report = write_report(result.run_dir)
    if config.training.loggers != ["jsonl"]:
        from .runner.loggers import log_report_plots

        log_report_plots(result.run_dir, config.training.loggers, config.name, config.model_dump(mode="json"),
                         result.final["step"])
    from .tasks import get_task

    task = get_task(config.task.kind)
    key = task.primary_key()
    print(f"final {task.format_primary(result.final.get(key))}, best {task.format_primary(result.best.get(key))}, "
          f"sparsity {result.final['sparsity']:.4f}; report: {report}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .methods import trains_with_workers
    from .runner.flops import TRAINING_PASSES, target_forward_flops
    from .runner.setup import build_setup
    from .runner.timeline import format_plan
    from .tasks import get_task

    config = load_config(args.config, args.overrides, check_files=False)
    # Laid out (and pre-flight checked) as `run` would, from the data's known size where the task can tell it.
    setup = build_setup(config, read_data=False, load_init=False)
    timeline, num_train = setup.timeline, setup.num_train
    print(format_plan(timeline, config, [t.shape for t in setup.targets]))
    for name, why in setup.kept_dense:
        print(f"kept dense: {name} ({why})")
    flops = target_forward_flops(setup.model, setup.targets, setup.example_input)
    epochs = sum(span.epochs + ((span.gap.kappa - 1) * span.gap.gap_epochs if trains_with_workers(span.kind) else 0)
                 for span in timeline.stages)
    examples = num_train * epochs
    total = examples * TRAINING_PASSES * sum(flops)
    hours = total / (args.gpu_tflops * 1e12) / 3600
    unit = get_task(config.task.kind).size_unit()
    print(f"\ncompute: {epochs} epochs of {num_train:,} {unit} (P-GaP workers counted one by one), "
          f"{TRAINING_PASSES * sum(flops) / 1e9:.3g} GFLOPs per training {unit.removesuffix('s')} (conv/linear layers, dense: "
          f"unstructured sparsity does not speed up dense kernels) = {total:.3g} FLOPs; about {hours:,.3g} "
          f"GPU-hours at {args.gpu_tflops:g} effective TFLOP/s (--gpu-tflops; about an A100 training ResNet-50 "
          "with AMP)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from .config import load_config
    from .runner.components import eval_loader_for, resolve_device
    from .runner.setup import build_setup, load_weights
    from .sparsity import MaskSet

    overrides = list(args.overrides) + ([f"task.dataset.options.dictionary={args.dictionary}"] if args.dictionary else [])
    config = load_config(args.config, overrides)
    device = resolve_device(config.device)
    setup = build_setup(config, device=device, load_init=False, lay_out=False)
    task, model, targets = setup.task, setup.model, setup.targets
    load_weights(task, model, args.checkpoint)
    masks = MaskSet.from_nonzero(targets, model_numel=setup.model_numel)
    with torch.no_grad():
        metrics = task.evaluate(model, eval_loader_for(task, config.data, device), device,
                                config.training.max_eval_batches)
    if args.masks:
        from .interop.gpmt_files import load_mask_list

        given = MaskSet(targets, load_mask_list(args.masks), model_numel=setup.model_numel)
        revived = sum(int(torch.count_nonzero(t.param.detach()[~m.to(t.param.device)]))
                      for t, m in zip(targets, given.masks))
        print(f"masks {args.masks}: sparsity {given.sparsity():.4f}; weights non-zero where the masks prune: "
              f"{revived}")
    print(masks.format_table())
    primary = task.PRIMARY[0]
    others = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != primary)
    print(f"{task.format_primary(metrics[primary])}  {others + '  ' if others else ''}"
          f"sparsity {masks.sparsity():.4f} (targets), {masks.sparsity_over_parameters():.4f} (all parameters)")
    return 0


def _report(args: argparse.Namespace) -> int:
    import yaml

    from .reports import write_report
    from .runner.run_dir import is_run_dir
    from .tasks.registry import primary_of_config

    run_dir = Path(args.run_dir)
    written_by_0_1 = all((run_dir / name).is_file() for name in ("config.yaml", "metrics.jsonl", "events.jsonl"))
    if run_dir.is_dir() and not (is_run_dir(run_dir) or written_by_0_1):  # never write report.md over a user's
        raise UserError(f"{str(run_dir)!r} is not a sparsetrain run directory (no run.json); report writes "
                        "report.md and plots only into run directories")
    config_path = run_dir / "config.yaml"
    try:
        raw = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        raw = None  # write_report says what is wrong with the file
    print(write_report(args.run_dir, primary_of_config(raw)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export.command import export

    print(export(args.source, config=args.config, fmt=args.fmt, out=args.out, overwrite=args.overwrite))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demos

    run_demos(args.task, out_dir=args.out, config_dir=args.configs, overrides=args.overrides, fresh=args.fresh,
              imports=args.imports, seeds=args.seeds, jobs=args.jobs)
    return 0


def _list(args: argparse.Namespace) -> int:
    from .methods import REGISTRY
    from .sparsity.partitions import PRESETS, SCHEMES
    from .sparsity.prune import METHODS as PRUNE_BUDGETS
    from .tasks.registry import get_task, task_kinds

    tasks = task_kinds()
    catalogs = {kind: get_task(kind).catalog() for kind in tasks}
    datasets, models = ([f"{name} ({kind})" for kind in tasks for name in catalogs[kind][part]]
                        for part in ("datasets", "models"))
    methods = [f"{kind} (method: {', '.join(PRUNE_BUDGETS)})" if kind == "prune" else kind for kind in REGISTRY]
    for heading, names in (("tasks", tasks), ("datasets", datasets), ("models", models),
                           ("methods", methods), ("partitions", [*SCHEMES, *PRESETS])):
        print(f"{heading}:")
        for name in names:
            print(f"  {name}")
    return 0


def _average(args: argparse.Namespace) -> int:
    from .export.average import average_checkpoints

    inputs = [Path(p) for p in args.inputs]
    if args.last is not None:
        if len(inputs) != 1 or not inputs[0].is_dir():
            raise UserError("--last N takes exactly one run directory")
        found = sorted((inputs[0] / "models").glob("epoch_*.pt"))
        if args.last < 2 or len(found) < args.last:
            raise UserError(f"--last {args.last}: {str(inputs[0])!r} holds {len(found)} epoch model(s) in models/; valid: "
                            f"2 <= N <= {len(found)} (keep more with training.keep_last_models)")
        inputs = found[-args.last:]
    print(average_checkpoints(inputs, args.out, overwrite=args.overwrite))
    return 0


COMMANDS = {"run": _run, "plan": _plan, "eval": _eval, "report": _report, "demo": _demo, "export": _export,
            "average": _average}
INFO_COMMANDS = {"list": _list}
"""Commands that read nothing of a config or a run (not named in the no-command error)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsetrain`` script and of ``python -m sparsetrain``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print(f"error: give a COMMAND: {', '.join(COMMANDS)} (see 'sparsetrain --help')", file=sys.stderr)
        return 2
    try:
        _check_named_files(args)
        return {**COMMANDS, **INFO_COMMANDS}[args.command](args)
    except UserError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into a reader that stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file the user named (data, checkpoint, masks) cannot be read or written
        if exc.filename is None:
            raise  # not about a path the user gave: a bug, keep the traceback
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2


def _check_named_files(args: argparse.Namespace) -> None:
    """Fail before any work on a config path that is a directory or a ``--masks`` file that cannot be read."""
    config = getattr(args, "config", None)
    if isinstance(config, str) and Path(config).is_dir():
        raise UserOSError(f"cannot read config file {config!r}: Is a directory (give a YAML file)")
    masks = getattr(args, "masks", None)
    if masks:
        try:
            with open(masks, "rb"):
                pass
        except OSError as exc:
            raise UserOSError(os_error_message(exc, "read mask file")) from None
