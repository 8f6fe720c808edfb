"""The ``sparsetrain`` command line: ``sparsetrain demo`` (more subcommands will follow).

Bad input (any ``ValueError``, which includes ``sparsetrain.SparsityError``) prints one line,
``error: <message>``, to stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _numbers(values: Sequence[str], option: str) -> list[float]:
    """``["0.8,0.9", "0.95"]`` -> ``[0.8, 0.9, 0.95]``: accept spaces and commas as separators."""
    numbers = []
    for text in (item for value in values for item in value.split(",")):
        if not text.strip():
            continue
        try:
            numbers.append(float(text))
        except ValueError:
            raise ValueError(f"{option}: {text!r} is not a number") from None
    return numbers


def build_parser() -> argparse.ArgumentParser:
    from . import demo  # defaults live next to the code that uses them

    parser = argparse.ArgumentParser(
        prog="sparsetrain",
        description="Make PyTorch models sparse and keep them accurate (GP, GPMT; GaP in progress).",
    )
    parser.add_argument("--version", action="version", version=f"sparsetrain {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "demo",
        help="train a small ResNet on digits, prune it with GP and GPMT, fine-tune, compare",
        description=(
            "Train a small ResNet on scikit-learn's 8x8 digits (embedded, no download), prune copies "
            "of it with global magnitude pruning (GP) and GP with a minimum threshold (GPMT), "
            "fine-tune each with its mask fixed, and print a table in the GaP paper's format plus "
            "the per-layer sparsities. Takes seconds on a laptop CPU."
        ),
    )
    p.add_argument("--sparsities", nargs="+", default=[str(s) for s in demo.DEFAULT_SPARSITIES], metavar="S",
                   help="target sparsities in [0, 1), space- or comma-separated "
                   f"(default: {' '.join(map(str, demo.DEFAULT_SPARSITIES))})")
    p.add_argument("--min-threshold", default=str(demo.DEFAULT_MIN_THRESHOLD), metavar="PCT",
                   help="GPMT's minimum threshold MT, in percent of all target weights (default: %(default)s)")
    p.add_argument("--dense-epochs", default=str(demo.DEFAULT_DENSE_EPOCHS), metavar="N",
                   help="epochs of dense training (default: %(default)s)")
    p.add_argument("--finetune-epochs", default=str(demo.DEFAULT_FINETUNE_EPOCHS), metavar="N",
                   help="epochs of fine-tuning after each pruning (default: %(default)s)")
    p.add_argument("--width", default=str(demo.DEFAULT_WIDTH), metavar="N",
                   help="channels of the ResNet's first stage (default: %(default)s)")
    p.add_argument("--seed", default="0", metavar="N",
                   help="seeds the weights, the data split and the batch order (default: %(default)s)")
    p.add_argument("--threads", default="1", metavar="N",
                   help="torch CPU threads; more gain little on this tiny model and slow down a busy machine "
                   "(default: %(default)s)")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="directory for results.md, the per-layer CSVs and the GPMT files (default: %(default)s)")
    return parser


def _integer(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not an integer") from None


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a number") from None


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        sparsities=_numbers(args.sparsities, "--sparsities"),
        min_threshold=_number(args.min_threshold, "--min-threshold"),
        dense_epochs=_integer(args.dense_epochs, "--dense-epochs"),
        finetune_epochs=_integer(args.finetune_epochs, "--finetune-epochs"),
        width=_integer(args.width, "--width"),
        seed=_integer(args.seed, "--seed"),
        threads=_integer(args.threads, "--threads"),
        out_dir=args.out,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsetrain`` script and of ``python -m sparsetrain``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _demo(args)
    except ValueError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
