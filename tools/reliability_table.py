"""Write docs/reliability.md: every bad input of tests/reliability_cases.py, what the user sees, and its test.

    .venv/bin/python tools/reliability_table.py [--out docs/reliability.md]

Each case runs exactly as ``tests/test_reliability.py`` runs it (through ``run_case`` of
``tests/reliability_cases.py``, imported by path): the real CLI in process, in a fresh temporary
directory. The table shows the stderr line the user actually got. Behaviours that need a
subprocess, signals or torchrun (preemption, SIGKILL, a closed pipe) are held by other tests and
listed by hand at the end; the script checks that each of those tests exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES_FILE = ROOT / "tests" / "reliability_cases.py"
TEST_FILE = "tests/test_reliability.py"
WIDTH = 160

AREA_TITLES = {
    "config": "Config files, keys, ranges and overrides",
    "cli": "Command line",
    "checkpoint": "Checkpoints (eval, init.checkpoint, --resume)",
    "masks": "Mask files (eval --masks)",
    "data": "Data (npz, CIFAR-10, ImageNet folders)",
    "run-dir": "Run directories",
    "disk": "Disk and paths",
    "training": "Training",
}

# Behaviours held by other tests (they need signals, subprocesses or torchrun): (what happens, what the
# user sees, exit status, tests). Every test named here must exist; main() checks it.
OTHER_TESTS: list[tuple[str, str, str, list[str]]] = [
    ("SIGTERM in the middle of an epoch (a scheduler preempting the job)",
     "`sparsetrain: stopped by SIGTERM at step N: checkpoint saved to '<run>/checkpoint.pt'; continue with "
     "sparsetrain run --resume <run>`; the resumed run is bit-identical to an uninterrupted one", "143",
     ["tests/test_preemption.py::test_sigterm_mid_epoch_then_resume_is_bit_identical",
      "tests/test_preemption.py::test_sigterm_through_the_cli_then_resume"]),
    ("SIGUSR1 in the middle of an epoch", "the same as SIGTERM: a checkpoint, then `stopped by SIGUSR1 ...`",
     "138", ["tests/test_preemption.py::test_sigusr1_stops_too"]),
    ("SIGTERM to a torchrun job (every rank)", "every rank agrees on the stop, rank 0 checkpoints; the resumed "
     "run is bit-identical", "143", ["tests/test_preemption.py::test_sigterm_under_torchrun_then_resume_is_bit_identical"]),
    ("SIGKILL (no chance to checkpoint), then `run --resume`", "the run continues from its last checkpoint and "
     "ends bit-identical to an uninterrupted run", "killed, then 0",
     ["tests/test_runner_resume.py::test_resume_after_sigkill_is_bit_identical"]),
    ("an exception (a crash) right after a mid-epoch step checkpoint (`training.checkpoint_every_steps`)",
     "resuming continues from that step checkpoint and ends bit-identical to an uninterrupted run", "- (library API)",
     ["tests/test_preemption.py::test_crash_after_a_step_checkpoint_resumes_bit_identically"]),
    ("stdout closed early (`sparsetrain run ... | head -1`)", "the run goes on to the end; its log lines still "
     "go to `train.log`", "0", ["tests/test_preemption.py::test_closed_output_pipe_does_not_end_the_run"]),
    ("a NaN loss with `training.on_nonfinite: skip` or `continue`", "`skip`: the update of that batch is "
     "skipped and logged; `continue`: training goes on (the pre-0.2 behaviour); both finish", "0",
     ["tests/test_preemption.py::test_nonfinite_policies_skip_and_continue_finish"]),
    ("a NaN loss with `training.on_nonfinite: stop` (the default)", "`error: training loss is nan at step N "
     "(stage ..., epoch ...); first non-finite tensor: ...`; no final model", "2",
     ["tests/test_preemption.py::test_nonfinite_loss_stops_the_run_with_a_one_line_error",
      "tests/test_preemption.py::test_nonfinite_check_names_a_bad_input_batch"]),
    ("corrupt or foreign run checkpoints on resume (library API)", "a one-line `CheckpointError` naming the file",
     "-", ["tests/test_runner_resume.py::test_corrupt_and_foreign_checkpoints_are_refused"]),
]


def load_cases():
    spec = importlib.util.spec_from_file_location("reliability_cases", CASES_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability_cases"] = module
    spec.loader.exec_module(module)
    return module


def check_named_tests() -> None:
    missing = []
    for _, _, _, tests in OTHER_TESTS:
        for node in tests:
            path, _, name = node.partition("::")
            text = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
            if not re.search(rf"^def {re.escape(name)}\(", text, re.MULTILINE):
                missing.append(node)
    if missing:
        raise SystemExit(f"tests named in OTHER_TESTS do not exist: {', '.join(missing)}")


def shown(outcome, tmp: Path, code_expected: int) -> str:
    """What the user sees, on one line: the stderr line, or a summary of a traceback or several lines."""
    text = outcome.stderr.replace(str(tmp), "<tmp>")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        if code_expected == 0 and outcome.code == 0:
            out = [line for line in outcome.stdout.replace(str(tmp), "<tmp>").strip().splitlines() if line.strip()]
            return "(no error; stdout: " + (out[-1] if out else "") + ")"
        return "(nothing on stderr)"
    if "Traceback (most recent call last)" in text:
        return f"traceback ({len(lines)} lines) ending {lines[-1].strip()}"
    if len(lines) > 1:
        return f"{len(lines)} lines: " + " ⏎ ".join(line.strip() for line in lines[:2]) + (" ⏎ …" if len(lines) > 2
                                                                                          else "")
    return lines[0]


def truncate(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def code_span(text: str) -> str:
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args(argv)
    check_named_tests()
    cases = load_cases()
    rows: dict[str, list[tuple[str, str, str, str]]] = {area: [] for area in cases.AREAS}  # what, seen, exit, test
    known: list[str] = []
    passed = failed = xfailed = xpassed = skipped = 0
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="reliability-") as root:
        for number, case in enumerate(cases.CASES, 1):
            test = f"`{TEST_FILE}::test_bad_input[{case.id}]`"
            if case.skip:
                skipped += 1
                rows[case.area].append((cell(case.what), f"(skipped here: {cell(case.skip)})", str(case.code), test))
                continue
            tmp = Path(root) / case.id
            outcome = cases.run_case(case, tmp)
            found = cases.problems(case, outcome)
            seen = code_span(truncate(shown(outcome, tmp, case.code)))
            if case.xfail:
                if found:
                    xfailed += 1
                    seen = f"**known bug:** {cell(case.xfail)}. Seen: {seen}"
                    known.append(f"- `{case.id}` ({case.area}): {cell(case.what)}: {cell(case.xfail)}. "
                                 f"Reproduce: `sparsetrain {' '.join(case.argv)}` with the case's setup "
                                 f"(`{TEST_FILE}::test_bad_input[{case.id}]`).")
                else:
                    xpassed += 1
                    seen = f"{seen} (fixed: the case's xfail marker can go)"
            elif found:
                failed += 1
                seen = f"**FAILS:** {cell('; '.join(found))}. Seen: {seen}"
            else:
                passed += 1
            if case.after is not None and not found:
                seen += " — after-check holds"
            rows[case.area].append((cell(case.what), seen, str(outcome.code), test))
            print(f"{number:4d} {case.id:40s} {'ok' if not found else ('xfail' if case.xfail else 'FAIL')}",
                  file=sys.stderr)
    elapsed = time.time() - started
    total = len(cases.CASES)
    parts = [
        "# Reliability: bad inputs and what the user sees",
        "",
        f"Every bad input below was tried through the real command line (`sparsetrain.cli.main`) by "
        f"`{TEST_FILE}`: {total} cases over config files and keys, overrides, the command line, checkpoints, "
        "mask files, data files, run directories, the disk and training. For each one the test holds:",
        "",
        "- the exit status (2 for bad input; 0 where the input is handled and the run goes on);",
        "- stderr is exactly one line, `error: <message>`, and the message names the bad value (the pattern "
        "each case expects is in `tests/reliability_cases.py`); no traceback;",
        "- its after-check, where it has one: the user's files are byte-identical afterwards, no "
        "`model_final.pt` or half-written (`.tmp`) file is left, nothing a malicious pickle asked for ran.",
        "",
        "A full disk is simulated with `RLIMIT_FSIZE` (writes past the limit fail with `File too large`, as "
        "`ENOSPC` would); `/proc` stands for a path that cannot be written even by root.",
        "",
        (f"Result of the last generation: all {total} cases hold ({elapsed:.0f} s); no known bug is open."
         if passed == total else
         f"Result of the last generation: {passed} of {total} hold, {xfailed} known bugs (marked `xfail` in the "
         f"test, listed below), {failed} failing, {xpassed} fixed but still marked xfail, {skipped} skipped "
         f"({elapsed:.0f} s)."),
        "`<tmp>` stands for the case's temporary directory.",
        "",
        "Regenerate this file with `.venv/bin/python tools/reliability_table.py` (it runs every case the way "
        "the test does); run the test with `.venv/bin/python -m pytest -q tests/test_reliability.py`.",
        "",
    ]
    if known:
        parts += ["## Known bugs still open", "", *known, ""]
    number = 0
    for area in cases.AREAS:
        if not rows[area]:
            continue
        parts += [f"## {AREA_TITLES.get(area, area)}", "", "| # | bad input | what the user sees | exit | test |",
                  "|---|---|---|---|---|"]
        for what, seen, code, test in rows[area]:
            number += 1
            parts.append(f"| {number} | {what} | {seen} | {code} | {test} |")
        parts.append("")
    parts += ["## Signals, crashes and policies held by other tests", "",
              "These need a subprocess, signals or torchrun, so other test files hold them.", "",
              "| # | what happens | what the user sees | exit | test |", "|---|---|---|---|---|"]
    for i, (what, sees, code, tests) in enumerate(OTHER_TESTS, 1):
        parts.append(f"| S{i} | {cell(what)} | {sees.replace('|', chr(92) + '|')} | {code} | "
                     f"{', '.join(f'`{t}`' for t in tests)} |")
    parts.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print(f"{out}: {total} cases, {passed} hold, {xfailed} known bugs, {failed} failing, {xpassed} xpass, "
          f"{skipped} skipped ({elapsed:.1f} s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
