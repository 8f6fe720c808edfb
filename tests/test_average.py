"""`sparsetrain average` (fairseq's checkpoint averaging) over the epoch models `training.keep_last_models` keeps."""

from __future__ import annotations

import torch

from sparsetrain.cli import main
from sparsetrain.config import parse_config
from sparsetrain.runner.train import run
from tiny_config import tiny_config


def test_the_mean_of_the_last_epoch_models_keeps_the_fixed_masks(tmp_path, capsys):
    stages = [{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.5},
              {"kind": "finetune", "epochs": 3}]
    raw = tiny_config(output_dir=str(tmp_path / "run"), stages=stages,
                      training={"progress": False, "keep_last_models": 2})
    result = run(parse_config(raw), log=lambda line: None)
    kept = sorted((tmp_path / "run" / "models").glob("epoch_*.pt"))
    assert [p.name for p in kept] == ["epoch_0003.pt", "epoch_0004.pt"]  # only the newest 2 of 4 epoch ends
    last = torch.load(kept[-1], weights_only=True)
    for key, value in result.model.state_dict().items():
        assert torch.equal(last[key], value), key  # the final epoch's model is the final model
    capsys.readouterr()
    assert main(["average", str(tmp_path / "run"), "--last", "2", "--out", str(tmp_path / "avg.pt")]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    mean = torch.load(tmp_path / "avg.pt", weights_only=True)
    first = torch.load(kept[0], weights_only=True)
    for key, value in mean.items():
        torch.testing.assert_close(value, ((first[key].double() + last[key].double()) / 2).to(value.dtype))
    for target, mask in zip(result.masks.targets, result.masks.masks):
        assert int((mean[target.name] == 0).sum()) == int((~mask).sum())  # the masks survive averaging
    assert main(["average", str(tmp_path / "run"), "--last", "3", "--out", str(tmp_path / "avg3.pt")]) == 2
    assert "holds 2 epoch model(s)" in capsys.readouterr().err
    run(parse_config(raw), log=lambda line: None, overwrite=True)  # models/ is the run's own: replaced, not refused
    assert sorted(p.name for p in (tmp_path / "run" / "models").iterdir()) == ["epoch_0003.pt", "epoch_0004.pt"]


def test_new_training_options_leave_earlier_fingerprints_alone():
    """keep_last_models never shapes the trajectory; update_freq and task.options do only when set."""
    base = parse_config(tiny_config()).fingerprint()
    assert parse_config(tiny_config(training={"progress": False, "keep_last_models": 3})).fingerprint() == base
    assert parse_config(tiny_config(training={"progress": False, "update_freq": 1})).fingerprint() == base
    assert parse_config(tiny_config(training={"progress": False, "update_freq": 2})).fingerprint() != base


def test_counters_get_the_floor_of_their_mean(tmp_path):
    """BatchNorm's num_batches_tracked differs between epoch models; it averages like fairseq's script."""
    from sparsetrain.export.average import average_checkpoints

    for name, count, weight in (("a", 10, 1.0), ("b", 13, 2.0)):
        torch.save({"bn.num_batches_tracked": torch.tensor(count), "bn.weight": torch.full((2,), weight)},
                   tmp_path / f"{name}.pt")
    average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "mean.pt")
    mean = torch.load(tmp_path / "mean.pt", weights_only=True)
    assert mean["bn.num_batches_tracked"].dtype == torch.int64 and int(mean["bn.num_batches_tracked"]) == 11
    assert torch.equal(mean["bn.weight"], torch.full((2,), 1.5))
