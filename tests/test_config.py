import numpy as np
import pytest
import yaml

from sparsetrain.config import ConfigError, load_config, parse_config
from sparsetrain.data.registry import load_dataset

BASE = {
    "stages": [
        {"kind": "dense", "epochs": 2},
        {"kind": "prune", "method": "gpmt", "sparsity": 0.9, "min_threshold": 0.5},
        {"kind": "finetune", "epochs": 1, "optimizer": {"lr": 0.01}},
    ]
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_defaults_and_stage_overrides(config_file):
    config = load_config(config_file)
    assert config.optimizer.name == "sgd" and config.data.batch_size == 64
    assert config.stage_optimizer(config.stages[2]).lr == 0.01
    assert config.stage_optimizer(config.stages[0]).lr == 0.1


def test_overrides_use_dotted_paths_and_yaml_values(config_file):
    config = load_config(config_file, ["stages.1.sparsity=0.8", "optimizer.name=adamw", "targets.exclude=[fc]"])
    assert config.stages[1].sparsity == 0.8
    assert config.optimizer.name == "adamw"
    assert config.targets.exclude == ["fc"]


def test_fingerprint_ignores_output_location_only(config_file):
    a = load_config(config_file)
    assert a.fingerprint() == load_config(config_file, ["output_dir=/elsewhere", "training.progress=false"]).fingerprint()
    assert a.fingerprint() != load_config(config_file, ["seed=1"]).fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.1.sparsity=1.0", "stages.1.sparsity=1.0: Input should be less than 1"),
        ("stages.1.sparsity=-0.5", "stages.1.sparsity=-0.5: Input should be greater than or equal to 0"),
        ("optimizer.lrr=3", "unknown key 'optimizer.lrr'"),
        ("optimizer.lr=-1", "optimizer.lr=-1: Input should be greater than 0"),
        ("stages.2.optimizer.lr=0", "stages.2.optimizer.lr=0: Input should be greater than 0"),
        ("stages.2.optimizer.nesterof=true", "unknown key 'stages.2.optimizer.nesterof'"),
        ("stages.1.method=foo", "stages.1.method='foo': Input should be 'gp', 'gpmt'"),
        ("stages.0.epochs=0", "stages.0.epochs=0: Input should be greater than or equal to 1"),
        ("data.batch_size=x", "data.batch_size='x': Input should be a valid integer"),
        ("training.amp=fp8", "training.amp='fp8': Input should be 'off', 'bf16' or 'fp16'"),
        ("init.checkpoint=/no/such.pt", "init.checkpoint='/no/such.pt': file '/no/such.pt' does not exist"),
        ("task.dataset.options.path=/no/data.npz", "task.dataset.options: data path '/no/data.npz' does not exist"),
        ("stages.1.method=gp", "stages.1: min_threshold only applies to method 'gpmt'"),
        ("stages.7.epochs=1", "override key 'stages.7': index must be in [0, 2]"),
        ("stages.0.epochs.x=1", "override key 'stages.0.epochs.x': 'stages.0.epochs' holds a value, not a section"),
        ("justakey", "override 'justakey' must look like key=value"),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(config_file, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(config_file, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*missing.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing key 'stages'"):
        parse_config({})


def test_npz_dataset_reads_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.normal(size=(20, 2, 16)), y_train=rng.integers(0, 3, 20),
             x_test=rng.normal(size=(6, 2, 16)), y_test=np.array([0, 1, 2, 0, 1, 2]))
    split = load_dataset("npz", path=str(path))
    assert split.num_classes == 3 and split.input_shape == (2, 16) and len(split.train) == 20
    np.savez(path, x_train=rng.normal(size=(20, 2, 16)), y_train=rng.integers(0, 3, 20))
    with pytest.raises(ValueError, match="lacks array 'x_test'"):
        load_dataset("npz", path=str(path))


def test_linear_lr_scaling_with_the_global_batch(config_file):
    config = load_config(config_file, ["data.batch_size=1024", "optimizer.lr=0.1", "optimizer.lr_reference_batch=256"])
    assert config.stage_optimizer(config.stages[0]).lr == pytest.approx(0.4)
    assert config.stage_optimizer(config.stages[2]).lr == pytest.approx(0.04)  # the stage's own lr, scaled too
    assert load_config(config_file).stage_optimizer(load_config(config_file).stages[0]).lr == 0.1
