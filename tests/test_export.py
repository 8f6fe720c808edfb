"""Export (issue 15): the sparse safetensors format round trip, bad files, the CLI, ONNX, init from an export."""

from __future__ import annotations

import pickle

import pytest
import torch

import sparsetrain
from sparsetrain.errors import UserError
from sparsetrain.export import FORMAT_NAME, load_sparse_metadata, save_dense
from sparsetrain.export.sparse_format import encode
from sparsetrain.models.registry import MODELS, build_model
from sparsetrain.sparsity import MaskSet, select_targets

# Small options per registered model, so every one round-trips in well under a second.
SMALL = {
    "small_resnet": ((1, 8, 8), {"width": 4}),
    "resnet18": ((3, 16, 16), {}),
    "resnet34": ((3, 16, 16), {}),
    "resnet50": ((3, 16, 16), {}),
    "wrn28_8": ((3, 8, 8), {"depth": 10, "widen_factor": 1}),
    "wide_resnet": ((3, 8, 8), {"depth": 10, "widen_factor": 1}),
    "mobilenet_v1": ((3, 16, 16), {"width_mult": 0.25}),
    "mlp": ((1, 16), {"hidden": [8]}),
}


FAST = sorted(SMALL)  # every registered model (resnet50's 25 M weights take a few seconds)


def _pruned_model(name: str, sparsity: float = 0.9):
    """A small model of ``name`` with random keep-masks (``sparsity`` pruned) applied to its targets.

    Random masks instead of ``prune``: a magnitude sort of ResNet-34's 21 M weights costs seconds.
    """
    shape, options = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, num_classes=10, **options)
    masks = MaskSet(select_targets(model), [torch.rand(t.shape) >= sparsity for t in select_targets(model)])
    with torch.no_grad():
        for target, mask in zip(masks.targets, masks.masks):
            target.param.masked_fill_(~mask, 0.0)  # +0.0 where pruned, as MaskSet.apply_ leaves
    return model, masks


def _same_bits(a: dict, b: dict, ordered: bool = True) -> None:
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for key, value in a.items():
        assert value.dtype == b[key].dtype and value.shape == b[key].shape, key
        assert value.reshape(-1).view(torch.uint8).equal(b[key].reshape(-1).view(torch.uint8)), key


def test_every_registered_model_is_covered():
    assert set(MODELS) <= set(SMALL)


@pytest.mark.parametrize("name", FAST)
def test_round_trip_is_bit_identical_and_masks_come_back(name, tmp_path):
    model, masks = _pruned_model(name)
    path = sparsetrain.save_sparse(model, tmp_path / "m.safetensors", masks, metadata={"config": "seed: 0\n"})
    _same_bits(model.state_dict(), sparsetrain.load_sparse(path))
    recovered = sparsetrain.load_sparse_masks(path)
    assert list(recovered) == masks.names
    for name_, mask in zip(masks.names, masks.masks):
        assert recovered[name_].equal(mask)
    meta = load_sparse_metadata(path)
    assert meta["format"] == FORMAT_NAME and meta["config"] == "seed: 0\n"
    assert float(meta["sparsity"]) == pytest.approx(masks.sparsity())
    if name.startswith("resnet"):
        return  # the same code path as the small models below, at seconds per save on a busy CPU
    # Without masks: the zeros decide, and the result is the same tensors.
    again = sparsetrain.save_sparse(model.state_dict(), tmp_path / "n.safetensors")
    _same_bits(model.state_dict(), sparsetrain.load_sparse(again))


def test_special_values_and_dtypes_survive(tmp_path):
    weight = torch.zeros(4, 8)
    weight[0, :4] = torch.tensor([-0.0, float("nan"), float("inf"), -float("inf")])
    weight[1, 0] = 1.5
    state = {"w": weight, "h": weight.to(torch.float16), "b": weight.to(torch.bfloat16),
             "d": weight.to(torch.float64), "i": torch.arange(6).reshape(2, 3), "flag": torch.tensor(True),
             "v": torch.ones(3)}
    path = sparsetrain.save_sparse(state, tmp_path / "s.safetensors")
    loaded = sparsetrain.load_sparse(path)
    _same_bits(state, loaded)
    assert torch.signbit(loaded["w"][0, 0])  # -0.0 is kept, not turned into +0.0
    assert set(sparsetrain.load_sparse_masks(path)) == {"w", "h", "b", "d"}


