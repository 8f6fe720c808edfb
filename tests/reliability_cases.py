"""Bad inputs for the ``sparsetrain`` command line, one :class:`Case` each, and the runner that tries them.

Every case runs the real CLI (``sparsetrain.cli.main(argv)``, in process) in a fresh temporary
directory that holds a valid tiny base config (``{cfg}``: digits, an MLP with one hidden layer of
16, one dense epoch, GP 0.5, one fine-tuning epoch). ``argv`` may name ``{tmp}`` (the case's
directory) and ``{cfg}``; ``setup(tmp)`` writes the bad files first (corrupt or malicious
checkpoints, broken data, foreign files in an output directory). What a case holds:

* the exit status is ``code`` (2 for bad input);
* stderr is exactly one line, ``error: <message>``, and the message matches ``expect``;
* nothing in stderr is a traceback;
* ``after(tmp)``, when given, passes: the user's files are unchanged, no half-written or final
  model is left behind, nothing a malicious file asked for has run.

``tests/test_reliability.py`` runs every case; ``tools/reliability_table.py`` runs them the same
way (through :func:`run_case`) and writes ``docs/reliability.md``. A case with ``xfail`` set shows
a bug that is known and not fixed yet: the reason says what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))  # tiny_config sits beside this file
from tiny_config import tiny_config  # noqa: E402

BASE_CONFIG: dict[str, Any] = tiny_config()
"""The valid tiny config every case starts from; ``output_dir`` is ``{tmp}/run``."""

AREAS = ("config", "cli", "checkpoint", "masks", "data", "run-dir", "disk", "training")


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str
    argv: tuple[str, ...]
    expect: str = ""
    code: int = 2
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    after: Callable[[Path], None] | None = None
    xfail: str | None = None
    skip: str | None = None  # why the case cannot run here (e.g. it needs a machine without CUDA)
    file_size_limit: int | None = None  # RLIMIT_FSIZE in bytes while the CLI runs: a full disk, simulated


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    after_error: str | None = None  # the assertion message of a failed ``after`` check

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.strip().splitlines()]


TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s+File \".*\", line \d+", re.MULTILINE)


# --------------------------------------------------------------------------------------------------
# The runner


def write_base_config(tmp: Path, **changes: Any) -> Path:
    config = {**BASE_CONFIG, "output_dir": str(tmp / "run"), **changes}
    path = tmp / "base.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def _environment(changes: dict[str, str]):
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _file_size_limit(limit: int | None):
    """Writes past ``limit`` bytes fail with EFBIG ("File too large"), as on a full disk; SIGXFSZ ignored."""
    if limit is None:
        yield
        return
    import resource
    import signal

    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def run_case(case: Case, tmp: Path) -> Outcome:
    """Run ``case`` through the CLI in directory ``tmp`` (which it may fill); stdout and stderr captured.

    An exception out of ``main`` is what the console script would show: its traceback, exit 1.
    """
    from sparsetrain.cli import main

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = write_base_config(tmp)
    if case.setup is not None:
        case.setup(tmp)
    argv = [a.replace("{tmp}", str(tmp)).replace("{cfg}", str(cfg)) for a in case.argv]
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with _environment(case.env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                _file_size_limit(case.file_size_limit):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - a bug: show it as the console script would
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        os.chdir(cwd)
    outcome = Outcome(code, out.getvalue(), err.getvalue())
    if case.after is not None:
        try:
            case.after(tmp)
        except AssertionError as exc:
            outcome.after_error = str(exc) or "after check failed"
    return outcome


def problems(case: Case, outcome: Outcome) -> list[str]:
    """What ``outcome`` gets wrong for ``case``: empty when the case holds."""
    found = []
    if outcome.code != case.code:
        found.append(f"exit status {outcome.code}, expected {case.code}")
    if TRACEBACK.search(outcome.stderr):
        found.append("a traceback on stderr")
    lines = outcome.lines
    if case.code == 0:
        if lines:
            found.append(f"stderr is not empty: {lines[:3]}")
    elif len(lines) != 1:
        found.append(f"stderr has {len(lines)} lines, expected one: {lines[:3]}")
    elif not re.match(r"^error: (?:" + case.expect + ")", lines[0]):
        found.append(f"stderr {lines[0]!r} does not match 'error: {case.expect}'")
    if outcome.after_error:
        found.append(f"after check: {outcome.after_error}")
    return found


# --------------------------------------------------------------------------------------------------
# File makers for setup callables


class _Evil:
    """Pickles as ``os.system(command)``: unpickling it would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _pwned(tmp: Path) -> Path:
    return tmp / "PWNED"


def _evil_command(tmp: Path) -> str:
    return f"touch {_pwned(tmp)}"


def nothing_ran(tmp: Path) -> None:
    assert not _pwned(tmp).exists(), "the malicious pickle ran its command"


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return setup


def chain(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for step in steps:
            step(tmp)
    return setup


def torch_file(rel: str, make: Callable[[Path], Any]) -> Callable[[Path], None]:
    """``torch.save(make(tmp), tmp/rel)``."""
    def setup(tmp: Path) -> None:
        import torch

        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(make(tmp), path)
    return setup


def pickle_file(rel: str, make: Callable[[Path], Any], protocol: int = 2) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(make(tmp), protocol=protocol))
    return setup


def _mlp_state(hidden: list[int] | None = None, in_shape=(1, 8, 8)) -> dict[str, Any]:
    from sparsetrain.models.registry import build_model

    model = build_model("mlp", input_shape=in_shape, num_classes=10, hidden=hidden or [16])
    return model.state_dict()


def _mlp_masks(count: int = 2, shapes: list[tuple[int, ...]] | None = None, value: float = 1.0) -> list[Any]:
    import torch

    shapes = shapes or [(16, 64), (10, 16)]
    return [torch.full(s, value) for s in shapes[:count]]


def _fingerprint(tmp: Path, output_dir: str = "run") -> str:
    from sparsetrain.config import load_config

    return load_config(tmp / "base.yaml", [f"output_dir={tmp / output_dir}"]).fingerprint()


