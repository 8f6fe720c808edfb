"""Inputs checked where they enter: npz arrays, dataset splits, target selectors, masks over NaN, named files."""

import warnings

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tiny_config import tiny_config
from torch import nn
from torch.utils.data import TensorDataset

import sparsetrain
from sparsetrain import cli
from sparsetrain.cli import main
from sparsetrain.data.digits import ClassificationSplit
from sparsetrain.data.npz import load_npz_split
from sparsetrain.data.registry import DATASETS, load_dataset, register_dataset
from sparsetrain.errors import UserError
from sparsetrain.sparsity import (
    MaskSet,
    Sparsifier,
    SparsityError,
    random_masks,
    select_targets,
)
from sparsetrain.sparsity.masks import EmptyLayerWarning

BASE = tiny_config(name="in")


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "in.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ---- npz ---------------------------------------------------------------------------------------
def _arrays(n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n_train, 1, 8)).astype(np.float32), "y_train": np.arange(n_train) % 3,
            "x_test": rng.normal(size=(n_test, 1, 8)).astype(np.float32), "y_test": np.arange(n_test) % 3}


def _poke(key, index, value):
    def edit(a):
        a[key] = a[key].astype(np.float64) if isinstance(value, float) and a[key].dtype.kind == "i" else a[key]
        a[key][index] = value
    return edit


@pytest.mark.parametrize(
    "edit, kwargs, message",
    [
        (_poke("x_train", (3, 0, 2), np.nan), {},
         "dataset 'npz': x_train holds NaN at index (3, 0, 2) (1 non-finite value in all); valid: finite numbers only"),
        (_poke("x_test", (0, 0, 5), np.inf), {}, "dataset 'npz': x_test holds inf at index (0, 0, 5)"),
        (_poke("x_test", (7, 0, 0), -np.inf), {}, "dataset 'npz': x_test holds -inf at index (7, 0, 0)"),
        (_poke("y_test", 4, np.nan), {}, "dataset 'npz': y_test holds NaN at index 4"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), {},
         ("dataset 'npz': y_train holds the non-integer label 0.5 at index 0 (dtype float64); labels must be integers "
         "in [0, num_classes)")),
        (_poke("y_train", 5, -1), {}, "dataset 'npz': labels must be in [0, 3), found -1 at y_train[5]"),
        (lambda a: None, {"num_classes": 2}, "dataset 'npz': labels must be in [0, 2), found up to 2 (y_train[2]=2)"),
        (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), {},
         "dataset 'npz': the test split is empty (x_test has 0 examples); each split needs at least one example"),
        (lambda a: a.update(x_train=a["x_train"][:0], y_train=a["y_train"][:0]), {},
         "dataset 'npz': the train split is empty (x_train has 0 examples)"),
        (lambda a: a.update(y_train=a["y_train"][:, None]), {},
         "dataset 'npz': y_train has shape (40, 1); labels must be 1-D (N,)"),
        (lambda a: a.update(x_train=np.array(["a"] * 40)), {},
         "dataset 'npz': array 'x_train' has dtype <U1; valid: real numbers"),
        (lambda a: a.update(x_train=np.array([None] * 40, dtype=object)), {},
         "dataset 'npz': array 'x_train' of "),
        (lambda a: None, {"num_classes": 0}, "dataset 'npz': num_classes=0 must be an integer >= 1"),
    ],
)
def test_bad_npz_arrays_are_named_with_their_first_bad_index(tmp_path, edit, kwargs, message):
    arrays = _arrays()
    edit(arrays)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError) as info:
        load_npz_split(str(tmp_path / "d.npz"), **kwargs)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text, text