def test_pruned_positions_decode_to_plus_zero(tmp_path):
    weight = torch.full((4, 4), -0.0)
    weight[0, 0] = 2.0
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    loaded = sparsetrain.load_sparse(sparsetrain.save_sparse({"w": weight}, tmp_path / "p.safetensors", {"w": mask}))
    assert loaded["w"][0, 0] == 2.0 and not torch.signbit(loaded["w"]).any()


def test_tensors_whose_zeros_do_not_pay_stay_dense():
    entries, _ = encode({"w": torch.ones(8, 8), "b": torch.zeros(8), "z": torch.zeros(8, 8)})
    assert set(entries) == {"dense/w", "dense/b", "values/z", "indices/z"}  # no kept value: no index either


def test_existing_file_is_refused_without_overwrite(tmp_path):
    path = tmp_path / "m.safetensors"
    sparsetrain.save_sparse({"w": torch.zeros(4, 4)}, path)
    with pytest.raises(UserError, match="exists"):
        sparsetrain.save_sparse({"w": torch.zeros(4, 4)}, path)
    sparsetrain.save_sparse({"w": torch.ones(4, 4)}, path, overwrite=True)
    assert sparsetrain.load_sparse(path)["w"].equal(torch.ones(4, 4))


def _one_line_error(path) -> str:
    with pytest.raises(UserError) as info:
        sparsetrain.load_sparse(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bad_files_are_one_line_errors(tmp_path):
    model, masks = _pruned_model("mlp")
    good = sparsetrain.save_sparse(model, tmp_path / "good.safetensors", masks).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    for cut in (4, 100, len(good) // 2, len(good) - 1):
        truncated.write_bytes(good[:cut])
        _one_line_error(truncated)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                    dtype=torch.uint8).numpy().tobytes())
    _one_line_error(noise)
    pickled = tmp_path / "pickle.safetensors"
    pickled.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    _one_line_error(pickled)
    torch_file = tmp_path / "torch.safetensors"
    torch.save(model.state_dict(), torch_file)
    _one_line_error(torch_file)
    _one_line_error(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _one_line_error(empty)


def test_wrong_version_and_inconsistent_metadata(tmp_path):
    from safetensors.torch import save

    entries, info = encode({"w": torch.eye(4)})
    future = tmp_path / "future.safetensors"
    future.write_bytes(save(entries, metadata={**info, "format_version": "99"}))
    assert "version" in _one_line_error(future)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(save(entries, metadata={**info, "tensors": "{not json"}))
    _one_line_error(broken)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(save(entries, metadata={**info, "tensors": info["tensors"].replace("[4, 4]", "[4, 5]")}))
    _one_line_error(lying)


def test_plain_safetensors_loads_as_dense(tmp_path):
    state = {"a": torch.randn(3, 3), "b": torch.zeros(2)}
    path = save_dense(state, tmp_path / "d.safetensors")
    _same_bits(state, sparsetrain.load_sparse(path), ordered=False)  # safetensors' own order
    assert sparsetrain.load_sparse_masks(path) == {}


def test_targets_of_select_targets_match_mask_names():
    model, masks = _pruned_model("small_resnet")
    assert masks.names == [t.name for t in select_targets(model)]


# ---- the command line, ONNX and init.checkpoint --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run (MLP 64-16-10 on digits, GP 0.5): its directory and its config file."""
    import yaml
    from tiny_config import tiny_config

    from sparsetrain.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(output_dir=str(root / "run"))))
    assert main(["run", str(config)]) == 0
    return root / "run", config


def test_cli_export_in_every_format(tiny_run, tmp_path, capsys):
    from sparsetrain.cli import main
    from sparsetrain.safe_pickle import safe_torch_load

    run_dir, config = tiny_run
    final = safe_torch_load(run_dir / "model_final.pt")
    sparse, dense, onnx_file = tmp_path / "m.safetensors", tmp_path / "d.safetensors", tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(sparse)]) == 0
    assert "sparsity 0.5" in capsys.readouterr().out
    _same_bits(final, sparsetrain.load_sparse(sparse))
    assert set(sparsetrain.load_sparse_masks(sparse)) == {"1.weight", "3.weight"}
    assert "stages" in load_sparse_metadata(sparse)["config"]
    checkpoint = run_dir / "model_final.pt"
    assert main(["export", str(checkpoint), "--config", str(config), "--format", "safetensors",
                 "--out", str(dense)]) == 0
    _same_bits(final, sparsetrain.load_sparse(dense), ordered=False)
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert "onnxruntime matches" in capsys.readouterr().out and onnx_file.stat().st_size > 0


