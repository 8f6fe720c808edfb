"""First contact: fast --help/--version (no torch import), true help texts, eval's argument order,
progress bars only on a terminal, demo configs pinned to one thread."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sparsetrain
from sparsetrain.cli import build_parser, main
from sparsetrain.demo import DEMO_CONFIGS
from sparsetrain.runner.progress import progress_bar

SUBCOMMANDS = ("run", "plan", "eval", "report", "demo")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_and_package_import_without_torch():
    out = _python("import sys, sparsetrain, sparsetrain.cli, sparsetrain.__main__\n"
                  "assert 'torch' not in sys.modules, 'torch imported'\n"
                  "print(sparsetrain.__version__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sparsetrain.__version__


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    out = _python("import sys\nfrom sparsetrain.cli import main\n"
                  f"try:\n    main([{flag!r}])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
                  "assert 'torch' not in sys.modules, 'torch imported'")
    assert out.returncode == 0, out.stderr
    expected = f"sparsetrain {sparsetrain.__version__}" if flag == "--version" else "usage: sparsetrain"
    assert expected in out.stdout


def test_console_script_version_and_help():
    script = Path(sys.executable).parent / "sparsetrain"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "sparsetrain"]
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"sparsetrain {sparsetrain.__version__}"
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "usage: sparsetrain" in helped.stdout
    for name in SUBCOMMANDS:
        assert name in helped.stdout


def test_top_level_api_is_lazy_but_complete():
    from sparsetrain import MaskSet, Sparsifier, SparsityError, prune, select_targets  # noqa: F401
    from sparsetrain.errors import UserError

    assert issubclass(SparsityError, UserError)
    assert set(sparsetrain.__all__) <= set(dir(sparsetrain))
    assert sparsetrain.prune is prune
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparsetrain.nope  # noqa: B018


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _words(text: str) -> str:
    """Lowercase, with hyphens (and argparse's line breaks after them) and line breaks removed."""
    return " ".join(re.sub(r"-\s*", "", text).lower().split())


def test_every_help_exits_0_and_is_true(capsys):
    top = _help([], capsys)
    assert "in progress" not in top
    for method in ("GP", "GPMT", "S-GaP", "P-GaP", "GMP", "SET", "RigL", "random", "magnitude"):
        assert method in " ".join(top.split()), method
    texts = {name: _help([name], capsys) for name in SUBCOMMANDS}
    assert "--resume" in texts["run"]
    assert "top-1" in texts["eval"] and "sparsity" in texts["eval"] and "loss" in texts["eval"]
    for text in texts.values():
        assert "in progress" not in text


def _demo_methods() -> list[tuple[str, str | None]]:
    """(method, distribution) of every packaged demo config, read from its stages."""
    found = []
    for path in sorted(DEMO_CONFIGS.glob("*.yaml")):
        stages = yaml.safe_load(path.read_text())["stages"]
        kinds = [stage["kind"] for stage in stages]
        if all(kind in ("dense", "finetune") for kind in kinds):
            found.append(("dense", None))
        for stage in stages:
            if stage["kind"] == "prune":
                found.append((stage["method"], None))
            elif stage["kind"] not in ("dense", "finetune"):
                found.append((stage["kind"], stage.get("distribution")))
    assert found, f"no demo configs in {DEMO_CONFIGS}"
    return found


def test_demo_help_names_every_method_it_runs(capsys):
    top = _words(_help([], capsys))
    demo_line = top[top.index(" demo "):]
    demo = _words(_help(["demo"], capsys))
    for method, distribution in _demo_methods():
        method = _words(method)
        assert re.search(rf"\b{method}\b", demo), f"demo --help does not name {method}"
        assert re.search(rf"\b{method}\b", demo_line), f"the demo line of --help does not name {method}"
        if distribution is not None:
            assert re.search(rf"\b{method} {_words(distribution)}\b", demo), f"{method} {distribution}"
    sparsities = {stage["sparsity"] for path in DEMO_CONFIGS.glob("*.yaml")
                  for stage in yaml.safe_load(path.read_text())["stages"] if "sparsity" in stage}
    for sparsity in sparsities:
        assert str(sparsity) in demo


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "ckpt.pt", "seed=1", "--config", "c.yaml", "device=cpu"],
        ["eval", "ckpt.pt", "--config", "c.yaml", "seed=1", "device=cpu"],
        ["eval", "--config", "c.yaml", "ckpt.pt", "seed=1", "device=cpu"],
        ["eval", "ckpt.pt", "seed=1", "--config", "c.yaml", "--masks", "m.npy", "device=cpu"],
    ],
)
def test_eval_overrides_before_or_after_the_options(argv):
    args = build_parser().parse_args(argv)
    assert args.command == "eval" and args.checkpoint == "ckpt.pt" and args.config == "c.yaml"
    assert args.overrides == ["seed=1", "device=cpu"]


def test_overrides_after_options_for_plan_too():
    args = build_parser().parse_args(["plan", "c.yaml", "--gpu-tflops", "100", "seed=1"])
    assert args.config == "c.yaml" and args.gpu_tflops == 100 and args.overrides == ["seed=1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "ckpt.pt", "--config", "c.yaml", "stray"], "unrecognized arguments: stray"),
        (["eval", "ckpt.pt", "--config", "c.yaml", "--bogus=1"], "unrecognized arguments: --bogus=1"),
        (["report", "run", "seed=1"], "unrecognized arguments: seed=1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_argument_errors_are_argparse_one_liners(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("--help')")


def test_no_command_is_a_one_line_error_exit_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: give a COMMAND: run, plan, eval, report, demo, export, average (see 'sparsetrain --help')\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert progress_bar(items, "epoch 1", enabled=True) is items
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_bar(items, "epoch 1", enabled=False) is items
    bar = progress_bar(items, "epoch 1", enabled=True)
    assert bar is not items and list(bar) == items
    assert "epoch 1" in terminal.getvalue()


def test_demo_configs_pin_one_thread():
    paths = sorted(DEMO_CONFIGS.glob("*.yaml"))
    assert paths
    for path in paths:
        assert yaml.safe_load(path.read_text()).get("threads") == 1, path.name