def test_integral_float_labels_and_bool_inputs_are_accepted(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.float32)
    arrays["x_test"] = arrays["x_test"] > 0
    arrays["x_train"] = arrays["x_train"] > 0
    np.savez(tmp_path / "d.npz", **arrays)
    split = load_npz_split(str(tmp_path / "d.npz"))
    assert split.num_classes == 3 and split.train.tensors[1].dtype == torch.int64
    assert split.train.tensors[1].tolist() == list(np.arange(40) % 3)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a readable .npz file"),
        (b"x,y\n1,2\n", "is not a readable .npz file"),
        ("npy", "holds a single array (.npy), not a .npz archive"),
        ("dir", "is a directory; give the .npz file"),
    ],
)
def test_npz_files_that_are_not_archives(tmp_path, content, message):
    path = tmp_path / "d.npz"
    if content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif content == "dir":
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="^dataset 'npz': .*" + message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        load_npz_split(str(path))


def test_run_on_npz_with_nan_stops_before_training(tmp_path, cfg, capsys):
    arrays = _arrays()
    arrays["x_train"][3, 0, 2] = np.nan
    np.savez(tmp_path / "d.npz", **arrays)
    out = tmp_path / "run"
    argv = ["run", str(cfg), f"output_dir={out}", "task.dataset.name=npz", f"task.dataset.options.path={tmp_path}/d.npz"]
    assert main(argv) == 2
    assert _error_line(capsys) == ("error: dataset 'npz': x_train holds NaN at index (3, 0, 2) (1 non-finite value "
                                   "in all); valid: finite numbers only")
    assert not (out / "model_final.pt").exists() and not (out / "checkpoint.pt").exists()


# ---- splits from any registered loader ------------------------------------------------------------
def _split(train_labels, test_labels, classes=3, train_inputs=None):
    train_inputs = torch.zeros(len(train_labels), 1, 4) if train_inputs is None else train_inputs
    return ClassificationSplit(TensorDataset(train_inputs, torch.tensor(train_labels)),
                               TensorDataset(torch.zeros(len(test_labels), 1, 4), torch.tensor(test_labels)),
                               classes, (1, 4), 0.0, 1.0)


@pytest.mark.parametrize(
    "split, message",
    [
        (_split([0, 1], [], 3), "dataset 'custom': the test split is empty (0 examples)"),
        (_split([], [0], 3), "dataset 'custom': the train split is empty (0 examples)"),
        (_split([0, 3], [0], 3), "dataset 'custom': labels must be in [0, 3), found 3 at train example 1"),
        (_split([0, 1], [-2], 3), "dataset 'custom': labels must be in [0, 3), found -2 at test example 0"),
        (_split([0.0, 1.0], [0.0], 3), "dataset 'custom': train labels have dtype torch.float32"),
        (_split([0, 1], [0], 0), "dataset 'custom': num_classes=0 must be an integer >= 1"),
        (_split([0, 1], [0], 3, torch.tensor([[[0.0, 1, 2, 3]], [[0, 0, float("nan"), 0]]])),
         "dataset 'custom': train example 1 holds NaN or inf"),
    ],
)
def test_every_registered_loader_is_checked(split, message):
    register_dataset("custom", lambda: split, replace=True)
    try:
        with pytest.raises(UserError) as info:
            load_dataset("custom")
        assert str(info.value).startswith(message), str(info.value)
    finally:
        DATASETS.pop("custom", None)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("digits", {"test_fraction": 0.0}, "test_fraction=0.0 is outside (0, 1)"),
        ("mnist1d", {"num_samples": 0}, "num_samples=0 is not a multiple of 10 in [20, inf)"),
        ("mnist1d", {"num_samples": -10}, "num_samples=-10 is not a multiple of 10"),
        ("mnist1d", {"test_fraction": 1.0}, "test_fraction=1.0 is outside (0, 1)"),
        ("mnist1d", {"iid_noise_scale": -1.0}, "iid_noise_scale=-1.0 is outside [0, inf)"),
    ],
)
def test_builtin_dataset_options(name, options, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_dataset(name, **options)


# ---- target selectors -----------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.pos_embed = nn.Parameter(torch.zeros(3))


class LlamaRMSNorm(nn.Module):  # a custom norm, recognised by its class name
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))


