"""No code runs from a file we read: crafted pickles are refused on every path, real formats load."""

import argparse
import builtins
import collections
import os
import pickle
import random
import sys
import types

import numpy as np
import pytest
import torch
import yaml
from tiny_config import tiny_config

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.data.cifar10 import read_cifar10_batch
from sparsetrain.errors import UserError
from sparsetrain.interop.gpmt_files import load_mask_list, write_weight_mask_npy
from sparsetrain.runner.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    load_state_dict_from,
    restore_rng_state,
)
from sparsetrain.safe_pickle import (
    FairseqDictionary,
    UnsafePickleError,
    safe_torch_load,
)
from sparsetrain.tasks import build_task

TINY = tiny_config(seed=1, optimizer={"name": "sgd", "lr": 0.05}, stages=[{"kind": "dense", "epochs": 1}])


class _Payload:
    """Unpickling this calls ``func(*args)``: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(marker):
    return {
        "os.system": (_Payload(os.system, f"touch {marker}"), "system"),
        "exec": (_Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
    }


ATTACKS = ["os.system", "exec"]


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture
def state(config_path):
    """A state dict of the tiny config's model (``0.weight``, ``0.bias`` ... of an MLP)."""
    model = build_task(load_config(config_path)).build_model()
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_one_line_refusal(err, path, global_name):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and repr(str(path)) in err and global_name in err, err
    assert "refused" in err


@pytest.mark.parametrize("attack", ATTACKS)
def test_eval_refuses_a_malicious_checkpoint(tmp_path, config_path, state, capsys, attack):
    marker = tmp_path / "pwned"
    payload, name = _attacks(marker)[attack]
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": state, "extra": payload}, path)
    assert main(["eval", str(path), "--config", str(config_path)]) == 2
    _assert_one_line_refusal(capsys.readouterr().err, path, name)
    assert not marker.exists()


def test_init_checkpoint_refuses_a_malicious_checkpoint(tmp_path, config_path, state, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "init.pt"
    torch.save({"model": state, "x": _attacks(marker)["os.system"][0]}, path)
    argv = ["run", str(config_path), f"output_dir={tmp_path / 'out'}", f"init.checkpoint={path}"]
    assert main(argv) == 2
    _assert_one_line_refusal(capsys.readouterr().err, path, "system")
    assert not marker.exists()


@pytest.mark.parametrize("attack", ATTACKS)
def test_resume_refuses_a_malicious_run_checkpoint(tmp_path, config_path, capsys, attack):
    run_dir = tmp_path / "run"
    assert main(["run", str(config_path), f"output_dir={run_dir}"]) == 0
    capsys.readouterr()
    marker = tmp_path / "pwned"
    payload, name = _attacks(marker)[attack]
    good = safe_torch_load(run_dir / "checkpoint.pt")
    torch.save({**good, "rng": payload}, run_dir / "checkpoint.pt")
    assert main(["run", "--resume", str(run_dir)]) == 2
    _assert_one_line_refusal(capsys.readouterr().err, run_dir / "checkpoint.pt", name)
    assert not marker.exists()


def _cifar_batch(n=4):
    rng = np.random.default_rng(0)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [int(x) for x in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * n}


@pytest.mark.parametrize("attack", ATTACKS)
def test_cifar10_batch_refuses_a_malicious_pickle(tmp_path, attack):
    marker = tmp_path / "pwned"
    payload, name = _attacks(marker)[attack]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({**_cifar_batch(), b"extra": payload}, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        read_cifar10_batch(path)
    message = str(info.value)
    assert "\n" not in message and repr(str(path)) in message and name in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_batch_of_plain_data_loads(tmp_path, protocol):
    batch = _cifar_batch()
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))  # protocol 2 writes bytes via _codecs.encode
    images, labels = read_cifar10_batch(path)
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == batch[b"labels"]
    assert np.array_equal(images[1, 0, 0], batch[b"data"][1, [0, 1024, 2048]])


