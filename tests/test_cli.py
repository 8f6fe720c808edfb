"""The command line end to end on tiny settings: run, plan, eval, report, demo, errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparsetrain.cli import main

TINY = {
    "name": "tiny",
    "seed": 1,
    "threads": 1,
    "task": {"dataset": {"name": "digits"}, "model": {"name": "small_resnet", "options": {"width": 4}}},
    "data": {"batch_size": 128},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "training": {"progress": False},
    "stages": [
        {"kind": "dense", "epochs": 1},
        {"kind": "prune", "method": "gpmt", "sparsity": 0.75, "min_threshold": 2.0},
        {"kind": "finetune", "epochs": 1},
    ],
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_run_plan_eval_report(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    assert main(["plan", str(tiny_config), "data.batch_size=100"]) == 0
    plan = capsys.readouterr().out
    assert "2 epochs, 26 optimizer steps (13 per epoch, batch 100)" in plan
    assert re.search(r"step +13 \(epoch +1\): prune +gpmt 0.75 \(MT 2.0%\) -> sparsity 0.7500", plan)

    assert main(["run", str(tiny_config), f"output_dir={run_dir}", "data.batch_size=100"]) == 0
    out = capsys.readouterr().out
    assert "sparsity 0.7500" in out
    for name in ("config.yaml", "metrics.jsonl", "events.jsonl", "checkpoint.pt", "model_final.pt", "model_best.pt",
                 "summary.json", "report.md", "plot_metrics.png", "plot_layer_sparsity.png",
                 "gpmt_reference/prune_log.csv", "gpmt_reference/weight_mask.npy"):
        assert (run_dir / name).is_file(), name
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [13]  # the event the plan announced, at the step it announced
    summary = json.loads((run_dir / "summary.json").read_text())
    pruned = round(0.75 * summary["target_numel"])
    assert summary["sparsity"] == pruned / summary["target_numel"]
    final = torch.load(run_dir / "model_final.pt", weights_only=True)
    zeros = sum(int((final[name] == 0).sum()) for name in final if name.endswith("weight") and final[name].dim() > 1)
    assert zeros >= pruned

    # eval reads the plain state dict, a {'state_dict': ...} wrapper with module. prefixes, and our checkpoint
    wrapped = tmp_path / "wrapped.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in final.items()}}, wrapped)
    for checkpoint in (run_dir / "model_final.pt", wrapped, run_dir / "checkpoint.pt"):
        assert main(["eval", str(checkpoint), "--config", str(tiny_config)]) == 0
        text = capsys.readouterr().out
        assert f"sparsity {summary['sparsity']:.4f} (targets)" in text
        assert f"top-1 {summary['final']['test/top1']:.2f}%" in text

    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "GPMT" in (run_dir / "report.md").read_text()


def test_resume_flag_continues_a_finished_run_without_retraining(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_config), f"output_dir={run_dir}"]) == 0
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "{cfg}", "stages.1.sparsity=1.0"], "error: stages.1.sparsity=1.0: Input should be less than 1"),
        (["run", "{cfg}", "optimizer.lrr=1"], "error: unknown key 'optimizer.lrr'"),
        (["run", "{cfg}", "task.dataset.name=npz", "task.dataset.options.path=/no/such.npz"],
         "error: task.dataset.options: data path '/no/such.npz' does not exist"),
        (["run", "{cfg}", "stages.1.min_threshold=30"], "is unreachable with min_threshold=30.0%"),
        (["run"], "error: run needs a CONFIG file or --resume RUN_DIR"),
        (["run", "--resume", "{tmp}/nothing"], "error: cannot resume '{tmp}/nothing': the directory does not exist"),
        (["plan", "{tmp}/missing.yaml"], "error: config file '{tmp}/missing.yaml' does not exist"),
        (["eval", "{tmp}/none.pt", "--config", "{cfg}"], "error: checkpoint '{tmp}/none.pt' does not exist"),
        (["report", "{tmp}"], "is not a sparsetrain run directory (no run.json)"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_config, capsys, argv, message):
    argv = [a.format(cfg=tiny_config, tmp=tmp_path) for a in argv]
    if argv[0] == "run" and len(argv) > 1 and argv[1] == str(tiny_config):
        argv.append(f"output_dir={tmp_path / 'out'}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_demo_on_tiny_configs(tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    dense = dict(TINY, name="dense", stages=[{"kind": "dense", "epochs": 2}])
    (configs / "0_dense.yaml").write_text(yaml.safe_dump(dense))
    (configs / "1_gpmt.yaml").write_text(yaml.safe_dump(TINY))
    out = tmp_path / "demo"
    for _ in range(2):  # a second demo keeps the first one's finished runs and rewrites results.md
        assert main(["demo", "--configs", str(configs), "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    assert "| Model | Method | Partition | Sparsity Ratio | Sparsity Distribution | Top-1 Accuracy |" in text
    assert "| Dense | - | 0 | Dense |" in text
    assert "| GPMT | - | 0.75 | Global + MT 2% |" in text
    assert (out / "0_dense" / "report.md").is_file() and (out / "1_gpmt" / "report.md").is_file()


def test_python_dash_m_version():
    out = subprocess.run([sys.executable, "-m", "sparsetrain", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("sparsetrain ")


def test_eval_reads_both_seed_checkpoint_formats(tmp_path, tiny_config, capsys):
    """GaP: a {'state_dict': module.-prefixed, 'epoch', ...} dict with zeros; GPMT: prunedmodel.pth.tar
    ({'state_dict': plain keys}) plus weight_mask.npy in modules() order."""
    from sparsetrain.interop.gpmt_files import write_weight_mask_npy

    run_dir = tmp_path / "run"
    assert main(["run", str(tiny_config), f"output_dir={run_dir}"]) == 0
    capsys.readouterr()
    state = torch.load(run_dir / "model_final.pt", weights_only=True)
    gap = tmp_path / "gap_checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "small_resnet", "best_prec1": 50.0, "optimizer": {},
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, gap)
    gpmt = tmp_path / "prunedmodel.pth.tar"
    torch.save({"state_dict": state}, gpmt)
    names = [k for k, v in state.items() if k.endswith("weight") and v.dim() > 1]  # conv/linear, modules() order
    write_weight_mask_npy(tmp_path / "weight_mask.npy", [(state[k] != 0).float() for k in names])
    outputs = []
    for argv in (["eval", str(gap), "--config", str(tiny_config)],
                 ["eval", str(gpmt), "--config", str(tiny_config), "--masks", str(tmp_path / "weight_mask.npy")]):
        assert main(argv) == 0
        outputs.append(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    for out in outputs:
        assert f"top-1 {summary['final']['test/top1']:.2f}%" in out
    assert f"sparsity {summary['sparsity']:.4f}; weights non-zero where the masks prune: 0" in outputs[1]