@pytest.mark.parametrize(
    "include, message",
    [
        ([""], "include pattern '' is empty: it would match every parameter name"),
        (".*", ("include selector '.*' selects 'pos_embed', an embedding parameter, without naming it (biases, norms "
               "and embeddings are never targets unless named): name it with a regex such as '^pos_embed$', or "
               "narrow the selector or add it to targets.exclude")),
        (r"^conv1\.", ("include selector '^conv1\\\\.' selects 'conv1.bias', a bias, without naming it (biases, "
                      "norms and embeddings are never targets unless named): name it with a regex such as "
                      "'^conv1\\.bias$', or narrow the selector or add it to targets.exclude")),
        ("weight", ("include selector 'weight' selects 'bn1.weight', a parameter of the norm module 'bn1' "
                   "(BatchNorm2d), without naming it (biases, norms and embeddings are never targets unless named): "
                   "name it with the module type nn.BatchNorm2d or a regex such as '^bn1\\.weight$'")),
        (r"^layer1\.", "include selector '^layer1\\\\.' selects 'layer1.0.bias', a bias"),
        (r"^layer1\.\d\.weight", "selects 'layer1.1.weight', a parameter of the norm module 'layer1.1' (BatchNorm2d)"),
        ([nn.Conv2d, r"\.weight$"], "selects 'bn1.weight', a parameter of the norm module"),
        (r"^[a-z]+\.weight$", "selects 'embed.weight', an embedding parameter"),
        (r"^[a-z_]+$", "selects 'pos_embed', an embedding parameter"),
        (nn.Module, "include selector nn.Module selects 'bn1.weight', a parameter of the norm module"),
    ],
)
def test_selectors_that_would_catch_biases_norms_or_embeddings_are_refused(include, message):
    with pytest.raises(SparsityError) as info:
        select_targets(Net(), include=include)
    text = str(info.value)
    assert (text.startswith(message) if message.startswith("include") else message in text), text


@pytest.mark.parametrize(
    "include, exclude, names",
    [
        (None, None, ["conv1.weight", "layer1.0.weight", "fc.weight"]),
        (r"bn1\.weight", None, ["bn1.weight"]),
        (nn.BatchNorm2d, None, ["bn1.weight", "layer1.1.weight"]),
        (r"\.bias$", None, ["conv1.bias", "bn1.bias", "layer1.0.bias", "layer1.1.bias", "norm.bias", "fc.bias"]),
        (r"^norm\.", None, ["norm.weight", "norm.bias"]),
        (r"^layer1\.1\.", None, ["layer1.1.weight", "layer1.1.bias"]),
        (r"^embed\.", None, ["embed.weight"]),
        ("pos_embed", None, ["pos_embed"]),
        (".*", ["bias", "bn", "norm", "embed", r"^layer1\.1\."], ["conv1.weight", "layer1.0.weight", "fc.weight"]),
        ([nn.Conv2d, nn.Linear, r"^fc\.bias$"], None, ["conv1.weight", "layer1.0.weight", "fc.weight", "fc.bias"]),
    ],
)
def test_named_or_excluded_special_parameters_are_fine(include, exclude, names):
    assert [t.name for t in select_targets(Net(), include=include, exclude=exclude)] == names


def test_custom_norm_classes_and_root_modules():
    model = nn.Sequential(nn.Linear(4, 4), LlamaRMSNorm())
    with pytest.raises(SparsityError, match=r"selects '1.weight', a parameter of the norm module '1' \(LlamaRMSNorm\)"):
        select_targets(model, include=r"\.weight$")
    assert [t.name for t in select_targets(model, include=r"^1\.weight$")] == ["1.weight"]
    assert [t.name for t in select_targets(model, include=LlamaRMSNorm)] == ["1.weight"]
    with pytest.raises(SparsityError, match="selects 'weight', a parameter of the norm module '<root>'"):
        select_targets(nn.LayerNorm(4), include="weight")
    assert [t.name for t in select_targets(nn.LayerNorm(4), include="^weight$")] == ["weight"]


