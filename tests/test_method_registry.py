"""The method registry: every method module is complete, plan predicts what a run does, the
``MethodScheduler`` in a hand-written loop gives the runner's masks, ``sparsetrain list``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsetrain import config as config_module
from sparsetrain.cli import main
from sparsetrain.config import parse_config
from sparsetrain.data.batching import derived_seed, epoch_batches
from sparsetrain.data.registry import load_dataset
from sparsetrain.methods import REGISTRY, MethodScheduler, stage_schemas
from sparsetrain.models import build_model
from sparsetrain.runner.components import build_optimizer, epoch_loader, seed_everything
from sparsetrain.runner.setup import resolve_timeline
from sparsetrain.runner.timeline import sparsity_after_events
from sparsetrain.runner.train import run
from sparsetrain.sparsity import select_targets

README = Path(__file__).resolve().parents[1] / "README.md"
INTERFACE = ("KINDS", "SCHEMA", "TRAINS", "PARTITIONED", "WORKER_KINDS", "layout", "events", "apply", "pruned_after",
             "evaluates_after", "preflight", "label", "distribution_label", "training_epochs")
PARTS = {"scheme": "layers", "kappa": 2}
STAGES = {  # one short run per method (and per one-shot budget)
    **{f"prune-{m}": [{"kind": "dense", "epochs": 1},
                      {"kind": "prune", "method": m,
                       "sparsity": {r"^1\.": 0.5, ".*": 0.8} if m == "profile" else 0.8},
                      {"kind": "finetune", "epochs": 1}]
       for m in ("gp", "gpmt", "uniform", "erk", "profile", "random")},
    "gmp": [{"kind": "gmp", "sparsity": 0.8, "epochs": 2, "frequency": 2}],
    "set": [{"kind": "set", "sparsity": 0.8, "epochs": 2, "update_every": 2}],
    "rigl": [{"kind": "rigl", "sparsity": 0.8, "epochs": 2, "update_every": 2, "distribution": "uniform"}],
    "sgap": [{"kind": "sgap", "sparsity": 0.8, "partitions": PARTS, "epochs_per_step": 1, "finetune_epochs": 1}],
    "pgap": [{"kind": "pgap", "sparsity": 0.8, "partitions": PARTS, "epochs_per_step": 1, "finetune_epochs": 1}],
    # GaP without its own fine-tuning epochs, followed by the plain finetune stage the other rows use
    **{f"{kind}-then-finetune": [{"kind": kind, "sparsity": 0.8, "partitions": PARTS, "epochs_per_step": 1,
                                  "finetune_epochs": 0}, {"kind": "finetune", "epochs": 1}]
       for kind in ("sgap", "pgap")},
}


def _raw(tmp_path: Path, name: str, stages: list[dict]) -> dict:
    return {"name": name, "seed": 3, "threads": 1, "output_dir": str(tmp_path / name),
            "task": {"dataset": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [16]}}},
            "data": {"batch_size": 256}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "lr_schedule": {"kind": "constant"}, "training": {"progress": False}, "stages": stages}


def test_every_registered_method_is_complete():
    assert list(REGISTRY) == ["dense", "finetune", "prune", "sgap", "pgap", "gmp", "set", "rigl"]
    for kind, module in REGISTRY.items():
        missing = [name for name in INTERFACE if not hasattr(module, name)]
        assert not missing, f"{kind}: {module.__name__} lacks {missing}"
        assert kind in module.KINDS
        assert kind in module.SCHEMA.model_fields["kind"].annotation.__args__  # the schema's Literal tag
        assert set(module.WORKER_KINDS) <= set(module.KINDS)
        assert isinstance(module.label({"kind": kind}), str) and module.label({"kind": kind})
        assert isinstance(module.distribution_label({"kind": kind}), str)
    assert {m.SCHEMA for m in REGISTRY.values()} == set(stage_schemas())
    # the stage schemas live in the method modules; config.py re-exports them and builds the union
    assert config_module.GaPStage is REGISTRY["sgap"].SCHEMA and config_module.PruneStage is REGISTRY["prune"].SCHEMA
    assert [REGISTRY[k].label({"kind": k}) for k in ("sgap", "pgap", "gmp", "set")] == ["S-GaP", "P-GaP", "GMP", "SET"]
    assert REGISTRY["prune"].distribution_label({"kind": "prune", "method": "gpmt", "min_threshold": 0.5}) == \
        "Global + MT 0.5%"


def test_unregistered_kind_is_a_one_line_error_naming_the_registered_ones():
    with pytest.raises(config_module.ConfigError, match="'dense', 'finetune', 'prune', 'sgap', 'pgap', 'gmp', "
                       "'set', 'rigl'"):
        parse_config({"stages": [{"kind": "lottery", "epochs": 1}]})


@pytest.mark.parametrize("name", list(STAGES))
def test_plan_predicts_the_events_a_run_applies(tmp_path, name):
    config = parse_config(_raw(tmp_path, name, STAGES[name]))
    result = run(config, log=lambda line: None)
    targets = select_targets(result.model)
    timeline = resolve_timeline(config, targets, 1257)  # the digits training split
    happened = [json.loads(line) for line in (tmp_path / name / "events.jsonl").read_text().splitlines()]
    planned = timeline.schedule.events()
    assert [(e.step, e.kind, e.stage, e.label) for e in planned] == \
        [(h["step"], h["kind"], h["stage"], h["label"]) for h in happened]
    predicted = sparsity_after_events(timeline, [t.shape for t in targets])
    for after, h in zip(predicted, happened):
        assert math.isnan(after) if name == "prune-profile" else after == pytest.approx(h["sparsity"], rel=1e-12)
    recorded = json.loads((tmp_path / name / "timeline.json").read_text())  # what the report reads
    assert [(e["step"], e["kind"]) for e in recorded["events"]] == [(e.step, e.kind) for e in planned]
    sparsifying = next(s for s in reversed(recorded["stages"]) if s["kind"] not in ("dense", "finetune"))
    assert sparsifying["label"] == REGISTRY[sparsifying["kind"]].label(config.stages[sparsifying["index"]]
                                                                         .model_dump(mode="json"))


def _hand_written_loop(raw: dict) -> MethodScheduler:
    """The runner's data order, model and optimizer, but the mask events from a MethodScheduler."""
    config = parse_config(raw)
    seed_everything(config.seed)
    split = load_dataset("digits")
    model = build_model("mlp", input_shape=split.input_shape, num_classes=split.num_classes, hidden=[16])
    (stage,) = raw["stages"]
    spe = math.ceil(len(split.train) / config.data.batch_size)
    scheduler = MethodScheduler(stage, model, spe, seed=config.seed)
    optimizer = build_optimizer(model, config.stage_optimizer(config.stages[0]))
    step = 0
    for epoch in range(scheduler.layout.epochs):
        shards, _ = epoch_batches(len(split.train), config.data, config.seed, epoch)
        model.train()
        for inputs, labels in epoch_loader(split.train, config.data, shards, derived_seed(config.seed, epoch, 0, 1)):
            if any(e.resets_optimizer for e in scheduler.before_step(step, optimizer)):
                optimizer = build_optimizer(model, config.stage_optimizer(config.stages[0]))
            optimizer.zero_grad(set_to_none=False)
            F.cross_entropy(model(inputs), labels).backward()
            scheduler.after_backward(step, optimizer)
            optimizer.step()
            scheduler.after_step(optimizer)
            step += 1
    assert step == scheduler.total_steps
    return scheduler


