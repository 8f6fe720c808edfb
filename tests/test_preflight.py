"""Pre-flight: `plan` and the start of `run` refuse, in seconds and before any epoch, what would fail later."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tiny_config import tiny_config
from torch import nn

import sparsetrain
from sparsetrain.cli import main
from sparsetrain.config import parse_config
from sparsetrain.errors import UserError
from sparsetrain.runner import train as train_module
from sparsetrain.runner.preflight import (
    check_processes,
    check_run,
    world_size_from_environment,
)
from sparsetrain.runner.setup import resolve_timeline
from sparsetrain.sparsity import SparsityError, select_targets

TINY = tiny_config(name="pre")
"""digits (64 inputs, 10 classes) and an MLP 64-16-10: targets '1.weight' (16x64) and '3.weight' (10x16)."""

GPMT_099 = ["stages.1.method=gpmt", "stages.1.sparsity=0.99", "stages.1.min_threshold=1"]
# N = 1024 + 160 = 1184 weights, floor m = floor(1184 * 1 / 100) = 11 kept per layer, so at most
# (1024 - 11 + 160 - 11) / 1184 = 98.1419% can be pruned.
PGAP_2 = "stages.1={kind: pgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, " \
         "partitions: {scheme: layers, kappa: 2}}"


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Any epoch (or any data loading for one) fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an epoch started")
    monkeypatch.setattr(train_module._Run, "train_epoch", forbidden, raising=False)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ")
    return err.strip()


def test_plan_refuses_unreachable_gpmt_with_the_reachable_maximum(cfg, capsys):
    assert main(["plan", str(cfg), *GPMT_099]) == 2
    err = _one_line_error(capsys)
    assert err == ("error: stages.1.sparsity=0.99 (prune gpmt) is unreachable with min_threshold=1.0%: every layer "
                   "keeps at least 11 weights, so the highest reachable sparsity of these 2 targets (1,184 weights) "
                   "is 98.1419%; valid: sparsity <= 0.9814, or a lower min_threshold")
    # the stated maximum is reachable: plan accepts it
    assert main(["plan", str(cfg), *GPMT_099[:2], "stages.1.sparsity=0.9814", GPMT_099[2]]) == 0


def test_run_refuses_unreachable_gpmt_before_any_epoch(cfg, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    assert main(["run", str(cfg), f"output_dir={out}", *GPMT_099]) == 2
    assert "highest reachable sparsity of these 2 targets (1,184 weights) is 98.1419%" in _one_line_error(capsys)
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""
    assert not (out / "checkpoint.pt").exists() and not (out / "model_final.pt").exists()


def test_the_refusal_agrees_with_the_engine_on_real_weights(cfg):
    """What pre-flight refuses from shapes, GPMT refuses on trained weights too (with the same maximum)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(SparsityError, match=r"highest reachable sparsity is 98\.1419%"):
        sparsetrain.prune(model, 0.99, method="gpmt", min_threshold=1.0)