def run_dir(rel: str = "run", *, marker: str | None = "same", files: dict[str, str | bytes] | None = None,
            config: bool = True) -> Callable[[Path], None]:
    """A run directory ``tmp/rel``: ``config.yaml`` (the base config), ``run.json`` with the fingerprint
    of the base config (``marker="same"``), of another one (``"other"``) or none, and ``files``."""
    def setup(tmp: Path) -> None:
        import json

        from sparsetrain import __version__

        path = tmp / rel
        path.mkdir(parents=True, exist_ok=True)
        if config:
            raw = {**BASE_CONFIG, "output_dir": str(path)}
            (path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        if marker is not None:
            fingerprint = _fingerprint(tmp, rel) if marker == "same" else "0123456789abcdef"
            (path / "run.json").write_text(json.dumps({
                "format": "sparsetrain-run-v1", "fingerprint": fingerprint, "name": "tiny",
                "created": "2026-01-01T00:00:00+00:00", "sparsetrain_version": __version__}))
        for name, content in (files or {}).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (path / name).write_bytes(content)
            else:
                (path / name).write_text(content)
    return setup


def unchanged(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        path = tmp / rel
        assert path.is_file(), f"{rel} was deleted"
        got = path.read_bytes()
        want = content.encode() if isinstance(content, str) else content
        assert got == want, f"{rel} was changed"
    return check


def mentions(rel: str, text: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        path = tmp / rel
        assert path.is_file(), f"{rel} was not written"
        assert text in path.read_text(), f"{rel} does not say {text!r}"
    return check


def absent(*rels: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        for rel in rels:
            assert not (tmp / rel).exists(), f"{rel} exists"
    return check


def no_half_written(rel: str = "run") -> Callable[[Path], None]:
    """No temporary file of an interrupted write is left in ``tmp/rel``."""
    def check(tmp: Path) -> None:
        root = tmp / rel
        if root.is_dir():
            left = [p.name for p in root.rglob("*.tmp")]
            assert not left, f"temporary files left: {left}"
    return check


def both(*checks: Callable[[Path], None]) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        for c in checks:
            c(tmp)
    return check


NOTES = "my notes: do not delete\n"


# --------------------------------------------------------------------------------------------------
# Data files


def npz_file(rel: str = "data.npz", n_train: int = 40, n_test: int = 20, length: int = 8, classes: int = 3,
             edit: Callable[[dict[str, Any]], None] | None = None, keep: tuple[str, ...] | None = None):
    def setup(tmp: Path) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        arrays = {
            "x_train": rng.normal(size=(n_train, 1, length)).astype(np.float32),
            "y_train": (np.arange(n_train) % classes).astype(np.int64),
            "x_test": rng.normal(size=(n_test, 1, length)).astype(np.float32),
            "y_test": (np.arange(n_test) % classes).astype(np.int64),
        }
        if edit is not None:
            edit(arrays)
        if keep is not None:
            arrays = {k: v for k, v in arrays.items() if k in keep}
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return setup


def _npz_args(rel: str = "data.npz", *extra: str) -> tuple[str, ...]:
    return ("run", "{cfg}", "task.dataset.name=npz", "task.dataset.options.path={tmp}/" + rel, *extra)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(arrays: dict[str, Any]) -> None:
        import numpy as np

        if callable(value):
            arrays[key] = value(arrays[key])
        else:
            arrays[key] = np.asarray(value)
    return edit


def _poke(key: str, index: tuple[int, ...], value: float) -> Callable[[dict[str, Any]], None]:
    def edit(arrays: dict[str, Any]) -> None:
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return edit


def cifar_dir(rel: str = "cifar", skip: tuple[str, ...] = (), bad: dict[str, Callable[[Path], bytes]] | None = None,
              n: int = 4):
    """A CIFAR-10 "python version" folder with tiny batches; ``bad`` replaces some files' bytes."""
    def setup(tmp: Path) -> None:
        import numpy as np

        folder = tmp / rel
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            if name in skip:
                continue
            batch = {b"data": np.zeros((n, 3072), dtype=np.uint8), b"labels": list(range(n))}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        for name, make in (bad or {}).items():
            (folder / name).write_bytes(make(tmp))
    return setup


def _cifar_args(rel: str = "cifar") -> tuple[str, ...]:
    return ("run", "{cfg}", "task.dataset.name=cifar10", "task.dataset.options.root={tmp}/" + rel)


def imagenet_dir(rel: str = "imagenet", train: dict[str, int] | None = None, val: dict[str, int] | None = None,
                 corrupt: str | None = None):
    """``rel/train/<class>/<i>.png`` and ``rel/val/...`` with tiny images; None leaves a split out."""
    def setup(tmp: Path) -> None:
        from PIL import Image

        root = tmp / rel
        root.mkdir(parents=True, exist_ok=True)
        for split, classes in (("train", train), ("val", val)):
            if classes is None:
                continue
            (root / split).mkdir(exist_ok=True)
            for name, count in classes.items():
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    Image.new("RGB", (8, 8), (i * 40 % 255, 0, 0)).save(folder / f"{i}.png")
        if corrupt:
            (root / corrupt).write_bytes(b"this is not a PNG")
    return setup


def _imagenet_args(rel: str = "imagenet", *extra: str) -> tuple[str, ...]:
    return ("run", "{cfg}", "task.dataset.name=imagenet", "task.dataset.options.root={tmp}/" + rel,
            "task.dataset.options.image_size=8", "task.dataset.options.resize_size=8", *extra)


# --------------------------------------------------------------------------------------------------
# The cases

RUN = ("run", "{cfg}")
PART_SEG = ("task.kind=part_segmentation", "task.dataset.name=embedded_parts",
            "task.model.name=pointnet2_part_seg_tiny")
DETECTION = ("task.kind=detection", "task.dataset.name=embedded_shapes", "task.model.options={}", "task.model.name=ssd_tiny",
             "optimizer.name=adam")
TRANSLATION = ("task.kind=translation", "task.dataset.name=embedded_en_de", "task.model.name=transformer_tiny")
PLAN = ("plan", "{cfg}")
EVAL = ("eval",)


def _c(id: str, area: str, what: str, argv: tuple[str, ...] | list[str], expect: str = "", **kw: Any) -> Case:
    return Case(id=id, area=area, what=what, argv=tuple(argv), expect=expect, **kw)


def _override(id: str, what: str, assignment: str | tuple[str, ...], expect: str, command=RUN, **kw: Any) -> Case:
    extra = (assignment,) if isinstance(assignment, str) else assignment
    return _c(id, "config", what, (*command, *extra), expect, **kw)


def _cuda_skip() -> str | None:
    import torch

    return "this machine has a CUDA device" if torch.cuda.is_available() else None


_CUDA_SKIP = _cuda_skip()


CASES: list[Case] = [
    # ---- config files --------------------------------------------------------------------------
    _c("config-missing", "config", "config file that does not exist", ("run", "{tmp}/nope.yaml"),
       r"config file '.*nope\.yaml' does not exist"),
    _c("config-is-directory", "config", "config path that is a directory", ("run", "{tmp}"),
       r"(cannot read )?config file '.*'.*(does not exist|[Ii]s a directory)"),
    _c("config-invalid-yaml", "config", "config file that is not valid YAML (unclosed bracket)",
       ("run", "{tmp}/bad.yaml"), r"config file '.*bad\.yaml' is not valid YAML at line \d+",
       setup=write("bad.yaml", "seed: [1, 2\nstages: []\n")),
    _c("config-tab-indent", "config", "config file indented with a tab", ("run", "{tmp}/bad.yaml"),
       r"config file '.*bad\.yaml' is not valid YAML",
       setup=write("bad.yaml", "task:\n\tmodel: mlp\n")),
    _c("config-list", "config", "config file holding a YAML list", ("run", "{tmp}/bad.yaml"),
       r"a config must be a mapping of keys to values, got list", setup=write("bad.yaml", "- 1\n- 2\n")),
    _c("config-scalar", "config", "config file holding a bare string", ("run", "{tmp}/bad.yaml"),
       r"a config must be a mapping of keys to values, got str", setup=write("bad.yaml", "hello\n")),
    _c("config-empty", "config", "empty config file", ("run", "{tmp}/bad.yaml"), r"missing key 'stages'",
       setup=write("bad.yaml", "")),
    _c("config-binary", "config", "config file that is binary (not UTF-8)", ("run", "{tmp}/bad.yaml"),
       r"config file '.*bad\.yaml' is not UTF-8 text \(byte 128\); give a YAML file",
       setup=write("bad.yaml", bytes(range(256)) * 4)),
    _c("config-plan-missing", "config", "plan of a config file that does not exist", ("plan", "{tmp}/nope.yaml"),
       r"config file '.*nope\.yaml' does not exist"),
    _override("config-unknown-key", "unknown top-level key", "colour=red", r"unknown key 'colour'"),
    _override("config-misplaced-key", "a dataset path written beside options instead of inside them",
              "task.dataset.path=/data", r"unknown key 'task.dataset.path'"),
    _c("config-duplicate-key", "config", "config file that sets seed twice (plain YAML would keep the last "
       "silently)", ("run", "{tmp}/dup.yaml"), r"config file '.*dup\.yaml' is not valid YAML at line \d+ "
       r"\(duplicate key 'seed'\)",
       setup=lambda t: (t / "dup.yaml").write_text((t / "base.yaml").read_text() + "seed: 7\n"),
       after=absent("run/run.json", "run/model_final.pt")),
    _c("config-duplicate-stages", "config", "config file with two 'stages:' blocks (the first would be dropped)",
       ("plan", "{tmp}/dup.yaml"), r"config file '.*dup\.yaml' is not valid YAML at line \d+ \(duplicate key "
       r"'stages'\)", setup=lambda t: (t / "dup.yaml").write_text(
           (t / "base.yaml").read_text() + "stages:\n  - {kind: dense, epochs: 3}\n")),
    _override("config-stages-empty", "no stages", "stages=[]", r"stages=\[\]: List should have at least 1 item"),
    _override("config-stages-not-list", "stages is a mapping", "stages={a: 1}", r"stages.*list"),
    _override("config-name-not-string", "name is a list", "name=[1, 2]", r"name.*string"),

    # ---- top-level keys ------------------------------------------------------------------------
    _override("seed-negative", "seed below 0", "seed=-1", r"seed=-1: Input should be greater than or equal to 0"),
    _override("seed-too-large", "seed of 2**32", "seed=4294967296", r"seed=4294967296: Input should be less than"),
    _override("seed-text", "seed that is not a number", "seed=abc", r"seed='abc': Input should be a valid integer"),
    _override("seed-float", "seed 1.5", "seed=1.5", r"seed=1.5: Input should be a valid integer"),
    _override("threads-zero", "threads 0", "threads=0", r"threads=0: Input should be greater than or equal to 1"),
    _override("device-unknown", "device tpu", "device=tpu", r"device='tpu': Input should be 'cpu', 'cuda' or 'auto'"),

    # ---- task ----------------------------------------------------------------------------------
    _override("device-cuda-missing", "device cuda on a machine without CUDA", "device=cuda",
              r"device='cuda' but no CUDA device is available", skip=_CUDA_SKIP),
    _c("world-size-text", "config", "WORLD_SIZE=two in the environment", RUN, r".*WORLD_SIZE.*'two'",
       env={"WORLD_SIZE": "two"}),
    _override("task-kind", "task kind other than classification", "task.kind=regression",
              r"task.kind='regression': not a registered task; registered: classification"),
    _override("dataset-unknown", "dataset name that is not registered", "task.dataset.name=mnist",
              r"dataset 'mnist' is not one of: cifar10, digits, imagenet, mnist1d, npz"),
    _override("dataset-unknown-plan", "plan with an unknown dataset", "task.dataset.name=mnist",
              r"dataset 'mnist' is not one of", command=PLAN),
    _override("dataset-option-unknown", "dataset option that does not exist", "task.dataset.options.size=3",
              r"dataset 'digits' has no option 'size' \(options: test_fraction, seed\)"),
    _override("dataset-options-not-mapping", "dataset options as a list", "task.dataset.options=[1]",
              r"task.dataset.options.*dictionary"),
    _override("digits-test-fraction", "digits test_fraction 1.5", "task.dataset.options.test_fraction=1.5",
              r"test_fraction"),
    _override("digits-test-fraction-text", "digits test_fraction as text", "task.dataset.options.test_fraction=half",
              r"test_fraction"),
    _override("mnist1d-num-samples", "mnist1d with 0 samples", ("task.dataset.name=mnist1d",
              "task.dataset.options.num_samples=0"), r"num_samples"),
    _override("model-unknown", "model name that is not registered", "task.model.name=vgg16",
              r"model 'vgg16' is not one of"),
    _override("model-option-unknown", "model option that does not exist", "task.model.options.depth=3",
              r"model 'mlp' has no option 'depth'"),
    _override("model-hidden-negative", "MLP hidden width -1", "task.model.options.hidden=[-1]",
              r"hidden=-1 must be an integer >= 1"),
    _override("model-hidden-text", "MLP hidden widths as a string", "task.model.options.hidden=wide",
              r"hidden='w' must be an integer >= 1|hidden.*(integer|list)"),
    _override("model-hidden-int", "MLP hidden given as one number instead of a list", "task.model.options.hidden=16",
              r"hidden=16 must be a list of layer widths, e\.g\. \[256, 128\]"),
    _override("model-wrn-depth", "wide_resnet depth 7", ("task.model.name=wide_resnet", "task.model.options={depth: 7}"),
              r"depth=7 is not an integer >= 10"),
    _override("model-blocks-negative", "small_resnet with -1 blocks in a stage", ("task.model.name=small_resnet",
              "task.model.options={blocks_per_stage: [1, -1, 1]}"),
              r"blocks_per_stage=\[1, -1, 1\] must be a non-empty sequence of integers >= 1"),
    _override("model-width-zero", "small_resnet width 0", ("task.model.name=small_resnet",
              "task.model.options={width: 0}"), r"width"),

    # ---- data ----------------------------------------------------------------------------------
    _override("batch-size-zero", "batch size 0", "data.batch_size=0",
              r"data.batch_size=0: Input should be greater than or equal to 1"),
    _override("batch-size-text", "batch size as text", "data.batch_size=big",
              r"data.batch_size='big': Input should be a valid integer"),
    _override("eval-batch-size-negative", "eval batch size -5", "data.eval_batch_size=-5",
              r"data.eval_batch_size=-5: Input should be greater than or equal to 1"),
    _override("num-workers-negative", "num_workers -1", "data.num_workers=-1",
              r"data.num_workers=-1: Input should be greater than or equal to 0"),
    _override("drop-last-text", "drop_last that is not a boolean", "data.drop_last=maybe",
              r"data.drop_last='maybe': Input should be a valid boolean"),
    _override("batch-larger-than-data-drop-last", "drop_last with a batch larger than the training set "
              "(no optimizer step at all)", ("data.batch_size=5000", "data.drop_last=true"),
              r"data.batch_size=5000 with data.drop_last=true leaves no full batch of the \d+ training examples", after=absent("run/model_final.pt")),

    # ---- optimizer -----------------------------------------------------------------------------
    _override("optimizer-unknown", "optimizer lbfgs", "optimizer.name=lbfgs",
              r"optimizer.name='lbfgs': Input should be 'sgd', 'adam' or 'adamw'"),
    _override("lr-zero", "learning rate 0", "optimizer.lr=0", r"optimizer.lr=0: Input should be greater than 0"),
    _override("lr-negative", "negative learning rate", "optimizer.lr=-0.1",
              r"optimizer.lr=-0.1: Input should be greater than 0"),
    _override("lr-text", "learning rate as text", "optimizer.lr=fast",
              r"optimizer.lr='fast': Input should be a valid number"),
    _override("lr-nan", "learning rate .nan", "optimizer.lr=.nan", r"optimizer.lr=nan"),
    _override("momentum-one", "momentum 1", "optimizer.momentum=1",
              r"optimizer.momentum=1: Input should be less than 1"),
    _override("weight-decay-negative", "weight decay -1e-4", "optimizer.weight_decay=-1e-4",
              r"optimizer.weight_decay='-1e-4': Input should be greater than or equal to 0"),
    _override("betas-one", "Adam beta 1.0", ("optimizer.name=adam", "optimizer.betas=[0.9, 1.0]"),
              r"optimizer.betas: each beta must be in \[0, 1\)"),
    _override("betas-three", "three Adam betas", "optimizer.betas=[0.9, 0.99, 0.999]", r"optimizer.betas"),
    _override("eps-zero", "Adam eps 0", "optimizer.eps=0", r"optimizer.eps=0: Input should be greater than 0"),
    _override("lr-reference-batch-zero", "lr_reference_batch 0", "optimizer.lr_reference_batch=0",
              r"optimizer.lr_reference_batch=0: Input should be greater than or equal to 1"),
    _override("nesterov-without-momentum", "nesterov with momentum 0", ("optimizer.nesterov=true",
              "optimizer.momentum=0"), r"optimizer: nesterov=true needs momentum > 0",
              after=absent("run/run.json", "run/model_final.pt")),
    _override("optimizer-unknown-key", "optimizer key that does not exist", "optimizer.lrate=0.1",
              r"unknown key 'optimizer.lrate'"),

    # ---- lr_schedule ---------------------------------------------------------------------------
    _override("schedule-kind", "LR schedule kind exponential", "lr_schedule.kind=exponential",
              r"lr_schedule.kind='exponential': Input should be"),
    _override("schedule-unit", "LR schedule unit batch", "lr_schedule.unit=batch",
              r"lr_schedule.unit='batch': Input should be 'epoch' or 'iteration'"),
    _override("warmup-negative", "warm-up -1", "lr_schedule.warmup=-1",
              r"lr_schedule.warmup=-1: Input should be greater than or equal to 0"),
    _override("warmup-too-long", "warm-up longer than the stage", "lr_schedule.warmup=1000",
              r"stages.0.lr_schedule: .*warm"),
    _override("warmup-init-lr-negative", "warmup_init_lr -0.1", "lr_schedule.warmup_init_lr=-0.1",
              r"lr_schedule.warmup_init_lr=-0.1: Input should be greater than or equal to 0"),
    _override("min-lr-negative", "min_lr -1", "lr_schedule.min_lr=-1",
              r"lr_schedule.min_lr=-1: Input should be greater than or equal to 0"),
    _override("gamma-zero", "step gamma 0", "lr_schedule.gamma=0",
              r"lr_schedule.gamma=0: Input should be greater than 0"),
    _override("gamma-above-one", "step gamma 2", "lr_schedule.gamma=2",
              r"lr_schedule.gamma=2: Input should be less than or equal to 1"),
    _override("step-size-zero", "step_size 0", "lr_schedule.step_size=0",
              r"lr_schedule.step_size=0: Input should be greater than or equal to 1"),
    _override("step-without-size", "step schedule with neither step_size nor milestones", "lr_schedule.kind=step",
              r"stages.0.lr_schedule: .*(step_size|milestones)"),
    _override("milestones-text", "milestones that are not integers", "lr_schedule.milestones=[a]",
              r"lr_schedule.milestones.*integer"),
    _override("stage-lr-override-bad", "a stage's optimizer override out of range", "stages.0.optimizer={lr: -1}",
              r"stages.0.optimizer.lr=-1: Input should be greater than 0"),
    _override("stage-schedule-override-unknown", "a stage's lr_schedule override with an unknown key",
              "stages.2.lr_schedule={speed: 2}", r"unknown key 'stages.2.lr_schedule.speed'"),

    # ---- training ------------------------------------------------------------------------------
    _override("targets-dense-ends-leave-nothing", "dense_first and dense_last on a model with two targets",
              ("targets.dense_first=true", "targets.dense_last=true"),
              r"targets.dense_first/dense_last leave no target: the selection has 2 weight\(s\)", command=PLAN),
    _override("mixup-negative", "mixup alpha -1", "training.mixup_alpha=-1",
              r"training.mixup_alpha=-1: must be a finite number > 0"),
    _override("label-smoothing-negative", "label smoothing -0.1", "training.label_smoothing=-0.1",
              r"training.label_smoothing=-0.1: Input should be greater than or equal to 0"),
    _override("grad-clip-negative", "grad_clip -1", "training.grad_clip=-1",
              r"training.grad_clip=-1: Input should be greater than 0"),
    _override("label-smoothing-one", "label smoothing 1", "training.label_smoothing=1",
              r"training.label_smoothing=1: Input should be less than 1"),
    _override("grad-clip-zero", "grad_clip 0", "training.grad_clip=0",
              r"training.grad_clip=0: Input should be greater than 0"),
    _override("amp-unknown", "amp fp8", "training.amp=fp8", r"training.amp='fp8': Input should be 'off', 'bf16' or 'fp16'"),
    _override("eval-every-zero", "eval_every 0", "training.eval_every=0",
              r"training.eval_every=0: Input should be greater than or equal to 1"),
    _override("checkpoint-every-zero", "checkpoint_every 0", "training.checkpoint_every=0",
              r"training.checkpoint_every=0: Input should be greater than or equal to 1"),
    _override("checkpoint-every-steps-zero", "checkpoint_every_steps 0", "training.checkpoint_every_steps=0",
              r"training.checkpoint_every_steps=0: Input should be greater than or equal to 1"),
    _override("stop-check-every-zero", "stop_check_every 0", "training.stop_check_every=0",
              r"training.stop_check_every=0: Input should be greater than or equal to 1"),
    _override("on-nonfinite-unknown", "on_nonfinite ignore", "training.on_nonfinite=ignore",
              r"training.on_nonfinite='ignore': Input should be 'stop', 'skip' or 'continue'"),
    _override("progress-text", "progress that is not a boolean", "training.progress=sometimes",
              r"training.progress='sometimes': Input should be a valid boolean"),

    # ---- stages: dense / finetune --------------------------------------------------------------
    _override("stage-kind-unknown", "stage kind distill", "stages.0.kind=distill", r"stages.0.*(kind|tag)"),
    _override("stage-kind-missing", "stage without a kind", "stages.0={epochs: 1}", r"stages.0.*kind"),
    _override("dense-epochs-zero", "dense stage of 0 epochs", "stages.0.epochs=0",
              r"stages.0.epochs=0: Input should be greater than or equal to 1"),
    _override("dense-epochs-missing", "dense stage without epochs", "stages.0={kind: dense}",
              r"missing key 'stages.0.epochs'"),
    _override("dense-epochs-bool", "dense epochs: true (a YAML boolean)", "stages.0.epochs=true",
              r"stages\.0: epochs=True must be a number, not a boolean", after=absent("run/model_final.pt")),
    _override("seed-bool", "seed: true (a YAML boolean)", "seed=true", r"seed=True must be a number, not a boolean"),
    _override("threads-bool", "threads: yes (a YAML boolean)", "threads=yes",
              r"threads=True must be a number, not a boolean"),
    _override("dense-unknown-field", "dense stage with a prune field", "stages.0.sparsity=0.5",
              r"unknown key 'stages.0.sparsity'"),
    _override("finetune-epochs-text", "finetune epochs as text", "stages.2.epochs=many",
              r"stages.2.epochs='many': Input should be a valid integer"),

    # ---- stages: prune -------------------------------------------------------------------------
    _override("prune-sparsity-one", "prune to sparsity 1", "stages.1.sparsity=1", r"stages.1.sparsity"),
    _override("prune-sparsity-negative", "prune to sparsity -0.1", "stages.1.sparsity=-0.1", r"stages.1.sparsity"),
    _override("prune-sparsity-missing", "prune stage without sparsity", "stages.1={kind: prune}",
              r"missing key 'stages.1.sparsity'"),
    _override("prune-method-unknown", "prune method magic", "stages.1.method=magic", r"stages.1.method='magic'"),
    _override("prune-gp-mapping", "GP with a per-layer sparsity mapping", "stages.1.sparsity={'0': 0.5}",
              r"stages.1: method 'gp' needs one sparsity in \[0, 1\), not a mapping"),
    _override("prune-profile-scalar", "profile pruning with one sparsity", "stages.1.method=profile",
              r"stages.1: method 'profile' needs sparsity as \{regex: sparsity\}"),
    _override("prune-profile-matches-nothing", "profile whose regex matches no layer",
              ("stages.1.method=profile", "stages.1.sparsity={'conv.*': 0.5}"), r"stages.1.sparsity: no profile pattern matches target '1.weight'; add a catch-all such as '\.\*'"),
    _override("prune-profile-bad-regex", "profile with an invalid regex",
              ("stages.1.method=profile", "stages.1.sparsity={'[': 0.5}"), r".*'\['.*"),
    _override("prune-min-threshold-gp", "min_threshold on GP", "stages.1.min_threshold=1",
              r"stages.1: min_threshold only applies to method 'gpmt'"),
    _override("prune-seed-gp", "seed on GP", "stages.1.seed=3", r"stages.1: seed only applies to method 'random'"),
    _override("gpmt-threshold-above-100", "GPMT min_threshold 150", ("stages.1.method=gpmt",
              "stages.1.min_threshold=150"), r"stages.1.min_threshold=150: Input should be less than or equal to 100"),
    _override("gpmt-infeasible", "GPMT sparsity 0.99 with a 1% floor (unreachable)", ("stages.1.method=gpmt",
              "stages.1.sparsity=0.99", "stages.1.min_threshold=1"), r".*0\.99.*(reach|maximum|at most)",
              after=absent("run/model_final.pt", "run/checkpoint.pt")),
    _override("gpmt-infeasible-plan", "plan of GPMT 0.99 with a 1% floor", ("stages.1.method=gpmt",
              "stages.1.sparsity=0.99", "stages.1.min_threshold=1"), r".*0\.99.*(reach|maximum|at most)", command=PLAN),
    _override("prune-uniform-mapping", "uniform pruning with a per-layer mapping", ("stages.1.method=uniform",
              "stages.1.sparsity={'.*': 0.5}"), r"stages.1: method 'uniform' needs one sparsity in \[0, 1\), not a mapping"),
    _override("prune-erk-min-threshold", "ERK pruning with a GPMT min_threshold", ("stages.1.method=erk",
              "stages.1.min_threshold=1"), r"stages.1: min_threshold only applies to method 'gpmt'"),
    _override("random-seed-negative", "random pruning with seed -1", ("stages.1.method=random", "stages.1.seed=-1"),
              r"stages.1.seed=-1: Input should be greater than or equal to 0"),

    # ---- stages: S-GaP / P-GaP -----------------------------------------------------------------
    _override("sgap-missing-fields", "sgap stage without epochs_per_step", "stages.1={kind: sgap, sparsity: 0.5, "
              "finetune_epochs: 1}", r"missing key 'stages.1.epochs_per_step'"),
    _override("sgap-epochs-per-step-zero", "sgap with epochs_per_step 0", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 0, finetune_epochs: 1}", r"stages.1.epochs_per_step=0: Input should be greater than or equal to 1"),
    _override("sgap-finetune-negative", "sgap with finetune_epochs -1 (0 is allowed: a finetune stage may follow)",
              "stages.1={kind: sgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: -1}",
              r"stages.1.finetune_epochs=-1: Input should be greater than or equal to 0"),
    _override("sgap-mask-seed-negative", "sgap with mask_seed -1", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, mask_seed: -1}", r"stages.1.mask_seed=-1"),
    _override("sgap-scheme-empty-list", "partition scheme as an empty regex list", "stages.1={kind: sgap, "
              "sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: []}}",
              r"the partition regex list is empty; give one regex per partition"),
    _override("sgap-scheme-number", "partition scheme given as a number", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: 5}}", r"stages.1.partitions.scheme=5: Input should be a valid string"),
    _override("sgap-rounds-zero", "sgap with 0 rounds", "stages.1={kind: sgap, sparsity: 0.5, epochs_per_step: 1, "
              "finetune_epochs: 1, rounds: 0}", r"stages.1.rounds=0: Input should be greater than or equal to 1"),
    _override("sgap-grow-order", "sgap grow_order alphabetical", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, grow_order: alphabetical}", r"stages.1.grow_order='alphabetical'"),
    _override("pgap-grow-order", "pgap with grow_order random", "stages.1={kind: pgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, grow_order: random}", r"stages.1: grow_order only applies to sgap"),
    _override("sgap-distribution", "sgap distribution global", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, distribution: global}", r"stages.1.distribution='global'"),
    _override("sgap-init", "sgap init zeros", "stages.1={kind: sgap, sparsity: 0.5, epochs_per_step: 1, "
              "finetune_epochs: 1, init: zeros}", r"stages.1.init='zeros'"),
    _override("sgap-kappa-zero", "partitions kappa 0", "stages.1={kind: sgap, sparsity: 0.5, epochs_per_step: 1, "
              "finetune_epochs: 1, partitions: {kappa: 0}}", r"stages.1.partitions.kappa=0"),
    _override("sgap-scheme-unknown", "partition scheme that does not exist", "stages.1={kind: sgap, sparsity: 0.5, "
              "epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: rows, kappa: 2}}",
              r"partition scheme 'rows' is unknown"),
    _override("sgap-kappa-too-large", "more partitions than the MLP has layers", "stages.1={kind: sgap, "
              "sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: layers, kappa: 5}}",
              r"kappa=5 exceeds the 2"),
    _override("sgap-blocks-on-mlp", "partition scheme blocks on an MLP (no residual blocks)", "stages.1={kind: sgap, "
              "sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1}", r".*blocks"),
    _override("sgap-regex-matches-nothing", "partition regex that matches no target", "stages.1={kind: sgap, "
              "sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: ['^0\\.', 'conv']}}",
              r"target '1.weight' matches none of the 2 partition regexes of the regex list|partition regex 1 \('conv'\) .*matches no target"),
    _override("sgap-regex-invalid", "partition regex that does not compile", "stages.1={kind: sgap, "
              "sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, partitions: {scheme: ['(', '2']}}",
              r"partition regex 0 \('\('\) .*is not a valid regex"),
    _c("pgap-kappa-vs-world-size", "config", "pgap with kappa 2 under torchrun with WORLD_SIZE=3",
       (*RUN, "stages.1={kind: pgap, sparsity: 0.5, epochs_per_step: 1, finetune_epochs: 1, "
        "partitions: {scheme: layers, kappa: 2}}"), r".*kappa.*(2|WORLD_SIZE).*",
       env={"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}),

    # ---- stages: GMP / SET / RigL --------------------------------------------------------------
    _override("gmp-end-before-start", "GMP end_epoch before start_epoch", "stages.1={kind: gmp, sparsity: 0.5, "
              "epochs: 4, start_epoch: 3, end_epoch: 1}", r"stages.1: needs start_epoch=3 <= end_epoch=1 <= epochs=4"),
    _override("gmp-end-after-stage", "GMP end_epoch after the stage", "stages.1={kind: gmp, sparsity: 0.5, "
              "epochs: 2, end_epoch: 5}", r"stages.1: needs start_epoch=0 <= end_epoch=5 <= epochs=2"),
    _override("gmp-initial-above-final", "GMP initial_sparsity above sparsity", "stages.1={kind: gmp, "
              "sparsity: 0.5, epochs: 2, initial_sparsity: 0.8}", r"stages.1: initial_sparsity=0.8 exceeds sparsity=0.5"),
    _override("gmp-frequency-zero", "GMP frequency 0", "stages.1={kind: gmp, sparsity: 0.5, epochs: 2, "
              "frequency: 0}", r"stages.1.frequency=0"),
    _override("gmp-distribution", "GMP distribution erk", "stages.1={kind: gmp, sparsity: 0.5, epochs: 2, "
              "distribution: erk}", r"stages.1.distribution='erk'"),
    _override("gmp-start-negative", "GMP start_epoch -1", "stages.1={kind: gmp, sparsity: 0.5, epochs: 2, "
              "start_epoch: -1}", r"stages.1.start_epoch=-1: Input should be greater than or equal to 0"),
    _override("set-distribution-global", "SET distribution global", "stages.1={kind: set, sparsity: 0.5, epochs: 1, "
              "distribution: global}", r"stages.1.distribution='global': Input should be 'uniform' or 'erk'"),
    _override("set-sparsity-one", "SET at sparsity 1", "stages.1={kind: set, sparsity: 1, epochs: 1}",
              r"stages.1.sparsity=1: Input should be less than 1"),
    _override("rigl-mask-seed-negative", "RigL mask_seed -1", "stages.1={kind: rigl, sparsity: 0.5, epochs: 1, "
              "mask_seed: -1}", r"stages.1.mask_seed=-1: Input should be greater than or equal to 0"),
    _override("set-drop-fraction-zero", "SET drop_fraction 0", "stages.1={kind: set, sparsity: 0.5, epochs: 1, "
              "drop_fraction: 0}", r"stages.1.drop_fraction=0"),
    _override("rigl-stop-fraction", "RigL stop_fraction 1.5", "stages.1={kind: rigl, sparsity: 0.5, epochs: 1, "
              "stop_fraction: 1.5}", r"stages.1.stop_fraction=1.5"),
    _override("rigl-update-every-zero", "RigL update_every 0", "stages.1={kind: rigl, sparsity: 0.5, epochs: 1, "
              "update_every: 0}", r"stages.1.update_every=0"),
    _override("rigl-decay", "RigL decay linear", "stages.1={kind: rigl, sparsity: 0.5, epochs: 1, decay: linear}",
              r"stages.1.decay='linear'"),

    # ---- targets -------------------------------------------------------------------------------
    _override("targets-empty-pattern", "targets include ['']", "targets.include=['']",
              r"(targets selector 0 \(''\) is an empty regex|include pattern '' is empty).*match(es)? every "
              r"parameter name"),
    _override("targets-bad-module", "targets include nn.Nope", "targets.include=[nn.Nope]",
              r"targets selector 'nn.Nope' is not a torch.nn module type"),
    _override("targets-bad-regex", "targets include regex that does not compile", "targets.include=['[']",
              r"include pattern '\[' is not a valid regex"),
    _override("targets-match-nothing", "targets include regex that matches nothing", "targets.include=[conv]",
              r"include selector 'conv' matches no parameter of MLP"),
    _override("targets-bias", "targets selector catching biases", "targets.include=['.*']", r".*bias"),
    _override("targets-exclude-all", "targets exclude everything", "targets.exclude=[nn.Linear]",
              r"the selection holds no prunable parameter of MLP"),
    _override("targets-exclude-bad-regex", "targets exclude regex that does not compile", "targets.exclude=['(']",
              r"exclude pattern '\(' is not a valid regex"),
    _override("targets-not-list", "targets include as a string", "targets.include=nn.Linear",
              r"targets.include='nn.Linear': Input should be a valid list"),

    # ---- distributed / init --------------------------------------------------------------------
    _override("distributed-masks", "distributed.masks gather", "distributed.masks=gather",
              r"distributed.masks='gather'"),
    _override("distributed-sync-bn", "distributed.sync_batchnorm sometimes", "distributed.sync_batchnorm=sometimes",
              r"distributed.sync_batchnorm='sometimes'"),
    _override("init-checkpoint-missing", "init.checkpoint that does not exist", "init.checkpoint={tmp}/nope.pt",
              r"init.checkpoint='.*nope\.pt': file '.*' does not exist"),
    _c("init-checkpoint-corrupt", "checkpoint", "init.checkpoint with random bytes", (*RUN, "init.checkpoint={tmp}/bad.pt"),
       r"checkpoint '.*bad\.pt' is corrupt or not a torch file \(neither a torch zip archive nor pickle data\)",
       setup=write("bad.pt", b"\x00garbage" * 100),
       after=absent("run/model_final.pt")),
    _c("init-checkpoint-malicious", "checkpoint", "init.checkpoint whose pickle runs os.system",
       (*RUN, "init.checkpoint={tmp}/evil.pt"), r"checkpoint '.*evil\.pt' needs the global '(posix|os)\.system', "
       r"which sparsetrain refused to load", setup=torch_file("evil.pt", lambda t: _Evil(_evil_command(t))),
       after=both(nothing_ran, absent("run/model_final.pt"))),
    _c("init-checkpoint-pickled-module", "checkpoint", "init.checkpoint that is a pickled nn.Module",
       (*RUN, "init.checkpoint={tmp}/model.pt"), r"checkpoint '.*model\.pt' needs the global 'torch\.nn\.modules"
       r"\.linear\.Linear'.*save model\.state_dict\(\) instead",
       setup=torch_file("model.pt", lambda t: __import__("torch").nn.Linear(2, 2))),
    _c("init-checkpoint-wrong-model", "checkpoint", "init.checkpoint of another architecture",
       (*RUN, "init.checkpoint={tmp}/other.pt"), r"checkpoint '.*other\.pt' does not fit MLP: missing",
       setup=torch_file("other.pt", lambda t: {"conv.weight": __import__("torch").zeros(3)})),

    # ---- overrides -----------------------------------------------------------------------------
    _override("override-no-equals", "override without '='", "seed", r"override 'seed' must look like key=value"),
    _override("override-empty-key", "override '=1'", "=1", r"override '=1' must look like key=value"),
    _override("override-index-out-of-range", "override of stage 7 of 3", "stages.7.sparsity=0.5",
              r"override key 'stages.7': index must be in \[0, 2\]"),
    _override("override-index-not-number", "override of stages.first", "stages.first.epochs=2",
              r"override key 'stages.first': index must be in \[0, 2\]"),
    _override("override-into-value", "override below a value (seed.x=1)", "seed.x=1",
              r"override key 'seed.x': 'seed' holds a value, not a section"),
    _override("override-bad-yaml", "override value with unbalanced brackets", "stages.1.sparsity=[0.5",
              r"stages.1.sparsity='\[0.5'"),
    _override("override-unknown-nested", "override of an unknown nested key", "training.speed=2",
              r"unknown key 'training.speed'"),
    _override("override-plan", "plan with an out-of-range override", "stages.1.sparsity=2",
              r"stages.1.sparsity=2", command=PLAN),

    # ---- CLI misuse ----------------------------------------------------------------------------
    _c("cli-no-command", "cli", "no command at all", (), r"give a COMMAND: run, plan, eval, report, demo, export, average "
       r"\(see 'sparsetrain --help'\)"),
    _c("export-source-missing", "cli", "export of a path that does not exist",
       ("export", "{tmp}/nothing", "--format", "sparse", "--out", "{tmp}/x.safetensors"),
       r"cannot export '.*nothing': no such run directory or checkpoint file", after=absent("x.safetensors")),
    _c("safetensors-truncated", "checkpoint", "a 3-byte file named .safetensors given to eval",
       ("eval", "{tmp}/bad.safetensors", "--config", "{cfg}"),
       r"cannot load '.*bad\.safetensors': 3 bytes is too short for a safetensors file \(truncated or empty\)",
       setup=write("bad.safetensors", "hi\n")),
    _c("export-format-unknown", "cli", "export --format zip", ("export", "{tmp}/nothing", "--format", "zip", "--out",
       "{tmp}/x"), r"argument --format: invalid choice: 'zip' \(choose from 'sparse', 'safetensors', 'onnx'\)"),
    _c("cli-unknown-command", "cli", "unknown command 'train'", ("train", "{cfg}"),
       r"argument COMMAND: invalid choice: 'train' \(choose from .*\) \(see 'sparsetrain --help'\)"),
    _c("cli-unknown-option", "cli", "unknown option --fast", ("run", "{cfg}", "--fast"),
       r"unrecognized arguments: --fast \(see 'sparsetrain --help'\)"),
    _c("cli-run-nothing", "cli", "run without CONFIG or --resume", ("run",),
       r"run needs a CONFIG file or --resume RUN_DIR"),
    _c("cli-plan-no-config", "cli", "plan without CONFIG", ("plan",), r"the following arguments are required: "
       r"config.* \(see 'sparsetrain plan --help'\)"),
    _c("cli-eval-no-config", "cli", "eval without --config", ("eval", "{tmp}/m.pt"),
       r"the following arguments are required: --config \(see 'sparsetrain eval --help'\)"),
    _c("cli-report-no-dir", "cli", "report without RUN_DIR", ("report",),
       r"the following arguments are required: RUN_DIR \(see 'sparsetrain report --help'\)"),
    _c("cli-gpu-tflops-text", "cli", "plan --gpu-tflops fast", (*PLAN, "--gpu-tflops", "fast"),
       r"argument --gpu-tflops: 'fast' is not a number"),
    _c("cli-gpu-tflops-zero", "cli", "plan --gpu-tflops 0 (a division by zero)", (*PLAN, "--gpu-tflops", "0"),
       r"argument --gpu-tflops: '0' must be a positive finite number"),
    _c("cli-gpu-tflops-negative", "cli", "plan --gpu-tflops -5 (a negative GPU-hours estimate)",
       (*PLAN, "--gpu-tflops=-5"), r"argument --gpu-tflops: '-5' must be a positive finite number"),
    _c("cli-resume-with-config", "cli", "run --resume with a CONFIG as well", ("run", "{cfg}", "--resume", "{tmp}/run"),
       r"--resume RUN_DIR takes no CONFIG or overrides"),
    _c("cli-resume-with-override", "cli", "run --resume with an override", ("run", "--resume", "{tmp}/run", "seed=1"),
       r"--resume RUN_DIR takes no CONFIG or overrides"),
    _c("cli-resume-and-overwrite", "cli", "run --resume together with --overwrite",
       ("run", "--resume", "{tmp}/run", "--overwrite"), r"resume and overwrite exclude each other",
       setup=run_dir(files={"checkpoint.pt": b"x"}), after=unchanged("run/checkpoint.pt", b"x")),
    _c("resume-missing-dir", "cli", "run --resume of a directory that does not exist",
       ("run", "--resume", "{tmp}/nope"), r"cannot resume '.*nope': the directory does not exist"),
    _c("resume-empty-dir", "cli", "run --resume of an empty directory", ("run", "--resume", "{tmp}/empty"),
       r".*'.*empty.*'.*(does not exist|not a sparsetrain run|no config)", setup=lambda t: (t / "empty").mkdir()),
    _c("resume-foreign-dir", "run-dir", "run --resume of a directory with config.yaml but no run.json and no "
       "checkpoint", ("run", "--resume", "{tmp}/run"), r"cannot resume '.*run': it is not a sparsetrain run "
       r"directory", setup=chain(run_dir(marker=None), write("run/notes.txt", NOTES)),
       after=unchanged("run/notes.txt", NOTES)),
    _c("resume-no-checkpoint", "run-dir", "run --resume of a run that stopped before its first checkpoint",
       ("run", "--resume", "{tmp}/run"), r"cannot resume: '.*checkpoint\.pt' does not exist",
       setup=run_dir(files={"metrics.jsonl": ""})),
    _c("resume-other-config", "run-dir", "run --resume where config.yaml was edited after the run (fingerprint "
       "differs)", ("run", "--resume", "{tmp}/run"), r"cannot resume '.*run': its run is of config 0123456789abcdef",
       setup=run_dir(marker="other", files={"checkpoint.pt": b"x"})),
    _c("resume-corrupt-checkpoint", "checkpoint", "run --resume with a truncated checkpoint.pt",
       ("run", "--resume", "{tmp}/run"), r"checkpoint '.*checkpoint\.pt' is corrupt or not a torch file",
       setup=run_dir(files={"checkpoint.pt": b"PK\x03\x04 truncated"}), after=unchanged("run/checkpoint.pt",
                                                                                      b"PK\x03\x04 truncated")),
    _c("resume-malicious-checkpoint", "checkpoint", "run --resume with a checkpoint whose pickle runs os.system",
       ("run", "--resume", "{tmp}/run"), r"checkpoint '.*checkpoint\.pt' needs the global '(posix|os)\.system'",
       setup=chain(run_dir(), torch_file("run/checkpoint.pt", lambda t: _Evil(_evil_command(t)))),
       after=nothing_ran),
    _c("resume-state-dict-checkpoint", "checkpoint", "run --resume where checkpoint.pt is a plain state dict",
       ("run", "--resume", "{tmp}/run"), r"checkpoint '.*checkpoint\.pt' is not a sparsetrain run checkpoint",
       setup=chain(run_dir(), torch_file("run/checkpoint.pt", lambda t: _mlp_state()))),
    _c("resume-future-format", "checkpoint", "run --resume of a checkpoint of a newer format",
       ("run", "--resume", "{tmp}/run"), r"checkpoint '.*' has format 'sparsetrain-checkpoint-v9', which this "
       r"sparsetrain cannot read", setup=chain(run_dir(), torch_file("run/checkpoint.pt", lambda t: {
           "format": "sparsetrain-checkpoint-v9"}))),
    _c("resume-v01-other-config", "checkpoint", "run --resume of an unmarked (0.1) run whose checkpoint is of "
       "another config", ("run", "--resume", "{tmp}/run"), r"checkpoint '.*' was written by config 0000",
       setup=chain(run_dir(marker=None), torch_file("run/checkpoint.pt", lambda t: {
           "format": "sparsetrain-checkpoint-v2", "fingerprint": "0000000000000000"}))),

    # ---- eval ----------------------------------------------------------------------------------
    _c("eval-missing-checkpoint", "checkpoint", "eval of a checkpoint that does not exist",
       ("eval", "{tmp}/nope.pt", "--config", "{cfg}"), r"checkpoint '.*nope\.pt' does not exist"),
    _c("eval-checkpoint-directory", "checkpoint", "eval of a directory", ("eval", "{tmp}", "--config", "{cfg}"),
       r"checkpoint '.*' is a directory; give the checkpoint file"),
    _c("eval-empty-checkpoint", "checkpoint", "eval of an empty file", ("eval", "{tmp}/empty.pt", "--config", "{cfg}"),
       r"checkpoint '.*empty\.pt' is corrupt or not a torch file", setup=write("empty.pt", b"")),
    _c("eval-text-checkpoint", "checkpoint", "eval of a text file", ("eval", "{tmp}/m.pt", "--config", "{cfg}"),
       r"checkpoint '.*m\.pt' is corrupt or not a torch file", setup=write("m.pt", "hello\n")),
    _c("eval-truncated-checkpoint", "checkpoint", "eval of a checkpoint cut in half",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}"), r"checkpoint '.*m\.pt' is corrupt or not a torch file",
       setup=lambda t: (torch_file("full.pt", lambda _: _mlp_state())(t),
                        (t / "m.pt").write_bytes((t / "full.pt").read_bytes()[:600]))),
    _c("eval-malicious-checkpoint", "checkpoint", "eval of a checkpoint whose pickle runs os.system",
       ("eval", "{tmp}/evil.pt", "--config", "{cfg}"), r"checkpoint '.*evil\.pt' needs the global "
       r"'(posix|os)\.system', which sparsetrain refused to load",
       setup=torch_file("evil.pt", lambda t: _Evil(_evil_command(t))), after=nothing_ran),
    _c("eval-malicious-legacy-pickle", "checkpoint", "eval of a plain (non-zip) pickle that runs os.system",
       ("eval", "{tmp}/evil.pkl", "--config", "{cfg}"), r"checkpoint '.*evil\.pkl' (needs the global|holds data that "
       r"sparsetrain refused|is corrupt)", setup=pickle_file("evil.pkl", lambda t: _Evil(_evil_command(t))),
       after=nothing_ran),
    _c("eval-pickled-module", "checkpoint", "eval of a pickled nn.Module (torch.save(model))",
       ("eval", "{tmp}/model.pt", "--config", "{cfg}"), r"checkpoint '.*model\.pt' needs the global "
       r"'sparsetrain\.models\.mlp\.MLP'.*save model\.state_dict\(\) instead",
       setup=torch_file("model.pt", lambda t: __import__("sparsetrain.models.registry", fromlist=["_"]).build_model(
           "mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[16]))),
    _c("eval-wrong-architecture", "checkpoint", "eval of a state dict of another model",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}"), r"checkpoint '.*m\.pt' does not fit MLP: missing \['1\.weight'",
       setup=torch_file("m.pt", lambda t: {"stem.weight": __import__("torch").zeros(4, 1, 3)})),
    _c("eval-wrong-shape", "checkpoint", "eval of an MLP state dict with hidden width 32 instead of 16",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}"), r"checkpoint '.*m\.pt': 1\.weight has shape \(32, 64\), model "
       r"expects \(16, 64\)", setup=torch_file("m.pt", lambda t: _mlp_state([32]))),
    _c("eval-not-state-dict", "checkpoint", "eval of a file holding a list of tensors",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}"), r"checkpoint '.*m\.pt' holds no model state dict",
       setup=torch_file("m.pt", lambda t: [__import__("torch").zeros(2)])),
    _c("eval-missing-config", "cli", "eval with a --config that does not exist",
       ("eval", "{tmp}/m.pt", "--config", "{tmp}/nope.yaml"), r"config file '.*nope\.yaml' does not exist",
       setup=torch_file("m.pt", lambda t: _mlp_state())),
    _c("eval-bad-override", "cli", "eval with an out-of-range override",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "data.eval_batch_size=0"), r"data.eval_batch_size=0",
       setup=torch_file("m.pt", lambda t: _mlp_state())),

    # ---- eval --masks --------------------------------------------------------------------------
    _c("masks-missing", "masks", "eval --masks of a file that does not exist",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}/nope.npy"), r".*nope\.npy.*(does not exist|"
       r"No such file)", setup=torch_file("m.pt", lambda t: _mlp_state())),
    _c("masks-directory", "masks", "eval --masks of a directory",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}"), r".*'.*'.*(directory|does not exist)",
       setup=torch_file("m.pt", lambda t: _mlp_state())),
    _c("masks-malicious", "masks", "eval --masks of a torch file whose pickle runs os.system",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}/evil.pt"), r"mask file '.*evil\.pt' needs the "
       r"global '(posix|os)\.system'", setup=chain(torch_file("m.pt", lambda t: _mlp_state()),
                                                   torch_file("evil.pt", lambda t: _Evil(_evil_command(t)))),
       after=nothing_ran),
    _c("masks-malicious-npy", "masks", "eval --masks of a weight_mask.npy object array that runs os.system",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}/weight_mask.npy"), r"mask file '.*weight_mask"
       r"\.npy' needs the global '(posix|os)\.system'",
       setup=chain(torch_file("m.pt", lambda t: _mlp_state()), lambda t: _write_evil_npy(t / "weight_mask.npy")),
       after=nothing_ran),
    _c("masks-wrong-count", "masks", "eval --masks with 1 mask for 2 target layers",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}/masks.pt"), r".*(1 mask|2 target|count)",
       setup=chain(torch_file("m.pt", lambda t: _mlp_state()), torch_file("masks.pt", lambda t: _mlp_masks(1)))),
    _c("masks-wrong-shape", "masks", "eval --masks whose first mask has the wrong shape",
       ("eval", "{tmp}/m.pt", "--config", "{cfg}", "--masks", "{tmp}/masks.pt"), r".*shape",
       setup=chain(torch_file("m.pt", lambda t: _mlp_state()),
                   torch_file("masks.pt", lambda t: _mlp_masks(2, [(64, 16), (10, 16)])))),
    _c("masks-not-binary", "masks", "eval --masks holding 0.5", ("eval", "{tmp}/m.pt", "--config", "{cfg}",
       "--masks", "{tmp}/masks.pt"), r".*values other than 0 and 1",
       setup=chain(torch_file("m.pt", lambda t: _mlp_state()), torch_file("masks.pt", lambda t: _mlp_masks(2, value=0.5)))),
    _c("masks-garbage", "masks", "eval --masks of random bytes", ("eval", "{tmp}/m.pt", "--config", "{cfg}",
       "--masks", "{tmp}/masks.pt"), r"mask file '.*masks\.pt' holds data that sparsetrain refused to load|.*masks\.pt.*not a torch mask-list file",
       setup=chain(torch_file("m.pt", lambda t: _mlp_state()), write("masks.pt", b"\x01\x02garbage"))),

    # ---- report --------------------------------------------------------------------------------
    _c("report-missing-dir", "cli", "report of a directory that does not exist", ("report", "{tmp}/nope"),
       r".*nope.*(not a run directory|does not exist)"),
    _c("report-empty-dir", "cli", "report of an empty directory", ("report", "{tmp}/empty"),
       r"'.*empty' is not a sparsetrain run directory \(no run\.json\)", setup=lambda t: (t / "empty").mkdir()),
    _c("report-foreign-dir", "cli", "report of a user's directory holding a config.yaml and a report.md of theirs",
       ("report", "{tmp}/mine"), r"'.*mine' is not a sparsetrain run directory \(no run\.json\); report writes",
       setup=chain(write("mine/config.yaml", "stages: []\n"), write("mine/report.md", NOTES)),
       after=unchanged("mine/report.md", NOTES)),
    _c("report-file", "cli", "report of a regular file", ("report", "{cfg}"), r".*(not a run directory|not a directory)"),
    _c("report-bad-config", "cli", "report of a directory whose config.yaml is invalid YAML",
       ("report", "{tmp}/run"), r".*config\.yaml: invalid YAML",
       setup=chain(run_dir(config=False), write("run/config.yaml", "a: [1\n"))),
    _c("report-garbage-metrics", "cli", "report of a run whose metrics.jsonl is garbage: the report is written and "
       "lists the unreadable line under 'Missing or incomplete'", ("report", "{tmp}/run"), code=0,
       setup=run_dir(files={"metrics.jsonl": "{not json\n", "summary.json": "{}"}),
       after=mentions("run/report.md", "metrics.jsonl: 1 unreadable line(s) skipped")),

    # ---- demo ----------------------------------------------------------------------------------
    _c("demo-configs-empty", "cli", "demo --configs of an empty directory", ("demo", "--configs", "{tmp}/empty",
       "--out", "{tmp}/out"), r"demo config directory '.*empty' holds no \*\.yaml file",
       setup=lambda t: (t / "empty").mkdir(), after=absent("out")),
    _c("demo-configs-missing", "cli", "demo --configs of a directory that does not exist",
       ("demo", "--configs", "{tmp}/nope", "--out", "{tmp}/out"), r"demo config directory '.*nope' "
       r"(holds no \*\.yaml file|does not exist)", after=absent("out")),
    _c("demo-out-foreign", "run-dir", "demo --out over a directory of the user's (a foreign sub-directory)",
       ("demo", "--out", "{tmp}/out"), r"demo output '.*00_dense' holds files sparsetrain did not write",
       setup=write("out/00_dense/notes.txt", NOTES), after=unchanged("out/00_dense/notes.txt", NOTES)),
    _c("demo-out-results-foreign", "run-dir", "demo --out where results.md is the user's file",
       ("demo", "--out", "{tmp}/out"), r"demo output '.*results\.md' exists and was not written by the demo",
       setup=write("out/results.md", NOTES), after=unchanged("out/results.md", NOTES)),
    _c("demo-out-file", "run-dir", "demo --out that is a regular file", ("demo", "--out", "{tmp}/out"),
       r".*'.*out.*'.*(file|not a directory)", setup=write("out", NOTES), after=unchanged("out", NOTES)),
    _c("demo-bad-override", "cli", "demo with an invalid override", ("demo", "--out", "{tmp}/out", "seed=-3"),
       r"seed=-3", after=absent("out")),
    _c("demo-seeds-repeated", "cli", "demo --seeds with a repeated seed", ("demo", "--out", "{tmp}/out", "--seeds",
       "0,0"), r"argument --seeds: '0,0': seeds must be distinct integers >= 0", after=absent("out")),
    _c("demo-jobs-zero", "cli", "demo --jobs 0", ("demo", "--out", "{tmp}/out", "--jobs", "0"),
       r"--jobs 0 must be at least 1", after=absent("out")),

    # ---- run directories -----------------------------------------------------------------------
    _c("run-dir-foreign", "run-dir", "output_dir holding the user's files", RUN, r"output directory '.*run' holds "
       r"files sparsetrain did not write \(e\.g\. 'notes\.txt'; no run\.json\)",
       setup=write("run/notes.txt", NOTES), after=both(unchanged("run/notes.txt", NOTES), absent("run/run.json"))),
    _c("run-dir-foreign-overwrite", "run-dir", "--overwrite on a directory holding the user's files",
       (*RUN, "--overwrite"), r"output directory '.*run' holds files sparsetrain did not write.*--overwrite replaces "
       r"only sparsetrain runs", setup=write("run/notes.txt", NOTES),
       after=both(unchanged("run/notes.txt", NOTES), absent("run/run.json"))),
    _c("run-dir-foreign-json", "run-dir", "output_dir whose run.json is someone else's JSON", RUN,
       r"output directory '.*run' holds files sparsetrain did not write", setup=write("run/run.json", '{"a": 1}'),
       after=unchanged("run/run.json", '{"a": 1}')),
    _c("run-dir-finished", "run-dir", "a finished run in output_dir, no --overwrite", RUN,
       r"output directory '.*run' holds a finished run; pass --overwrite",
       setup=run_dir(files={"summary.json": "{}", "model_final.pt": b"w"}),
       after=unchanged("run/model_final.pt", b"w")),
    _c("run-dir-stopped", "run-dir", "a stopped run (checkpoint) in output_dir, no --overwrite", RUN,
       r"output directory '.*run' holds a stopped run; resume it with --resume",
       setup=run_dir(files={"checkpoint.pt": b"c"}), after=unchanged("run/checkpoint.pt", b"c")),
    _c("run-dir-other-config", "run-dir", "a finished run of another config in output_dir", RUN,
       r"output directory '.*run' holds a finished run of another config",
       setup=run_dir(marker="other", files={"summary.json": "{}"}), after=unchanged("run/summary.json", "{}")),
    _c("run-dir-unstarted", "run-dir", "output_dir holding a run that stopped before its first checkpoint", RUN,
       r"output directory '.*run' holds a run that stopped before its first checkpoint",
       setup=run_dir(files={"metrics.jsonl": ""}), after=unchanged("run/metrics.jsonl", "")),
    _c("run-dir-is-file", "run-dir", "output_dir that is a regular file", (*RUN, "output_dir={tmp}/out.txt"),
       r"output directory '.*out\.txt' is a file, not a directory", setup=write("out.txt", NOTES),
       after=unchanged("out.txt", NOTES)),
    _c("run-dir-overwrite-keeps-user-files", "run-dir", "--overwrite of a previous run that also holds a user's "
       "file: the run is replaced, the user's file kept", (*RUN, "--overwrite"), code=0,
       setup=run_dir(files={"summary.json": "{}", "notes.txt": NOTES}),
       after=both(unchanged("run/notes.txt", NOTES), no_half_written())),

    # ---- data: npz -----------------------------------------------------------------------------
    _c("npz-missing", "data", "npz path that does not exist", _npz_args("nope.npz"),
       r"task.dataset.options: data path '.*nope\.npz' does not exist"),
    _c("npz-not-npz", "data", "npz path holding text", _npz_args("data.npz"),
       r"dataset 'npz': '.*data\.npz' is not a readable \.npz file", setup=write("data.npz", "x,y\n1,2\n")),
    _c("npz-directory", "data", "npz path that is a directory", _npz_args("dir"),
       r"dataset 'npz': path='.*dir' (does not exist|is a directory)", setup=lambda t: (t / "dir").mkdir()),
    _c("npz-missing-array", "data", "npz without y_test", _npz_args(),
       r"dataset 'npz': '.*data\.npz' lacks array 'y_test'", setup=npz_file(keep=("x_train", "y_train", "x_test"))),
    _c("npz-nan", "data", "npz with a NaN in x_train", _npz_args(), r"dataset 'npz': .*x_train.*(NaN|non-finite)",
       setup=npz_file(edit=_poke("x_train", (3, 0, 2), float("nan"))), after=absent("run/model_final.pt")),
    _c("npz-inf", "data", "npz with +inf in x_test", _npz_args(), r"dataset 'npz': .*x_test.*(inf|non-finite)",
       setup=npz_file(edit=_poke("x_test", (0, 0, 0), float("inf"))), after=absent("run/model_final.pt")),
    _c("npz-float-labels", "data", "npz with labels 0.5, 1.5, ...", _npz_args(),
       r"dataset 'npz': .*y_train.*(integer|float)", setup=npz_file(edit=_set("y_train", lambda y: y + 0.5)),
       after=absent("run/model_final.pt")),
    _c("npz-negative-labels", "data", "npz with a label -1", _npz_args(), r"dataset 'npz': labels must be in",
       setup=npz_file(edit=_poke("y_train", (0,), -1))),
    _c("npz-label-too-large", "data", "npz labels up to 2 with num_classes 2", _npz_args("data.npz",
       "task.dataset.options.num_classes=2"), r"dataset 'npz': labels must be in \[0, 2\), found up to 2",
       setup=npz_file()),
    _c("npz-empty-test", "data", "npz with an empty test split", _npz_args(), r"dataset 'npz': .*(empty|no example)",
       setup=npz_file(n_test=0)),
    _c("npz-empty-train", "data", "npz with an empty training split", _npz_args(),
       r"dataset 'npz': .*(empty|no example)", setup=npz_file(n_train=0)),
    _c("npz-shape-mismatch", "data", "npz x_train (N,1,8) but x_test (N,1,9)", _npz_args(),
       r"dataset 'npz': x_train \(40, 1, 8\) and x_test \(20, 1, 9\) must be",
       setup=npz_file(edit=_set("x_test", lambda x: __import__("numpy").zeros((20, 1, 9), dtype="float32")))),
    _c("npz-flat-inputs", "data", "npz with 2-D inputs (N, L)", _npz_args(),
       r"dataset 'npz': x_train \(40, 8\) and x_test \(20, 8\) must be",
       setup=npz_file(edit=lambda a: a.update(x_train=a["x_train"][:, 0], x_test=a["x_test"][:, 0]))),
    _c("npz-label-count", "data", "npz with 40 inputs but 39 labels", _npz_args(),
       r"dataset 'npz': '.*data\.npz' has different numbers of inputs and labels",
       setup=npz_file(edit=_set("y_train", lambda y: y[:39]))),
    _c("npz-object-array", "data", "npz holding a pickled object array", _npz_args(),
       r"dataset 'npz': '.*data\.npz' is not a readable \.npz file|dataset 'npz': .*(object|pickle)",
       setup=npz_file(edit=_set("x_train", lambda x: __import__("numpy").array([None] * 40, dtype=object)))),
    _c("npz-option-unknown", "data", "npz with an unknown option", _npz_args("data.npz",
       "task.dataset.options.root=."), r"dataset 'npz' has no option 'root'", setup=npz_file()),
    _c("npz-no-path", "data", "npz without the path option", ("run", "{cfg}", "task.dataset.name=npz"),
       r"dataset 'npz' needs option 'path'"),

    # ---- data: cifar10 -------------------------------------------------------------------------
    _c("cifar-root-missing", "data", "cifar10 root that does not exist", _cifar_args("nope"),
       r".*data root '.*nope' does not exist"),
    _c("cifar-root-file", "data", "cifar10 root that is a file", _cifar_args("file"),
       r"dataset 'cifar10': root '.*file' is not a directory", setup=write("file", "x")),
    _c("cifar-missing-batch", "data", "cifar10 folder without data_batch_3", _cifar_args(),
       r"dataset 'cifar10': missing batch file '.*data_batch_3'", setup=cifar_dir(skip=("data_batch_3",))),
    _c("cifar-garbage-batch", "data", "cifar10 batch of random bytes", _cifar_args(),
       r"(dataset 'cifar10': )?CIFAR-10 file '.*data_batch_2' is not a readable pickle",
       setup=cifar_dir(bad={"data_batch_2": lambda t: b"\x80\x02garbage"})),
    _c("cifar-malformed-batch", "data", "cifar10 batch with float32 data", _cifar_args(),
       r"(dataset 'cifar10': )?CIFAR-10 batch '.*data_batch_1': data is float32",
       setup=cifar_dir(bad={"data_batch_1": lambda t: pickle.dumps(
           {b"data": __import__("numpy").zeros((4, 3072), dtype="float32"), b"labels": [0, 1, 2, 3]})})),
    _c("cifar-labels-out-of-range", "data", "cifar10 batch with label 10", _cifar_args(),
       r"(dataset 'cifar10': )?CIFAR-10 batch '.*test_batch': labels must be in 0\.\.9",
       setup=cifar_dir(bad={"test_batch": lambda t: pickle.dumps(
           {b"data": __import__("numpy").zeros((2, 3072), dtype="uint8"), b"labels": [3, 10]})})),
    _c("cifar-batch-not-dict", "data", "cifar10 batch holding a list", _cifar_args(),
       r"(dataset 'cifar10': )?CIFAR-10 file '.*data_batch_4' holds a list, not a dict",
       setup=cifar_dir(bad={"data_batch_4": lambda t: pickle.dumps([1, 2])})),
    _c("cifar-malicious-batch", "data", "cifar10 batch whose pickle runs os.system", _cifar_args(),
       r"dataset 'cifar10': CIFAR-10 file '.*data_batch_1' needs the global '(posix|os)\.system', which sparsetrain refused",
       setup=cifar_dir(bad={"data_batch_1": lambda t: pickle.dumps(_Evil(_evil_command(t)))}), after=nothing_ran),
    _c("cifar-malicious-meta", "data", "cifar10 batches.meta whose pickle runs os.system", _cifar_args(),
       r"dataset 'cifar10': CIFAR-10 file '.*batches\.meta' needs the global '(posix|os)\.system'",
       setup=cifar_dir(bad={"batches.meta": lambda t: pickle.dumps(_Evil(_evil_command(t)))}), after=nothing_ran),

    # ---- data: imagenet ------------------------------------------------------------------------
    _c("imagenet-root-missing", "data", "imagenet root that does not exist", _imagenet_args("nope"),
       r".*data root '.*nope' does not exist"),
    _c("imagenet-no-val", "data", "imagenet root without val/", _imagenet_args(),
       r"dataset 'imagenet': '.*val' is missing", setup=imagenet_dir(train={"n01": 2}, val=None)),
    _c("imagenet-empty-train", "data", "imagenet train/ without class folders", _imagenet_args(),
       r"dataset 'imagenet': image folder '.*train' has no class folders", setup=imagenet_dir(train={}, val={})),
    _c("imagenet-empty-class", "data", "imagenet class folder without images", _imagenet_args(),
       r"dataset 'imagenet': class folder '.*n02' has no", setup=imagenet_dir(train={"n01": 2, "n02": 0},
                                                                              val={"n01": 1})),
    _c("imagenet-val-extra-class", "data", "imagenet val class missing from train", _imagenet_args(),
       r"dataset 'imagenet': val classes are not a subset of the train classes: 'n09'",
       setup=imagenet_dir(train={"n01": 2}, val={"n01": 1, "n09": 1})),
    _c("imagenet-image-size-zero", "data", "imagenet image_size 0", _imagenet_args("imagenet",
       "task.dataset.options.image_size=0"), r"dataset 'imagenet': image_size=0 is not an integer >= 1",
       setup=imagenet_dir(train={"n01": 2}, val={"n01": 1})),
    _c("imagenet-resize-smaller", "data", "imagenet resize_size below image_size", _imagenet_args("imagenet",
       "task.dataset.options.image_size=16"), r"dataset 'imagenet': resize_size=8 is smaller than image_size=16",
       setup=imagenet_dir(train={"n01": 2}, val={"n01": 1})),
    _c("imagenet-corrupt-image", "data", "imagenet training image that is not an image", _imagenet_args(),
       r"cannot read image '.*n01/1\.png'", setup=imagenet_dir(train={"n01": 3}, val={"n01": 1},
                                                             corrupt="train/n01/1.png"),
       after=absent("run/model_final.pt")),

    # ---- disk ----------------------------------------------------------------------------------
    _c("disk-output-under-file", "disk", "output_dir below a regular file ({tmp}/notes.txt/run)",
       (*RUN, "output_dir={tmp}/notes.txt/run"), r"output directory '.*notes\.txt/run' cannot be created: '.*notes\.txt' is a file",
       setup=write("notes.txt", NOTES), after=unchanged("notes.txt", NOTES)),
    _c("disk-output-under-proc", "disk", "output_dir under /proc (not writable, even by root)",
       (*RUN, "output_dir=/proc/sparsetrain-reliability/run"), r"cannot (create|write|access|read) "
       r"'/proc/sparsetrain-reliability.*': .*"),
    _c("disk-config-under-file", "disk", "config path below a regular file", ("run", "{tmp}/notes.txt/c.yaml"),
       r"config file '.*notes\.txt/c\.yaml' does not exist", setup=write("notes.txt", NOTES)),
    _c("disk-report-md-is-directory", "disk", "report of a run whose report.md is a directory",
       ("report", "{tmp}/run"), r"cannot write '.*report\.md'.*", setup=chain(run_dir(), lambda t: (
           t / "run" / "report.md").mkdir())),
    _c("disk-full-checkpoint", "disk", "disk full when the first checkpoint is written (files limited to 4 KiB)",
       RUN, r"cannot write '.*checkpoint\.pt': File too large", file_size_limit=4096,
       after=both(absent("run/model_final.pt", "run/summary.json", "run/checkpoint.pt"), no_half_written())),
    _c("disk-full-report", "disk", "disk full while report writes its plots (files limited to 2 KiB)",
       ("report", "{tmp}/run"), r"cannot write '.*(report\.md|\.png)': File too large", file_size_limit=2048,
       setup=run_dir(files={"metrics.jsonl": "", "summary.json": "{}"}), after=no_half_written()),
    _c("disk-demo-out-under-proc", "disk", "demo --out under /proc", ("demo", "--out", "/proc/sparsetrain-demo"),
       r"cannot (create|write|access|read) '/proc/sparsetrain-demo.*"),
    _c("disk-init-checkpoint-dir", "disk", "init.checkpoint that is a directory", (*RUN, "init.checkpoint={tmp}"),
       r"init.checkpoint='.*': file '.*' does not exist"),

    # ---- training ------------------------------------------------------------------------------
    _c("training-lr-huge", "training", "learning rate 1e30: the loss becomes NaN",
       (*RUN, "optimizer.lr=1e30"), r"(training loss|loss) is (nan|inf|NaN|non-finite).*step \d+",
       after=both(absent("run/model_final.pt", "run/summary.json"), no_half_written())),
    _c("training-npz-huge-inputs", "training", "npz inputs of 1e38 (finite, but the loss overflows)",
       _npz_args("data.npz", "training.on_nonfinite=stop"), r".*(nan|inf|non-finite).*step \d+",
       setup=npz_file(edit=_set("x_train", lambda x: (x * 0 + 3e38).astype("float32"))),
       after=absent("run/model_final.pt")),
    _c("training-init-nan-weights", "training", "init.checkpoint whose weights hold a NaN",
       (*RUN, "init.checkpoint={tmp}/nan.pt"), r"training loss is nan at step 0 .*first non-finite tensor: "
       r"parameter '1\.weight'", setup=torch_file("nan.pt", lambda t: _with_nan(_mlp_state())),
       after=absent("run/model_final.pt")),
    _c("training-amp-fp16-cpu", "training", "amp fp16 on the CPU", (*RUN, "training.amp=fp16"),
       r"training.amp='fp16' needs a CUDA device", after=absent("run/model_final.pt")),
    # translation: options the task checks, and checkpoint averaging
    _c("translation-digits-dataset", "config", "translation with a classification dataset", (*RUN, *TRANSLATION,
       "task.dataset.name=digits"), r"task.dataset.name='digits' is not a translation dataset; valid: embedded_en_de"),
    _c("translation-max-tokens-zero", "config", "translation max_tokens 0", (*RUN, *TRANSLATION,
       "task.options.max_tokens=0"), r"task.options.max_tokens=0: Input should be greater than or equal to 1"),
    _c("translation-unknown-option", "config", "a misspelled translation option", (*RUN, *TRANSLATION,
       "task.options.beams=4"), r"unknown key task.options.'beams'; valid: max_tokens, max_sentences"),
    _c("translation-not-a-transformer", "config", "translation with an MLP", (*RUN, *TRANSLATION[:-1],
       "task.model.name=mlp"), r"task.model.name='mlp' is not a Transformer; valid: transformer_wmt_en_de_big_t2t"),
    _c("translation-missing-data-dir", "data", "fairseq data directory that does not exist", (*RUN, *TRANSLATION,
       "task.dataset.name=fairseq", "task.dataset.options.path={tmp}/wmt"), r"task.dataset.options: data path .*wmt' does not exist"),
    _c("translation-update-freq-toy", "config", "update_freq 2 for a task whose counts are not known in advance",
       (*RUN, "training.update_freq=2", "imports=[toy_regression_task]", "task.kind=toy_regression"),
       r"training.update_freq=2: task 'toy_regression' counts targets"),
    _c("part-seg-shapenet-without-root", "config", "ShapeNet part without its directory", (*RUN, *PART_SEG,
       "task.dataset.name=shapenet_part"), r"task.dataset.name='shapenet_part' reads a directory: set "
       r"task.dataset.options.root"),
    _c("part-seg-missing-root", "data", "ShapeNet part directory that does not exist", (*RUN, *PART_SEG,
       "task.dataset.name=shapenet_part", "task.dataset.options.root={tmp}/shapenet"),
       r"task.dataset.options: data root .*shapenet' does not exist"),
    _c("part-seg-npoints-tiny", "config", "fewer points than the sampler needs", (*RUN, *PART_SEG,
       "task.dataset.options.npoints=8"), r"task.dataset.options.npoints=8: Input should be greater than or "
       r"equal to 32"),
    _c("part-seg-not-pointnet", "config", "part segmentation with an MLP", (*RUN, *PART_SEG[:-1],
       "task.model.name=mlp"), r"task.model.name='mlp' is not a PointNet\+\+ part-segmentation model"),
    _c("detection-coco-without-root", "config", "COCO without its directory", (*RUN, *DETECTION,
       "task.dataset.name=coco2017"), r"task.dataset.name='coco2017' reads a directory: set task.dataset.options.root"),
    _c("detection-missing-coco-root", "data", "COCO directory that does not exist", (*RUN, *DETECTION,
       "task.dataset.name=coco2017", "task.dataset.options.root={tmp}/coco"),
       r"task.dataset.options: data root .*coco' does not exist"),
    _c("detection-no-annotations", "data", "COCO directory without its annotation file", (*RUN, *DETECTION,
       "task.dataset.name=coco2017", "task.dataset.options.root={tmp}/coco"),
       r"missing COCO annotations file '.*coco/annotations/instances_train2017.json'", setup=write("coco/x", "")),
    _c("detection-bad-nms", "config", "an NMS threshold of 0", (*RUN, *DETECTION, "task.options.nms_iou=0"),
       r"task.options.nms_iou=0: Input should be greater than 0"),
    _c("detection-bad-augment", "config", "an unknown augmentation", (*RUN, *DETECTION,
       "task.dataset.options.augment=mosaic"), r"task.dataset.options.augment='mosaic': Input should be 'ssd', "
       r"'flip' or 'none'"),
    _c("detection-not-ssd", "config", "detection with an MLP", (*RUN, *DETECTION[:3], "task.model.name=mlp"),
       r"task.model.name='mlp' is not a SSD model; valid: ssd300_resnet50, ssd_small, ssd_tiny"),
    _c("detection-bad-model-option", "config", "an SSD option the model does not have", (*RUN, *DETECTION,
       "task.model.options.depth=3"), r"model 'ssd_tiny' has no option 'depth'"),
    _c("backbone-for-classification", "config", "a backbone checkpoint for a task without a backbone",
       (*RUN, "init.backbone_checkpoint={tmp}/r50.pt"), r"init.backbone_checkpoint='.*r50.pt': task 'classification' "
       r"has no backbone to initialise", setup=torch_file("r50.pt", lambda t: _mlp_state())),
    _c("average-one-file", "cli", "average with one checkpoint", ("average", "{tmp}/a.pt", "--out", "{tmp}/avg.pt"),
       r"average needs at least 2 checkpoints, got 1", setup=torch_file("a.pt", lambda t: _mlp_state()),
       after=absent("avg.pt")),
    _c("average-shape-mismatch", "checkpoint", "average of checkpoints of different models",
       ("average", "{tmp}/a.pt", "{tmp}/b.pt", "--out", "{tmp}/avg.pt"), r"checkpoint .*b.pt': 1.weight has shape "
       r"\(32, 64\), .*a.pt' has \(16, 64\)", setup=chain(torch_file("a.pt", lambda t: _mlp_state()),
                                                        torch_file("b.pt", lambda t: _mlp_state([32]))),
       after=absent("avg.pt")),
    _c("average-out-exists", "cli", "average onto an existing file", ("average", "{tmp}/a.pt", "{tmp}/a.pt", "--out",
       "{tmp}/keep.txt"), r"--out .*keep.txt' exists; pass --overwrite", setup=chain(
           torch_file("a.pt", lambda t: _mlp_state()), write("keep.txt", "mine")), after=unchanged("keep.txt", "mine")),
    _c("average-malicious", "checkpoint", "average of a checkpoint whose pickle runs os.system",
       ("average", "{tmp}/evil.pt", "{tmp}/evil.pt", "--out", "{tmp}/avg.pt"),
       r"checkpoint '.*evil\.pt' needs the global '(posix|os)\.system', which sparsetrain refused to load",
       setup=torch_file("evil.pt", lambda t: _Evil(_evil_command(t))),
       after=both(nothing_ran, absent("avg.pt"))),
]


def _write_evil_npy(path: Path) -> None:
    """A ``.npy`` object array (as GPMT writes masks) whose pickle payload runs ``os.system``."""
    import numpy as np
    from numpy.lib import format as npy_format

    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (2,)})
        f.write(pickle.dumps(_Evil(f"touch {path.parent / 'PWNED'}"), protocol=3))
    del np


def _with_nan(state: dict[str, Any]) -> dict[str, Any]:
    state["1.weight"][0, 0] = float("nan")
    return state


def cases_by_area() -> dict[str, list[Case]]:
    grouped: dict[str, list[Case]] = {area: [] for area in AREAS}
    for case in CASES:
        grouped[case.area].append(case)
    return grouped


def _check_table() -> None:
    seen: set[str] = set()
    for case in CASES:
        assert case.id not in seen, f"duplicate case id {case.id!r}"
        assert case.area in AREAS, f"case {case.id!r}: unknown area {case.area!r}"
        seen.add(case.id)


_check_table()
