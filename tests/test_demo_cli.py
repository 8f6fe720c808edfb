"""The `sparsetrain demo` command and `python -m sparsetrain`, with tiny settings (a few seconds)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest

import sparsetrain
from sparsetrain.cli import main
from sparsetrain.demo import DEFAULT_MIN_THRESHOLD, run_demo
from sparsetrain.interop.gpmt_files import load_mask_list, read_layer_sparsities, read_prune_log
from sparsetrain.models.small_resnet import small_resnet

TINY = ["--dense-epochs", "1", "--finetune-epochs", "1"]
N_TARGETS = sum(t.numel for t in sparsetrain.select_targets(small_resnet(width=16)))
FLOOR = N_TARGETS * 5 // 1000  # MT 0.5% of all target weights
assert DEFAULT_MIN_THRESHOLD == 0.5


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--sparsities", "0.9", *TINY, "--out", str(out)]) == 0
    return out


def test_demo_writes_every_file(demo_out):
    expected = [
        "results.md",
        "layer_sparsity_gp_0.9.csv",
        "layer_sparsity_gpmt_0.9.csv",
        "gpmt_0.9/prune_log.csv",
        "gpmt_0.9/layer_sparsities.csv",
        "gpmt_0.9/prune_refined_log.csv",
        "gpmt_0.9/weight_mask.npy",
        "gpmt_0.9/mask_list.pt",
    ]
    for name in expected:
        assert (demo_out / name).is_file(), name
    assert not (demo_out / "gpmt_0.8").exists()


def test_results_table_rows_and_exact_sparsity(demo_out):
    header, separator, *rows = _table_rows((demo_out / "results.md").read_text())
    assert header == [
        "Model", "Method", "Partition", "Sparsity Ratio", "Sparsity Distribution",
        "Top-1 Accuracy", "Top-1 After Pruning", "Measured Sparsity",
    ]
    assert set(separator) == {"---"}
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("Dense", "-", "0", "-"),
        ("GP", "-", "0.9", "Global"),
        ("GPMT", "-", "0.9", "Global + MT 0.5%"),
    ]
    for row in rows:
        assert row[0] == "SmallResNet-w16"
        assert re.fullmatch(r"\d+\.\d\d%", row[5]), row
    for row in rows[1:]:
        match = re.fullmatch(r"(\d+\.\d+)% \(([\d,]+)/([\d,]+)\)", row[7])
        assert match, row[7]
        pruned, total = int(match[2].replace(",", "")), int(match[3].replace(",", ""))
        assert total == N_TARGETS
        assert pruned == round(0.9 * N_TARGETS)


@pytest.mark.parametrize("method", ["gp", "gpmt"])
def test_layer_csv_counts_add_up_to_the_target(demo_out, method):
    rows = _csv(demo_out / f"layer_sparsity_{method}_0.9.csv")
    assert [r["layer"] for r in rows][0] == "conv1.weight" and rows[-1]["layer"] == "fc.weight"
    assert sum(int(r["numel"]) for r in rows) == N_TARGETS
    assert sum(int(r["pruned"]) for r in rows) == round(0.9 * N_TARGETS)
    for r in rows:
        assert int(r["kept"]) + int(r["pruned"]) == int(r["numel"])
    if method == "gpmt":
        by_name = {r["layer"]: r for r in rows}
        assert by_name["conv1.weight"]["pruned"] == "0"  # the stem is smaller than the floor: dense
        assert all(int(r["kept"]) >= min(FLOOR, int(r["numel"])) for r in rows)


def test_gpmt_reference_files_match_the_csv(demo_out):
    rows = _csv(demo_out / "layer_sparsity_gpmt_0.9.csv")
    refined = read_prune_log(demo_out / "gpmt_0.9" / "prune_refined_log.csv")
    assert list(refined.pruned_counts) == [int(r["pruned"]) for r in rows]
    assert refined.post_accuracy is not None and refined.pre_accuracy is not None
    stage1 = read_prune_log(demo_out / "gpmt_0.9" / "prune_log.csv")  # the plain GP counts
    assert list(stage1.pruned_counts) == [int(r["pruned"]) for r in _csv(demo_out / "layer_sparsity_gp_0.9.csv")]
    sparsities = read_layer_sparsities(demo_out / "gpmt_0.9" / "layer_sparsities.csv")
    assert sparsities == [float(r["sparsity"]) for r in rows]
    for name in ("weight_mask.npy", "mask_list.pt"):
        masks = load_mask_list(demo_out / "gpmt_0.9" / name)
        assert [int(m.sum()) for m in masks] == [int(r["kept"]) for r in rows]


def test_run_demo_masks_are_exact_and_deterministic():
    quiet = dict(sparsities=[0.8], dense_epochs=1, finetune_epochs=1, width=8, threads=1, log=lambda *_: None)
    first, second = run_demo(**quiet), run_demo(**quiet)
    assert [r.method for r in first.rows] == ["gp", "gpmt"]
    for row in first.rows:
        assert row.masks.pruned_count() == round(0.8 * row.masks.numel())
        assert row.pruned == row.masks.pruned_count()
    assert first.table == second.table
    assert [r.masks.checksum() for r in first.rows] == [r.masks.checksum() for r in second.rows]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--sparsities", "1.5"], "1.5"),
        (["--sparsities", "0.8,abc"], "'abc'"),
        (["--sparsities", "0.99"], "0.99"),  # above GPMT's reachable maximum at MT 0.5%
        (["--min-threshold", "200"], "200"),
        (["--dense-epochs", "0"], "dense_epochs=0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, named):
    out = tmp_path / "out"
    assert main(["demo", *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""  # rejected before any training
    assert not out.exists()


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_python_m_sparsetrain_version():
    command = [sys.executable, "-m", "sparsetrain", "--version"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sparsetrain {sparsetrain.__version__}"