@pytest.mark.parametrize("attack", ATTACKS)
def test_weight_mask_npy_and_mask_lists_refuse_malicious_pickles(tmp_path, config_path, state, capsys, attack):
    marker = tmp_path / "pwned"
    payload, name = _attacks(marker)[attack]
    npy = tmp_path / "weight_mask.npy"
    array = np.empty(2, dtype=object)
    array[0], array[1] = torch.ones(2), payload
    np.save(npy, array, allow_pickle=True)
    listed = tmp_path / "masks.pt"
    torch.save([torch.ones(2), payload], listed)
    for path in (npy, listed):
        with pytest.raises(UnsafePickleError, match=name) as info:
            load_mask_list(path)
        assert "\n" not in str(info.value) and repr(str(path)) in str(info.value)

    weights = tmp_path / "weights.pt"
    torch.save(state, weights)
    assert main(["eval", str(weights), "--config", str(config_path), "--masks", str(npy)]) == 2
    _assert_one_line_refusal(capsys.readouterr().err, npy, name)
    assert not marker.exists()


def test_a_pickled_model_object_is_refused_with_a_hint(tmp_path, config_path, capsys):
    model = build_task(load_config(config_path)).build_model()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    assert main(["eval", str(path), "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    _assert_one_line_refusal(err, path, "sparsetrain.models.mlp.MLP")
    assert "save model.state_dict() instead" in err


def test_unsupported_pickle_content_is_one_line(tmp_path):
    path = tmp_path / "p4.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path, pickle_protocol=4)  # opcodes torch's loader refuses
    with pytest.raises(CheckpointError, match=r"^checkpoint .*p4\.pt' holds data that sparsetrain refused to load \("):
        load_state_dict_from(path)


# ---- formats users bring --------------------------------------------------------------------


def _fake_fairseq_dictionary():
    """An object whose pickle names ``fairseq.data.dictionary.Dictionary``, as fairseq writes it."""
    modules = {name: types.ModuleType(name) for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}

    class Dictionary:
        pass

    Dictionary.__module__, Dictionary.__qualname__, Dictionary.__name__ = ("fairseq.data.dictionary", "Dictionary",
                                                                           "Dictionary")
    modules["fairseq.data.dictionary"].Dictionary = Dictionary
    d = Dictionary()
    d.bos_word, d.unk_word, d.pad_word, d.eos_word = "<s>", "<unk>", "<pad>", "</s>"
    d.symbols, d.count = ["<s>", "<pad>", "</s>", "<unk>", "hallo"], [1, 1, 1, 1, 7]
    d.indices = {s: i for i, s in enumerate(d.symbols)}
    d.bos_index, d.pad_index, d.eos_index, d.unk_index, d.nspecial = 0, 1, 2, 3, 4
    return d, modules


def _user_formats(state):
    sd = {k: v for k, v in state.items()}
    module_sd = {f"module.{k}": v for k, v in sd.items()}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 5])
    return {
        "gap": {"epoch": 3, "arch": "mlp", "best_prec1": 50.0, "optimizer": optimizer.state_dict(),
                "state_dict": module_sd},
        "gpmt_prunedmodel": {"state_dict": sd},
        "fairseq": {"args": argparse.Namespace(arch="transformer", lr=[0.0005], adam_betas="(0.9, 0.98)"),
                    "model": sd,
                    "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                           "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 4.2},
                                           "num_updates": 1000}],
                    "extra_state": {"train_iterator": {"epoch": 2, "iterations_in_epoch": 0}, "val_loss": 4.2},
                    "last_optimizer_state": optimizer.state_dict()},
        "pointnet2": {"epoch": 7, "train_acc": np.float64(0.9), "test_acc": np.float64(0.8),
                      "class_avg_iou": np.float64(0.7), "inctance_avg_iou": np.float64(0.75),
                      "model_state_dict": sd, "optimizer_state_dict": optimizer.state_dict()},
        "nvidia_ssd": {"epoch": 64, "iteration": 118000, "optimizer": optimizer.state_dict(),
                       "scheduler": scheduler.state_dict(), "label_map": {1: "person", 2: "bicycle"},
                       "model": module_sd},
    }