@pytest.mark.parametrize("name", ["sgap", "rigl"])
def test_scheduler_in_a_hand_written_loop_gives_the_runners_masks(tmp_path, name):
    raw = _raw(tmp_path, name, STAGES[name])
    result = run(parse_config(raw), log=lambda line: None)
    scheduler = _hand_written_loop(raw)
    assert len(scheduler.events) == len((tmp_path / name / "events.jsonl").read_text().splitlines())
    for mine, theirs in zip(scheduler.masks.masks, result.masks.masks):
        assert torch.equal(mine, theirs)
    assert scheduler.masks.checksum() == result.masks.checksum()


def test_readme_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("### GaP (or any method) in your own training loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), {})
    assert capsys.readouterr().out.strip() == "sparsity 0.8999"


def test_scheduler_takes_a_kind_with_fields_or_a_stage_mapping():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    by_kind = MethodScheduler("gmp", model, 4, sparsity=0.5, epochs=2)
    by_mapping = MethodScheduler({"kind": "gmp", "sparsity": 0.5, "epochs": 2}, model, 4)
    assert by_kind.events == by_mapping.events and by_kind.events[-1].sparsity == 0.5
    with pytest.raises(ValueError, match="lottery"):
        MethodScheduler("lottery", model, 4)
    with pytest.raises(ValueError, match="runner"):
        MethodScheduler("pgap", model, 4, sparsity=0.5, partitions=PARTS, epochs_per_step=1, finetune_epochs=1)
    with pytest.raises(ValueError, match="sparsity"):
        MethodScheduler("rigl", model, 4, sparsity=1.5, epochs=1)


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if not line.startswith(" ")]
    assert headings == ["tasks:", "datasets:", "models:", "methods:", "partitions:"]
    items = {line.strip().split(" ")[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"classification", "digits", "mnist1d", "mlp", "small_resnet", "resnet_stages", "layers"} <= items
    assert set(REGISTRY) <= items
    assert "  prune (method: gp, gpmt, uniform, erk, profile, random)" in out.splitlines()
