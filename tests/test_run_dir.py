"""Nothing of the user's is overwritten or deleted: run directories, --overwrite, resume, demo reruns."""

import json
import re
from pathlib import Path

import pytest
import yaml
from tiny_config import tiny_config

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.demo import DEMO_CONFIGS, run_demo, training_epochs
from sparsetrain.errors import UserError
from sparsetrain.runner import train
from sparsetrain.runner.checkpoint import CheckpointError
from sparsetrain.runner.run_dir import MARKER, is_run_dir, read_marker
from sparsetrain.runner.train import run

TINY = tiny_config(seed=1, data={"batch_size": 128}, optimizer={"name": "sgd", "lr": 0.05},
                   stages=[{"kind": "dense", "epochs": 1}, {"kind": "prune", "method": "gp", "sparsity": 0.9},
                           {"kind": "finetune", "epochs": 1}])
USER_FILES = {"config.yaml": b"my own config\n", "metrics.jsonl": b'{"mine": 1}\n', "report.md": b"# my notes\n",
              "summary.json": b"{}", "model_final.pt": b"\x00\x01 not a model"}


def _config_file(tmp_path: Path, data=TINY, name="tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _config(tmp_path: Path, run_dir: Path, *overrides: str):
    return load_config(_config_file(tmp_path), [f"output_dir={run_dir}", *overrides])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _quiet(line: str) -> None:
    pass


def test_foreign_files_are_refused_even_with_overwrite_and_left_byte_for_byte(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, content in USER_FILES.items():
        (mine / name).write_bytes(content)
    before = _snapshot(mine)
    config = _config(tmp_path, mine)
    for overwrite in (False, True):
        with pytest.raises(UserError) as info:
            run(config, log=_quiet, overwrite=overwrite)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"output directory {str(mine)!r} holds files sparsetrain did not write "
                                  f"(e.g. 'config.yaml'; no {MARKER}); choose another output_dir or move them away")
        assert message.endswith("--overwrite replaces only sparsetrain runs") == overwrite
    assert main(["run", str(_config_file(tmp_path)), f"output_dir={mine}", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output directory {str(mine)!r} holds files") and err.count("\n") == 1
    assert _snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(USER_FILES)


def test_overwrite_replaces_a_previous_run_and_keeps_the_users_files(tmp_path):
    run_dir = tmp_path / "run"
    config = _config(tmp_path, run_dir)
    run(config, log=_quiet)
    marker = read_marker(run_dir)
    assert marker["fingerprint"] == config.fingerprint() and marker["name"] == "tiny"
    assert set(marker) == {"format", "fingerprint", "name", "created", "sparsetrain_version"}

    with pytest.raises(UserError, match=r"^output directory '.*' holds a finished run; pass --overwrite to replace "
                                        r"it or choose another output_dir$"):
        run(config, log=_quiet)
    other = _config(tmp_path, run_dir, "seed=2")
    with pytest.raises(UserError, match=rf"holds a finished run of another config \({config.fingerprint()}; this "
                                        rf"one is {other.fingerprint()}\); pass --overwrite"):
        run(other, log=_quiet)

    (run_dir / "notes.txt").write_text("keep me")
    (run_dir / "sparsity" / "my_table.csv").write_text("keep me too")
    stale = [run_dir / "sparsity" / "step99999999_999_prune.csv", run_dir / ".checkpoint.pt.1f2e3d4c.tmp"]
    for path in stale:
        path.write_text("left by an earlier run")
    (run_dir / ".notes.txt.1f2e3d4c.tmp").write_text("not ours")
    result = run(other, log=_quiet, overwrite=True)
    assert result.final["epoch"] == 2
    assert (run_dir / "notes.txt").read_text() == "keep me"
    assert (run_dir / "sparsity" / "my_table.csv").read_text() == "keep me too"
    assert (run_dir / ".notes.txt.1f2e3d4c.tmp").is_file()
    assert not any(path.exists() for path in stale)
    assert read_marker(run_dir)["fingerprint"] == other.fingerprint()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage_kind"] for m in metrics] == ["dense", "prune", "finetune"]  # the new run's only


def test_a_stopped_run_is_resumed_not_replaced(tmp_path):
    run_dir = tmp_path / "run"
    config = _config(tmp_path, run_dir)
    run(config, log=_quiet)
    (run_dir / "summary.json").unlink()
    with pytest.raises(UserError, match=r"holds a stopped run; resume it with --resume or pass --overwrite to "
                                        r"replace it$"):
        run(config, log=_quiet)
    with pytest.raises(UserError, match="resume and overwrite exclude each other"):
        run(config, resume=True, overwrite=True, log=_quiet)
    run(config, resume=True, log=_quiet)
    assert (run_dir / "summary.json").is_file()


def test_resume_needs_the_marker(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(UserError, match=rf"^cannot resume {str(missing)!r}: the directory does not exist$"):
        run(_config(tmp_path, missing), resume=True, log=_quiet)
    assert not missing.exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_bytes(USER_FILES["config.yaml"])
    with pytest.raises(UserError, match=rf"^cannot resume {str(foreign)!r}: it is not a sparsetrain run directory "
                                        rf"\(no run.json\)$"):
        run(_config(tmp_path, foreign), resume=True, log=_quiet)
    (foreign / "checkpoint.pt").write_bytes(b"not a checkpoint")  # looks like a 0.1 run directory, but is not one
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {str(foreign / 'checkpoint.pt')!r}")):
        run(_config(tmp_path, foreign), resume=True, log=_quiet)
    assert sorted(p.name for p in foreign.iterdir()) == ["checkpoint.pt", "config.yaml"]

    run_dir = tmp_path / "run"
    run(_config(tmp_path, run_dir), log=_quiet)
    with pytest.raises(UserError, match=r"cannot resume .*: its run is of config \w+ but this config is \w+; resume "
                                        r"with the run's own config.yaml"):
        run(_config(tmp_path, run_dir, "seed=5"), resume=True, log=_quiet)


def test_a_run_directory_of_version_0_1_without_marker_is_resumed_and_marked(tmp_path):
    run_dir = tmp_path / "run"
    config = _config(tmp_path, run_dir)
    run(config, log=_quiet)
    (run_dir / MARKER).unlink()
    (run_dir / "summary.json").unlink()
    run(config, resume=True, log=_quiet)
    assert is_run_dir(run_dir) and (run_dir / "summary.json").is_file()


def test_overrides_give_a_sweep_distinct_default_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config_file(tmp_path)
    assert load_config(path).run_dir() == Path("runs/tiny")
    assert load_config(path, ["name=other", "training.progress=false"]).run_dir() == Path("runs/other")
    dirs = [load_config(path, [f"stages.1.sparsity={s}"]).run_dir() for s in (0.8, 0.9)]
    assert dirs == [Path("runs/tiny__stages.1.sparsity=0.8"), Path("runs/tiny__stages.1.sparsity=0.9")]
    assert load_config(path, ["seed=2", "stages.1.sparsity=0.8"]).run_dir() == Path(
        "runs/tiny__seed=2__stages.1.sparsity=0.8")
    odd = [load_config(path, [f"targets.exclude=[{regex}]"]).run_dir().name for regex in ("a/b", "a b")]
    assert odd[0] != odd[1] and all(name.startswith("tiny__targets.exclude=_a_b_-") for name in odd)
    long = load_config(path, [f"seed={i}" for i in range(40)]).run_dir()
    assert long.parent == Path("runs") and len(long.name) == len("tiny__") + 80 + 9
    explicit = _config_file(tmp_path, dict(TINY, output_dir="there"), "explicit.yaml")
    assert load_config(explicit, ["stages.1.sparsity=0.8"]).run_dir() == Path("there")

    results = [run(load_config(path, [f"stages.1.sparsity={s}"]), log=_quiet) for s in (0.8, 0.9)]
    assert [r.run_dir for r in results] == dirs
    assert [round(r.masks.sparsity(), 2) for r in results] == [0.8, 0.9]


def _demo_configs(tmp_path: Path) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir()
    _config_file(configs, dict(TINY, name="dense", stages=[{"kind": "dense", "epochs": 1}]), "0_dense.yaml")
    _config_file(configs, dict(TINY, stages=[{"kind": "dense", "epochs": 2}, *TINY["stages"][1:]]), "1_gp_0.9.yaml")
    return configs


def test_demo_keeps_finished_runs_resumes_stopped_ones_and_reruns_changed_ones(tmp_path, monkeypatch):
    configs, out = _demo_configs(tmp_path), tmp_path / "demo"
    original_save, saves = train._Run.save, []

    def stop_after_first_checkpoint(self):  # the run of 1_gp_0.9 stops after its first epoch's checkpoint
        path = original_save(self)
        saves.append(self.dir.name)
        if self.dir.name == "1_gp_0.9":
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train._Run, "save", stop_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, configs, log=_quiet)
    monkeypatch.setattr(train._Run, "save", original_save)
    assert (out / "0_dense" / "summary.json").is_file() and not (out / "1_gp_0.9" / "summary.json").exists()
    dense_model = (out / "0_dense" / "model_final.pt").read_bytes()

    lines = []
    result = run_demo(out, configs, log=lines.append)
    assert result.kept == ["0_dense"] and list(result.results) == ["1_gp_0.9"]
    assert "   finished earlier under the same config: kept " + str(out / "0_dense") + " (--fresh reruns it)" in lines
    assert f"   stopped earlier under the same config: resuming {out / '1_gp_0.9'}" in lines
    assert any(line.startswith(f"   resumed {out / '1_gp_0.9'} at stage 0, epoch 1") for line in lines)
    assert "== 1_gp_0.9: 3 stage(s), 3 epochs of training" in lines
    assert (out / "0_dense" / "model_final.pt").read_bytes() == dense_model
    text = (out / "results.md").read_text()
    assert "| Dense |" in text and "| GP |" in text and "1_gp_0.9 (sparsity 0.9" in text

    _config_file(configs, dict(TINY, name="dense", seed=3, stages=[{"kind": "dense", "epochs": 1}]), "0_dense.yaml")
    lines = []
    result = run_demo(out, configs, log=lines.append)
    assert result.kept == ["1_gp_0.9"] and list(result.results) == ["0_dense"]
    assert any(line.startswith("   running again (its run was made under another config (fingerprint ") and
               line.endswith(f"): replacing the run in {out / '0_dense'}") for line in lines)

    lines = []
    result = run_demo(out, configs, log=lines.append, fresh=True)
    assert result.kept == [] and list(result.results) == ["0_dense", "1_gp_0.9"]
    assert f"   running again (--fresh): replacing the run in {out / '1_gp_0.9'}" in lines


def test_demo_out_never_deletes_a_foreign_directory(tmp_path, capsys):
    configs, out = _demo_configs(tmp_path), tmp_path / "demo"
    (out / "1_gp_0.9").mkdir(parents=True)
    for name, content in USER_FILES.items():
        (out / "1_gp_0.9" / name).write_bytes(content)
    before = _snapshot(out)
    for fresh in ([], ["--fresh"]):
        assert main(["demo", "--configs", str(configs), "--out", str(out), *fresh]) == 2
        err = capsys.readouterr().err
        assert err == (f"error: demo output {str(out / '1_gp_0.9')!r} holds files sparsetrain did not write (e.g. "
                       f"'config.yaml'; no {MARKER}); choose another --out\n")
    assert _snapshot(out) == before and not (out / "0_dense").exists()  # refused before anything ran

    (out / "1_gp_0.9").rename(tmp_path / "moved")
    (out / "results.md").write_text("my results\n")
    assert main(["demo", "--configs", str(configs), "--out", str(out)]) == 2
    assert "was not written by the demo; choose another --out" in capsys.readouterr().err
    assert (out / "results.md").read_text() == "my results\n"


def test_demo_log_counts_the_epochs_of_every_method():
    epochs = {path.stem: training_epochs(load_config(path)) for path in sorted(DEMO_CONFIGS.glob("*.yaml"))}
    assert epochs and set(epochs.values()) == {34}, epochs  # every row of the demo trains the same budget