@pytest.mark.parametrize("kind", ["gap", "gpmt_prunedmodel", "fairseq", "pointnet2", "nvidia_ssd"])
def test_user_checkpoint_formats_load(tmp_path, state, kind):
    payload = _user_formats(state)[kind]
    path = tmp_path / f"{kind}.pt"
    if kind == "fairseq":
        dictionary, modules = _fake_fairseq_dictionary()
        payload["extra_state"]["src_dict"] = dictionary
        sys.modules.update(modules)
        try:
            torch.save(payload, path)
        finally:
            for name in modules:
                del sys.modules[name]
        assert b"fairseq.data.dictionary" in path.read_bytes()
    else:
        torch.save(payload, path)
    loaded = load_state_dict_from(path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    if kind == "fairseq":
        raw = safe_torch_load(path)
        stand_in = raw["extra_state"]["src_dict"]
        assert type(stand_in) is FairseqDictionary and stand_in.symbols[4] == "hallo" and stand_in.pad_index == 1
        assert raw["args"].arch == "transformer" and "fairseq" not in sys.modules
    if kind == "pointnet2":
        assert safe_torch_load(path)["test_acc"] == np.float64(0.8)


def test_eval_reads_gpmt_prunedmodel_with_weight_mask_npy_and_a_fairseq_file(tmp_path, config_path, state, capsys):
    formats = _user_formats(state)
    gpmt, fairseq = tmp_path / "prunedmodel.pth.tar", tmp_path / "checkpoint_best.pt"
    torch.save(formats["gpmt_prunedmodel"], gpmt)
    torch.save(formats["fairseq"], fairseq)
    names = [k for k, v in state.items() if k.endswith("weight") and v.dim() > 1]
    write_weight_mask_npy(tmp_path / "weight_mask.npy", [torch.ones_like(state[k]) for k in names])
    assert main(["eval", str(gpmt), "--config", str(config_path), "--masks", str(tmp_path / "weight_mask.npy")]) == 0
    assert "weights non-zero where the masks prune: 0" in capsys.readouterr().out
    assert main(["eval", str(fairseq), "--config", str(config_path)]) == 0
    assert "top-1" in capsys.readouterr().out


def test_load_model_weights_into_the_model(tmp_path, config_path, state):
    model = build_task(load_config(config_path)).build_model()
    path = tmp_path / "ssd.pt"
    torch.save(_user_formats({k: v + 1 for k, v in state.items()})["nvidia_ssd"], path)
    load_model_weights(model, path)
    assert all(torch.equal(v, state[k] + 1) for k, v in model.state_dict().items())


# ---- our own run checkpoints ----------------------------------------------------------------


def test_new_run_checkpoints_need_no_numpy_global_and_v1_still_resumes(tmp_path, config_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(config_path), f"output_dir={run_dir}"]) == 0
    capsys.readouterr()
    path = run_dir / "checkpoint.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert torch.load(path, weights_only=True)["format"] == FORMAT == "sparsetrain-checkpoint-v2"

    # A v1 checkpoint as the previous version wrote it: NumPy's RNG state is its tuple with an array.
    np.random.seed(11)
    v1_numpy = np.random.get_state()
    v1 = {**torch.load(path, weights_only=True), "format": "sparsetrain-checkpoint-v1",
          "rng": {"python": random.getstate(), "numpy": v1_numpy, "torch": torch.get_rng_state()}}
    torch.save(v1, path)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert (run_dir / "metrics.jsonl").read_text() == metrics

    torch.save(v1, path)
    payload = load_checkpoint(path)
    assert payload["format"] == FORMAT and isinstance(payload["rng"]["numpy"][1], list)
    np.random.seed(0)
    restore_rng_state(payload["rng"])
    after = np.random.get_state()
    assert np.array_equal(after[1], v1_numpy[1]) and after[2:] == v1_numpy[2:]


def test_unknown_run_checkpoint_format_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "sparsetrain-checkpoint-v9", "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"has format 'sparsetrain-checkpoint-v9', which this sparsetrain "
                                              r"cannot read") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    torch.save({"format": "something else"}, path)
    with pytest.raises(CheckpointError, match="is not a sparsetrain run checkpoint"):
        load_checkpoint(path)


def test_refusals_are_user_errors(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(collections.OrderedDict(x=_Payload(print, "hi")), path)
    with pytest.raises(UserError, match=r"needs the global 'builtins.print'"):
        load_state_dict_from(path)
