"""targets.dense_first / dense_last: the stem and the classifier kept dense by name of intent, not by
regex; plan says which and why; runs record it; configs without them keep their fingerprints."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny_config import tiny_config

from sparsetrain.cli import main
from sparsetrain.config import load_config, parse_config
from sparsetrain.errors import UserError
from sparsetrain.runner.setup import build_setup
from sparsetrain.runner.train import run

RESNET = {"dataset": {"name": "mnist1d", "options": {"num_samples": 400}},
          "model": {"name": "small_resnet", "options": {"width": 4}}}


def _config(tmp_path, name, targets, task=None, **extra):
    config = tiny_config(name=name, output_dir=str(tmp_path / name), targets=targets, **extra)
    if task is not None:
        config["task"] = task
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("first, last", [(True, False), (False, True), (True, True)])
def test_the_first_and_last_selected_weights_stay_dense(tmp_path, first, last):
    everything = build_setup(load_config(_config(tmp_path, "all", {}, RESNET)), lay_out=False)
    names = [t.name for t in everything.targets]
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight"
    setup = build_setup(load_config(_config(tmp_path, "ends", {"dense_first": first, "dense_last": last}, RESNET)),
                        lay_out=False)
    expected = names[1 if first else 0 : len(names) - 1 if last else len(names)]
    assert [t.name for t in setup.targets] == expected
    why = [(name, reason) for name, reason in setup.kept_dense]
    assert why == ([("conv1.weight", "targets.dense_first: the first target")] if first else []) + (
        [("fc.weight", "targets.dense_last: the last target")] if last else [])


def test_plan_and_run_say_which_weights_are_dense(tmp_path, capsys):
    path = _config(tmp_path, "gp", {"dense_first": True}, RESNET)
    assert main(["plan", str(path)]) == 0
    assert "kept dense: conv1.weight (targets.dense_first: the first target)" in capsys.readouterr().out
    result = run(load_config(path), log=lambda line: None)
    assert "conv1.weight" not in result.masks.names
    timeline = json.loads((tmp_path / "gp" / "timeline.json").read_text())
    assert timeline["kept_dense"] == [{"name": "conv1.weight", "why": "targets.dense_first: the first target"}]
    stem = result.model.state_dict()["conv1.weight"]
    assert int((stem == 0).sum()) == 0  # GP at 0.5 never touched it
    assert result.masks.sparsity() == pytest.approx(0.5, abs=1e-3)  # over the remaining targets


def test_nothing_left_is_a_one_line_error(tmp_path):
    # The tiny MLP has two targets; keeping both ends dense leaves none.
    with pytest.raises(UserError, match=r"targets.dense_first/dense_last leave no target: the selection has 2"):
        build_setup(load_config(_config(tmp_path, "none", {"dense_first": True, "dense_last": True})),
                    lay_out=False)


def test_configs_without_the_options_keep_their_fingerprint():
    plain = parse_config({"stages": [{"kind": "dense", "epochs": 1}]})
    explicit = parse_config({"targets": {"dense_first": False, "dense_last": False},
                             "stages": [{"kind": "dense", "epochs": 1}]})
    changed = parse_config({"targets": {"dense_first": True}, "stages": [{"kind": "dense", "epochs": 1}]})
    assert plain.fingerprint() == explicit.fingerprint() != changed.fingerprint()