def test_cli_export_refuses_to_overwrite_and_bad_sources(tiny_run, tmp_path, capsys):
    from sparsetrain.cli import main

    run_dir, _ = tiny_run
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(out), "--overwrite"]) == 0
    assert sparsetrain.load_sparse(out)
    capsys.readouterr()
    assert main(["export", str(run_dir / "model_final.pt"), "--format", "sparse", "--out", str(tmp_path / "x")]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--format", "sparse", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err


def _finetune_from_export(run_dir, tmp_path):
    """Export ``run_dir`` as a sparse file and write a 1-epoch finetune config starting from it:
    (exported file, config path)."""
    import yaml
    from tiny_config import tiny_config

    from sparsetrain.cli import main

    exported = tmp_path / "m.safetensors"
    assert main(["export", str(run_dir), "--format", "sparse", "--out", str(exported)]) == 0
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(tiny_config(init={"checkpoint": str(exported)},
                                                 stages=[{"kind": "finetune", "epochs": 1}],
                                                 output_dir=str(tmp_path / "ft"))))
    return exported, config


def test_init_checkpoint_from_a_sparse_export_starts_from_its_weights(tiny_run, tmp_path):
    from sparsetrain.config import load_config
    from sparsetrain.runner.setup import build_setup
    from sparsetrain.safe_pickle import safe_torch_load

    run_dir, _ = tiny_run
    _, config = _finetune_from_export(run_dir, tmp_path)
    setup = build_setup(load_config(config), lay_out=False)
    _same_bits(safe_torch_load(run_dir / "model_final.pt"), setup.model.state_dict())
    masks = MaskSet.from_nonzero(setup.targets)  # the zeros carry the masks
    assert masks.sparsity() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("name", ["mlp", "small_resnet", "mobilenet_v1"])
def test_onnx_export_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from sparsetrain.export.onnx_export import export_onnx

    model, _ = _pruned_model(name)
    sample = torch.randn(3, *SMALL[name][0], generator=torch.Generator().manual_seed(0))
    assert export_onnx(model, sample, tmp_path / "m.onnx") <= 1e-3
    with pytest.raises(UserError, match="exists"):
        export_onnx(model, sample, tmp_path / "m.onnx")


def test_finetune_from_a_sparse_export_keeps_its_masks(tiny_run, tmp_path):
    from sparsetrain.cli import main
    from sparsetrain.safe_pickle import safe_torch_load

    run_dir, _ = tiny_run
    exported, config = _finetune_from_export(run_dir, tmp_path)
    assert main(["run", str(config)]) == 0
    after = safe_torch_load(tmp_path / "ft" / "model_final.pt")
    before = safe_torch_load(run_dir / "model_final.pt")
    for name, mask in sparsetrain.load_sparse_masks(exported).items():
        assert after[name][~mask].eq(0).all()  # pruned stayed pruned
        assert not after[name][mask].equal(before[name][mask])  # and the kept weights trained


def test_very_sparse_tensors_use_indices_and_round_trip(tmp_path):
    weight = torch.zeros(64, 64)
    weight[3, 5], weight[60, 1], weight[0, 0] = 1.0, -0.0, float("nan")  # 3 of 4096: indices beat the bitmask
    half = torch.randn(64, 64).masked_fill_(torch.rand(64, 64) < 0.5, 0.0)
    entries, info = encode({"w": weight, "h": half})
    assert "indices/w" in entries and "mask/h" in entries
    path = sparsetrain.save_sparse({"w": weight, "h": half}, tmp_path / "i.safetensors")
    _same_bits({"w": weight, "h": half}, sparsetrain.load_sparse(path))
    assert int(sparsetrain.load_sparse_masks(path)["w"].sum()) == 3
    from safetensors.torch import save

    entries["indices/w"] = entries["indices/w"].flip(0).contiguous()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(entries, metadata=info))
    assert "increasing" in _one_line_error(bad)


def test_dense_export_as_init_and_bad_files_through_the_cli(tiny_run, tmp_path, capsys):
    from sparsetrain.cli import main
    from sparsetrain.runner.checkpoint import init_masks, load_state_dict_from
    from sparsetrain.safe_pickle import safe_torch_load

    run_dir, config = tiny_run
    dense = tmp_path / "d.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(dense)]) == 0
    _same_bits(safe_torch_load(run_dir / "model_final.pt"), load_state_dict_from(dense), ordered=False)
    assert init_masks(dense, []) is None  # a dense file carries no masks
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(pickle.dumps({"w": 1}))
    assert main(["eval", str(bad), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.safetensors" in err and "Traceback" not in err