def test_cli_refuses_broad_and_empty_selectors(cfg, tmp_path, capsys):
    assert main(["plan", str(cfg), "targets.include=['']"]) == 2
    assert _error_line(capsys).startswith("error: include pattern '' is empty")
    assert main(["run", str(cfg), f"output_dir={tmp_path / 'run'}", "targets.include=['.*']"]) == 2
    assert _error_line(capsys).startswith("error: include selector '.*' selects '1.bias', a bias, without naming it")
    assert main(["plan", str(cfg), "targets.include=['weight$']"]) == 0  # MLP: no norms; biases end in 'bias'
    capsys.readouterr()


# ---- masks over NaN and inf ---------------------------------------------------------------------
def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _poisoned_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            flat[::3] = float("nan")
            flat[1::7] = float("inf")
            flat[2::11] = float("-inf")
    return model


def _pruned_are_zero_and_kept_unchanged(tensor, mask, before):
    assert torch.equal(tensor[~mask], torch.zeros_like(tensor[~mask])), tensor
    assert not torch.signbit(tensor[~mask]).any()  # +0, as masked_fill_ gives
    assert torch.equal(_bits(tensor)[mask], _bits(before)[mask])  # NaN payloads included


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_apply_and_enforce_zero_nan_and_inf_at_pruned_positions(dtype):
    model = _poisoned_model(dtype)
    targets = select_targets(model)
    generator = torch.Generator().manual_seed(1)
    masks = [torch.rand(t.shape, generator=generator) > 0.5 for t in targets]
    before = [t.param.detach().clone() for t in targets]
    mask_set = MaskSet(targets, masks)
    mask_set.apply_()
    for t, m, b in zip(targets, masks, before):
        _pruned_are_zero_and_kept_unchanged(t.param.detach(), m, b)

    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      torch.optim.AdamW(model.parameters(), lr=0.1, amsgrad=True)):
        for p in model.parameters():
            p.grad = torch.full_like(p, float("nan"))
        optimizer.step()  # NaN weights and NaN state everywhere, pruned positions included
        states = {id(t.param): [v.clone() for v in optimizer.state[t.param].values() if v.shape == t.shape]
                  for t in targets}
        weights = [t.param.detach().clone() for t in targets]
        Sparsifier(model, mask_set).step(optimizer)
        for t, m, w in zip(targets, masks, weights):
            _pruned_are_zero_and_kept_unchanged(t.param.detach(), m, w)
            current = [v for v in optimizer.state[t.param].values() if v.shape == t.shape]
            assert len(current) == len(states[id(t.param)]) >= 1
            for value, old in zip(current, states[id(t.param)]):
                _pruned_are_zero_and_kept_unchanged(value, m, old)


def test_mask_optimizer_state_alone_zeroes_nan_state():
    model = _poisoned_model()
    targets = select_targets(model)
    masks = [torch.arange(t.numel).view(t.shape) % 2 == 0 for t in targets]
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    optimizer.step()
    weights = [t.param.detach().clone() for t in targets]
    MaskSet(targets, masks).mask_optimizer_state_(optimizer)
    for t, m, w in zip(targets, masks, weights):
        assert torch.equal(_bits(t.param.detach()), _bits(w))  # weights untouched
        for value in optimizer.state[t.param].values():
            if value.shape == t.shape:
                assert torch.equal(value[~m], torch.zeros_like(value[~m]))


def test_random_pruning_zeroes_nan_weights():
    model = _poisoned_model()
    masks = sparsetrain.prune(model, 0.6, method="random", seed=3)
    for target, mask, count in zip(masks.targets, masks.masks, masks.target_counts):
        weight = target.param.detach()
        assert int((~mask).sum()) == count == round(0.6 * target.numel)
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))


