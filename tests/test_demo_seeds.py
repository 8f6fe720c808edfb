"""`sparsetrain demo --seeds 0,1,2 --jobs N`: every config once per seed, the table as mean ± sample std
over the seeds (with the per-seed values), worker processes giving the same runs as one process."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml
from tiny_config import tiny_config

from sparsetrain.cli import main


def _configs(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    dense = tiny_config(name="dense", stages=[{"kind": "dense", "epochs": 1}])
    (configs / "0_dense.yaml").write_text(yaml.safe_dump(dense))
    (configs / "1_gp.yaml").write_text(yaml.safe_dump(tiny_config(name="gp")))
    return configs


def _final_top1(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["final"]["test/top1"]


def test_seeds_give_mean_and_std_over_the_seeds(tmp_path, capsys):
    configs, out = _configs(tmp_path), tmp_path / "demo"
    assert main(["demo", "--configs", str(configs), "--out", str(out), "--seeds", "0,1,2"]) == 0
    text = (out / "results.md").read_text()
    assert "Mean ± sample std over seeds 0, 1, 2" in text
    assert "| Top-1 Accuracy (mean ± std, 3 seeds) | Best Top-1 (mean ± std) | per seed (0, 1, 2) |" in text
    for stem in ("0_dense", "1_gp"):
        values = [_final_top1(out / f"seed{seed}" / stem) for seed in (0, 1, 2)]
        assert len(set(values)) > 1  # the seeds really differ
        cell = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        assert f"| {cell} |" in text and f"| {per_seed} |" in text
        config = yaml.safe_load((out / "seed1" / stem / "config.yaml").read_text())
        assert config["seed"] == 1
    assert (out / "seed2" / "results.md").is_file()  # each seed's own table too


def test_worker_processes_give_the_same_runs(tmp_path, capsys):
    configs = _configs(tmp_path)
    (configs / "0_dense.yaml").unlink()
    assert main(["demo", "--configs", str(configs), "--out", str(tmp_path / "one"), "--seeds", "0,1"]) == 0
    assert main(["demo", "--configs", str(configs), "--out", str(tmp_path / "two"), "--seeds", "0,1",
                 "--jobs", "2"]) == 0
    for seed in (0, 1):
        for stem in ("1_gp",):
            assert _final_top1(tmp_path / "two" / f"seed{seed}" / stem) == _final_top1(
                tmp_path / "one" / f"seed{seed}" / stem)
    table = lambda d: (d / "results.md").read_text()
    assert table(tmp_path / "two") == table(tmp_path / "one")


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,0"], "seeds must be distinct"),
    (["--seeds", "a"], "is not a comma-separated list of seeds"),
    (["--jobs", "0"], "--jobs 0 must be at least 1"),
])
def test_bad_seeds_and_jobs_are_one_line_errors(tmp_path, capsys, argv, message):
    try:
        status = main(["demo", "--configs", str(_configs(tmp_path)), "--out", str(tmp_path / "x"), *argv])
    except SystemExit as usage:  # argparse's own usage errors
        status = usage.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