@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=5),
    sparsity=st.floats(0.0, 0.999),
    min_threshold=st.sampled_from([0.0, 0.05, 1.0, 5.0, 20.0, 60.0]),
    seed=st.integers(0, 100),
)
def test_gpmt_refused_from_shapes_is_refused_by_the_engine_for_any_weights(sizes, sparsity, min_threshold, seed):
    """Pre-flight's bound is necessary: a refusal there means the event would fail whatever the weights."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip([3, *sizes[:-1]], sizes)])
    targets = select_targets(model)
    config = parse_config({"stages": [{"kind": "prune", "method": "gpmt", "sparsity": sparsity,
                                       "min_threshold": min_threshold}]})
    timeline = resolve_timeline(config, targets, 10)
    try:
        check_run(config, targets, timeline, world_size=1)
    except SparsityError as exc:
        if "unreachable" not in str(exc):
            return  # a sparsity that prunes every weight (no floor): not about the bound
        with pytest.raises(SparsityError, match="unreachable"):
            sparsetrain.prune(model, sparsity, method="gpmt", min_threshold=min_threshold)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_pgap_kappa_must_match_world_size_under_torchrun(cfg, tmp_path, capsys, monkeypatch, no_training, command):
    monkeypatch.setenv("WORLD_SIZE", "3")
    def no_process_group(*args, **kwargs):
        raise AssertionError("the process group was joined before the check")
    monkeypatch.setattr(train_module, "init_from_environment", no_process_group, raising=False)
    argv = [command, str(cfg), PGAP_2] + ([f"output_dir={tmp_path / 'run'}"] if command == "run" else [])
    assert main(argv) == 2
    assert _one_line_error(capsys) == (
        "error: stages.1 (pgap): P-GaP with kappa=2 needs WORLD_SIZE = kappa*g processes (g >= 1: 2, 4, 6, ...), got "
        "WORLD_SIZE=3; valid: torchrun --nproc-per-node 2 (one process per partition) or a multiple of 2 (g processes "
        "per partition, data parallel inside each group), or no torchrun (the 2 workers then train one after another)")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if command == "plan":
        assert main(argv) == 0
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["plan", str(cfg), PGAP_2]) == 0  # one process simulates both workers


def test_world_size_and_data_parallel_batch(cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match=r"^environment variable WORLD_SIZE='two' must be an integer >= 1"):
        world_size_from_environment()
    monkeypatch.setenv("WORLD_SIZE", "0")
    with pytest.raises(UserError, match="WORLD_SIZE='0'"):
        world_size_from_environment()
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size_from_environment() == 1
    config = parse_config(dict(TINY, data={"batch_size": 2}))
    model = nn.Sequential(nn.Linear(4, 3))
    timeline = resolve_timeline(config, select_targets(model), 10)
    check_processes(config, timeline, 2)
    with pytest.raises(UserError, match=r"data.batch_size=2 is the global batch; it must be at least WORLD_SIZE=4"):
        check_processes(config, timeline, 4)


@pytest.mark.parametrize(
    "stage, message",
    [
        ("{kind: sgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: layers, kappa: 5}}",
         "error: kappa=5 exceeds the 2 targets (valid: 1..2)"),
        ("{kind: sgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: layers}}",
         "error: scheme 'layers' needs kappa, an integer in 1..2 (the number of targets)"),
        ("{kind: sgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {kappa: 3}}",
         "error: kappa=3 exceeds the 2 blocks of these targets (valid: 1..2)"),
        (("{kind: pgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, "
         "partitions: {scheme: ['weight', 'conv']}}"), "error: partition regex 1 ('conv') of the regex list matches no"),
        (("{kind: pgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, "
         "partitions: {scheme: ['weight', '^3\\.']}}"), "error: target '3.weight' matches partition regexes 0"),
        (("{kind: sgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, "
         "partitions: {scheme: ['^1\\.', '^3\\.'], kappa: 3}}"),
         "error: kappa=3 does not match the 2 partition regexes of the regex list"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_partitions_fail_before_training(cfg, tmp_path, capsys, no_training, stage, message, command):
    argv = [command, str(cfg), f"stages.1={stage}"] + ([f"output_dir={tmp_path / 'run'}"] if command == "run" else [])
    assert main(argv) == 2
    assert _one_line_error(capsys).startswith(message)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.1.method=uniform", "stages.1.sparsity=0.999"],
         ("error: stages.1.sparsity=0.999 (prune uniform) prunes all 160 weights of target '3.weight' (10, 16), which "
         "would leave that layer no weight; valid: a sparsity that keeps a weight in every target (uniform: below "
         "0.996875 for this layer), or exclude the layer with targets.exclude")),
        (["stages.1.method=random", "stages.1.sparsity=0.9975"], ("(prune random) prunes all 160 weights of target "
         "'3.weight'")),
        (["stages.1.sparsity=0.9999"],
         ("error: stages.1.sparsity=0.9999 (prune gp) prunes all 1184 weights of 2 target(s) from '1.weight', which "
         "would leave no weight; valid: below 0.999578")),
        (["stages.1.method=gpmt", "stages.1.min_threshold=0", "stages.1.sparsity=0.9999"],
         "(prune gpmt) prunes all 1184 weights"),
        (["stages.1.method=erk", "stages.1.sparsity=0.999"], "error: stages.1.sparsity=0.999 (prune erk) prunes all"),
        (["stages.1.method=profile", "stages.1.sparsity={'^1\\.': 0.5, '^3\\.': 0.998}"],
         "error: stages.1.sparsity['^3\\\\.']=0.998 (prune profile) prunes all 160 weights of target '3.weight'"),
        (["stages.1.method=profile", "stages.1.sparsity={'^1\\.': 0.5}"],
         "error: stages.1.sparsity: no profile pattern matches target '3.weight'"),
        ([("stages.1={kind: sgap, sparsity: 0.999, epochs_per_step: 1, finetune_epochs: 1, "
          "partitions: {scheme: layers, kappa: 2}}")], "error: stages.1.sparsity=0.999 (sgap uniform) prunes all 160"),
        ([("stages.1={kind: sgap, sparsity: 0.9995, epochs_per_step: 1, finetune_epochs: 1, distribution: "
          "non-uniform, partitions: {scheme: layers, kappa: 2}}")],
         "error: stages.1.sparsity=0.9995 (sgap non-uniform, partition P2) prunes all 160 weights of 1 target(s)"),
        (["stages.1={kind: gmp, sparsity: 0.999, epochs: 2}"], "error: stages.1.sparsity=0.999 (gmp uniform) prunes"),
        (["stages.1={kind: gmp, sparsity: 0.9999, epochs: 2, distribution: global}"], "(gmp global) prunes all 1184"),
        (["stages.1={kind: rigl, sparsity: 0.999, epochs: 1, distribution: uniform}"], "(rigl uniform) prunes all 160"),
    ],
)
def test_a_sparsity_that_empties_a_layer_is_refused_by_plan(cfg, capsys, overrides, message):
    assert main(["plan", str(cfg), *overrides]) == 2
    err = _one_line_error(capsys)
    assert err.startswith(message) if message.startswith("error:") else message in err, err


def test_sparsities_that_keep_a_weight_everywhere_pass(cfg, capsys):
    for overrides in (["stages.1.method=uniform", "stages.1.sparsity=0.996"], ["stages.1.sparsity=0.999"],
                      ["stages.1.method=gpmt", "stages.1.sparsity=0.98", "stages.1.min_threshold=1"]):
        assert main(["plan", str(cfg), *overrides]) == 0, capsys.readouterr().err


def test_packaged_demo_configs_pass_preflight(capsys):
    configs = sorted((Path(sparsetrain.__file__).parent / "configs" / "demo").glob("*.yaml"))
    assert configs
    for path in configs:
        assert main(["plan", str(path)]) == 0, (path, capsys.readouterr().err)
    capsys.readouterr()


def test_check_run_uses_shapes_only():
    """Targets of a model on the meta device (no weights at all) are enough."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(2000, 1000), nn.ReLU(), nn.Linear(1000, 10))
    targets = select_targets(model)
    config = parse_config({"stages": [{"kind": "prune", "method": "gpmt", "sparsity": 0.995, "min_threshold": 0.5}]})
    timeline = resolve_timeline(config, targets, 100)
    floor = math.floor(2_010_000 * 0.5 / 100)
    with pytest.raises(SparsityError, match=f"every layer keeps at least {floor:,} weights"):
        check_run(config, targets, timeline, world_size=1)


@pytest.mark.parametrize(("world", "overrides", "message"), [
    ("4", ["training.on_nonfinite=skip"],
     "error: training.on_nonfinite='skip' is not supported with data parallelism (2 processes per P-GaP worker "
     "(WORLD_SIZE=4)): the ranks would disagree on which updates to skip; use 'stop' or 'continue'"),
    ("6", ["training.update_freq=2"],
     "error: training.update_freq=2 micro-batches per step are divided among 3 processes per P-GaP worker "
     "(WORLD_SIZE=6); valid: 1 or a multiple of 3"),
])
def test_pgap_group_data_parallel_options_are_refused_before_training(cfg, capsys, monkeypatch, no_training, world,
                                                                      overrides, message):
    """The options DDP inside each P-GaP worker's group cannot honour fail at `plan`, not when the P-GaP stage
    starts after the earlier stages trained."""
    monkeypatch.setenv("WORLD_SIZE", world)
    assert main(["plan", str(cfg), PGAP_2, *overrides]) == 2
    assert _one_line_error(capsys) == message