@given(
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    poison=st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e30]), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_random_masks_prune_exact_counts_and_leave_no_nan(shapes, fractions, poison, seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, generator=generator) for s in shapes]
    for i, t in enumerate(tensors):
        flat = t.view(-1)
        positions = torch.randint(0, flat.numel(), (len(poison),), generator=generator)
        flat[positions] = torch.tensor(poison)
    counts = [round(f * t.numel()) for f, t in zip(fractions, tensors)]
    before = [t.clone() for t in tensors]
    params = [nn.Parameter(t) for t in tensors]
    model = nn.ParameterList(params)
    targets = select_targets(model, include=r"^\d+$")
    masks = random_masks([t.param for t in targets], counts, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyLayerWarning)
        MaskSet(targets, masks).apply_()
    for t, m, c, b in zip(targets, masks, counts, before):
        assert int((~m).sum()) == c
        weight = t.param.detach()
        assert not torch.isnan(weight[~m]).any() and torch.equal(weight[~m], torch.zeros_like(weight[~m]))
        assert torch.equal(_bits(weight)[m], _bits(b)[m])


# ---- a layer emptied by its mask ---------------------------------------------------------------
def test_a_mask_that_keeps_no_weight_warns_with_the_layer_named():
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 1))
    with pytest.warns(EmptyLayerWarning, match=r"the mask of target '2.weight' \(1, 20\) keeps none of its 20 "
                                               r"weights \(sparsity 100%\)"):
        sparsetrain.prune(model, 0.98, method="uniform")
    masks = MaskSet(select_targets(nn.Sequential(nn.Linear(3, 2))))
    with pytest.warns(EmptyLayerWarning, match="'0.weight'"):
        masks.set_(0, torch.zeros(2, 3, dtype=torch.bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyLayerWarning)
        sparsetrain.prune(nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 2)), 0.9, method="uniform")
        masks.set_(0, torch.eye(2, 3, dtype=torch.bool))


# ---- files the user names --------------------------------------------------------------------
def test_missing_or_unreadable_masks_file_fails_before_evaluating(cfg, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_eval", lambda args: pytest.fail("eval ran"))
    monkeypatch.setitem(cli.COMMANDS, "eval", cli._eval)
    argv = ["eval", str(tmp_path / "m.pt"), "--config", str(cfg), "--masks", str(tmp_path / "nope.npy")]
    assert main(argv) == 2
    assert _error_line(capsys) == f"error: cannot read mask file '{tmp_path}/nope.npy': No such file or directory"
    argv[-1] = str(tmp_path)
    assert main(argv) == 2
    assert _error_line(capsys) == f"error: cannot read mask file '{tmp_path}': Is a directory"


def test_config_path_that_is_a_directory(tmp_path, capsys):
    for command in ("run", "plan"):
        assert main([command, str(tmp_path)]) == 2
        assert _error_line(capsys) == f"error: cannot read config file '{tmp_path}': Is a directory (give a YAML file)"


def test_os_errors_naming_a_file_are_one_line_others_keep_their_traceback(tmp_path, capsys, monkeypatch):
    def unreadable(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / "data_batch_1"))
    monkeypatch.setitem(cli.COMMANDS, "report", unreadable)
    assert main(["report", str(tmp_path)]) == 2
    assert _error_line(capsys) == f"error: cannot access '{tmp_path}/data/data_batch_1': Permission denied"

    def no_file(args):
        raise OSError(28, "No space left on device")
    monkeypatch.setitem(cli.COMMANDS, "report", no_file)
    with pytest.raises(OSError, match="No space left"):
        main(["report", str(tmp_path)])


def test_a_data_root_that_cannot_be_read(tmp_path, cfg, capsys):
    """A CIFAR-10 root whose first batch is a directory: the OS error names the file."""
    root = tmp_path / "cifar"
    root.mkdir()
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (root / name).write_bytes(b"")
    (root / "data_batch_1").mkdir()
    argv = ["run", str(cfg), f"output_dir={tmp_path / 'run'}", "task.dataset.name=cifar10",
            f"task.dataset.options.root={root}"]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("error: ") and "data_batch_1" in line
