"""Run configuration: YAML validated into typed, frozen pydantic models.

A config names a task (dataset + model), the optimizer and LR schedule, and a list of stages:
``dense`` and ``finetune`` train for some epochs, ``prune`` is a one-shot mask event. Every stage
that trains gets a fresh optimizer and LR schedule; a stage may override fields of the top-level
``optimizer`` and ``lr_schedule``.

``load_config(path, overrides)`` applies ``key=value`` overrides (dotted paths, list indices as
numbers, values parsed as YAML) before validation. Unknown keys and out-of-range values raise
``ConfigError`` with a one-line message naming the key, the bad value and the valid range.
Without an ``output_dir``, a config loaded with overrides writes to ``runs/<name>__<overrides>``
(:func:`default_output_dir`), so a sweep's runs do not share a directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import UserError
from .methods import (  # noqa: F401  (the stage schemas, re-exported: ``from sparsetrain.config import GaPStage``)
    REGISTRY,
    DSTStage,
    GaPStage,
    GMPStage,
    PartitionConfig,
    PruneStage,
    TrainStage,
    method_for,
    stage_schemas,
)
from .methods.schema import StrictModel, is_numeric


class ConfigError(UserError):
    """A config file or override that cannot be used; the message is one line."""


def _checks_files(info: ValidationInfo) -> bool:
    """Whether validation checks that data paths and checkpoints exist (``plan`` does not need them)."""
    return not (info.context or {}).get("skip_file_checks", False)


_Strict = StrictModel  # frozen, no unknown keys, no booleans as numbers (shared with the methods' stage schemas)
_is_numeric = is_numeric


class DatasetConfig(_Strict):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _data_paths_exist(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if _checks_files(info):
            for key in ("path", "root"):
                if key in options and not Path(str(options[key])).exists():
                    raise ValueError(f"data {key} {str(options[key])!r} does not exist")
        return options


class ModelConfig(_Strict):
    name: str = "small_resnet"
    options: dict[str, Any] = Field(default_factory=dict)


class TaskConfig(_Strict):
    kind: str = Field("classification", description="a registered task (sparsetrain.tasks.registry); a task "
                      "of your own registers itself in a module named under the top-level `imports:`")
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    options: dict[str, Any] = Field(default_factory=dict, description="the task's own settings, checked by the "
                                    "task (translation: batching by max_tokens, beam search, BLEU)")

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        from .tasks.registry import task_kinds

        kinds = task_kinds()
        if kind not in kinds:
            raise ValueError(f"not a registered task; registered: {', '.join(kinds)} (a task of your own: "
                             "name its module under imports)")
        return kind


class DataConfig(_Strict):
    batch_size: int = Field(64, ge=1, description="training examples per optimizer step, over all processes")
    eval_batch_size: int = Field(512, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: load in the main process)")
    drop_last: bool = False
    pin_memory: bool | Literal["auto"] = Field(
        "auto", description="load training batches into page-locked host memory, so host-to-GPU copies can be "
        "asynchronous (non_blocking); auto: on when the device is CUDA. Results are identical either way")
    persistent_workers: bool = Field(
        False, description="keep the num_workers worker processes alive from one epoch to the next (no start-up "
        "cost per epoch); each epoch reseeds them as fresh workers would be, so results are identical. "
        "Needs num_workers > 0")
    prefetch_factor: int | None = Field(
        None, ge=1, description="batches each worker loads ahead (null: torch's default, 2). Needs num_workers > 0; "
        "results are identical for any value")

    @model_validator(mode="after")
    def _worker_options_need_workers(self) -> DataConfig:
        for name, value, off in (("persistent_workers", self.persistent_workers, False),
                                 ("prefetch_factor", self.prefetch_factor, None)):
            if value != off and self.num_workers == 0:
                raise ValueError(f"{name}={json.dumps(value)} needs worker processes; valid: num_workers >= 1 "
                                 f"(num_workers=0), or {name}={json.dumps(off)}")
        return self


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate for the global batch (see lr_reference_batch)")
    lr_reference_batch: int | None = Field(
        None, ge=1, description="if set, lr is given for this global batch and scales linearly to data.batch_size "
        "(Goyal et al.'s rule): effective lr = lr * batch_size / lr_reference_batch")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    decay_norm_and_bias: bool = Field(True, description="false: weight_decay only on parameters of 2+ dimensions "
                                      "(not on biases and normalisation weights), as NVIDIA's SSD recipe")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0 (Nesterov momentum without momentum is undefined)")
        return self

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class LRScheduleConfig(_Strict):
    kind: Literal["constant", "cosine", "linear", "step", "inverse_sqrt"] = "cosine"
    unit: Literal["epoch", "iteration"] = Field("iteration", description="what one schedule step is")
    warmup: int = Field(0, ge=0, description="warm-up length in `unit`s")
    warmup_init_lr: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_size: int | None = Field(None, ge=1, description="step: decay every step_size units")
    milestones: tuple[int, ...] = ()
    gamma: float = Field(0.1, gt=0, le=1)


# The stage schemas belong to the method modules (sparsetrain.methods); the union of the
# registered ones is a config's ``stages`` item, told apart by ``kind``.
Stage = Annotated[Union[stage_schemas()], Field(discriminator="kind")]  # type: ignore[valid-type]


TrainingStage = TrainStage | GaPStage | GMPStage | DSTStage
"""Stages that train (and so have an optimizer and an LR schedule)."""


class BNMomentumConfig(_Strict):
    """BatchNorm momentum decayed by epochs, as the common PointNet++ recipe: ``max(initial * decay **
    (e // every), minimum)`` at epoch ``e`` of each optimizer segment (a stage, or a GaP step with a fresh
    optimizer: it restarts with the LR schedule). Momentum in torch's sense (weight of the new batch)."""

    initial: float = Field(0.1, gt=0, le=1)
    decay: float = Field(0.5, gt=0, le=1)
    every: int = Field(20, ge=1, description="epochs between two decays")
    minimum: float = Field(0.01, ge=0, le=1)


class TrainingConfig(_Strict):
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float | None = Field(
        None, description="mixup (Zhang et al. 2018) of every training batch, for tasks that implement it "
        "(classification): lam ~ Beta(alpha, alpha) and a permutation of the batch per step, drawn from the "
        "training RNG; inputs lam*x + (1-lam)*x[perm], loss lam*CE(y) + (1-lam)*CE(y[perm]), both with "
        "label_smoothing; evaluation unchanged. null or 0: off; else a finite number > 0")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm")
    bn_momentum: BNMomentumConfig | None = Field(
        None, description="decay BatchNorm momentum by epochs (PointNet++ recipe); null: the modules' own")
    update_freq: int = Field(
        1, ge=1, description="micro-batches per optimizer step over all processes, gradients accumulated (a "
        "token-batched task: batches of max_tokens per step, so fairseq's --update-freq U on W GPUs is U*W here "
        "and the config trains the same with any number of processes); must be a multiple of WORLD_SIZE")
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = Field(
        False, description="keep the model's 4-D weights and 4-D input batches in channels_last (NHWC) memory "
        "format, the fast layout of tensor-core convolutions; float results may differ in the last bits")
    compile: bool = Field(
        False, description="run the forward and backward through torch.compile(model) (the same parameters, so "
        "masks and checkpoints are unchanged; the first steps pay the compilation); float results may differ in "
        "the last bits")
    eval_every: int = Field(1, ge=1, description="epochs between evaluations (the last epoch always evaluates)")
    max_eval_batches: int | None = Field(
        None, ge=1, description="evaluate on the first N batches of the evaluation set only (None: all of it)")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (the end always saves)")
    keep_last_models: int = Field(
        0, ge=0, description="keep the model (a plain state dict) of the last N epoch ends in <run>/models/, the "
        "input of `sparsetrain average` (fairseq's checkpoint averaging); 0: none")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every N optimizer steps, in the middle of an epoch (preemption)")
    stop_check_every: int = Field(
        10, ge=1, description="under torchrun: steps between the ranks' agreement on a SIGTERM/SIGUSR1 stop; "
        "on an accelerator also the steps between reads of the training loss (the CPU reads every step)")
    on_nonfinite: Literal["stop", "skip", "continue"] = Field(
        "stop", description="a NaN/inf training loss: stop the run (exit non-zero), skip that batch's update, "
        "or continue (the pre-0.2 behaviour)")
    progress: bool = True
    loggers: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"], description="where metrics go: jsonl (always), tensorboard, wandb "
        "(offline unless WANDB_MODE); each optional one needs its extra: pip install 'sparsetrain[tensorboard]'")

    @field_validator("loggers")
    @classmethod
    def _jsonl_always(cls, value: list[str]) -> list[str]:
        return ["jsonl", *[name for name in dict.fromkeys(value) if name != "jsonl"]]

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("mixup_alpha")
    @classmethod
    def _mixup_alpha_positive(cls, value: float | None) -> float | None:
        """0 means off, like null, and is stored as null (so it leaves the fingerprint alone)."""
        if value is None or value == 0:
            return None
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a finite number > 0 (null or 0: off)")
        return value


class DistributedConfig(_Strict):
    """Settings that only matter under torchrun (WORLD_SIZE > 1)."""

    masks: Literal["identical", "broadcast"] = Field(
        "identical", description="every rank computes the masks, or rank 0 computes and broadcasts them; "
        "either way they are compared by checksum at every mask event")
    sync_batchnorm: Literal["auto", "on", "off"] = Field(
        "auto", description="SyncBatchNorm under DDP: auto = on for CUDA (it does not run on CPU)")

    @field_validator("sync_batchnorm", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class TargetsConfig(_Strict):
    """Which weights a run sparsifies: ``include``/``exclude`` select, then ``dense_first``/``dense_last``
    keep the first and the last selected weight (in parameter order: the stem and the classifier of the
    models here) dense. The RigL/NVIDIA convention GaP follows keeps the stem dense under uniform
    budgets; the classifier is an explicit choice. Methods compared in one table get the same targets."""

    include: list[str] | None = Field(None, description="module types as 'nn.Linear' or parameter-name regexes")
    exclude: list[str] | None = None
    dense_first: bool = Field(False, description="keep the first selected weight (the stem conv) dense")
    dense_last: bool = Field(False, description="keep the last selected weight (the classifier) dense")


class InitConfig(_Strict):
    checkpoint: str | None = Field(None, description="state dict to start from")
    backbone_checkpoint: str | None = Field(None, description="a backbone's state dict the task maps into its model "
                                            "(detection: a torchvision-format ResNet-50)")

    @field_validator("checkpoint", "backbone_checkpoint")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _checks_files(info) and not Path(value).is_file():
            raise ValueError(f"file {value!r} does not exist")
        return value


class RunConfig(_Strict):
    name: str = "run"
    imports: list[str] = Field(default_factory=list, description="modules imported before the config is "
                               "validated, e.g. one that registers a task, model or dataset of your own")
    seed: int = Field(0, ge=0, lt=2**32)
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    output_dir: str | None = Field(None, description="default: runs/<name>, or runs/<name>__<overrides> when "
                                   "overrides were given (see default_output_dir)")
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    training: TrainingConfig = TrainingConfig()
    targets: TargetsConfig = TargetsConfig()
    distributed: DistributedConfig = DistributedConfig()
    init: InitConfig = InitConfig()
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _stage_overrides_are_valid(self) -> RunConfig:
        for i, stage in enumerate(self.stages):
            if method_for(stage.kind).TRAINS:
                for section, build in (("optimizer", self.stage_optimizer), ("lr_schedule", self.stage_lr_schedule)):
                    try:
                        build(stage)
                    except ValidationError as err:
                        raise ValueError(_one_line(err, prefix=f"stages.{i}.{section}")) from None
        return self

    def stage_optimizer(self, stage: TrainingStage) -> OptimizerConfig:
        """The stage's optimizer: top-level fields, the stage's overrides, then the batch-size LR scaling."""
        merged = OptimizerConfig(**(self.optimizer.model_dump() | stage.optimizer))
        if merged.lr_reference_batch is None:
            return merged
        return merged.model_copy(update={"lr": merged.lr * self.data.batch_size / merged.lr_reference_batch,
                                         "lr_reference_batch": None})

    def stage_lr_schedule(self, stage: TrainingStage) -> LRScheduleConfig:
        return LRScheduleConfig(**(self.lr_schedule.model_dump() | stage.lr_schedule))

    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def fingerprint(self) -> str:
        """Hash of everything that shapes the training trajectory (not where outputs go).

        Fields added after version 0.1 enter the hash only when set away from their default, so
        run directories written by 0.1 keep their fingerprint (and stay resumable).
        """
        payload = self.model_dump(mode="json", exclude={
            "output_dir": True, "training": {"progress", "checkpoint_every_steps", "stop_check_every", "keep_last_models",
                                      "loggers"},
            "data": {"pin_memory", "persistent_workers", "prefetch_factor"}})  # loading speed only: identical results
        for path in _ADDED_AFTER_0_1:
            *sections, key = path
            section = payload
            for name in sections:
                section = section[name]
            if section[key] == _default_at(path):
                del section[key]
        for stage in payload["stages"]:
            for key in _STAGE_KEYS_ADDED_AFTER_0_1:
                if key in stage and stage[key] is None:
                    del stage[key]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


_ADDED_AFTER_0_1 = (("training", "on_nonfinite"), ("training", "max_eval_batches"), ("imports",),
                    ("targets", "dense_first"), ("targets", "dense_last"),
                    ("training", "mixup_alpha"), ("training", "update_freq"), ("training", "bn_momentum"),
                    ("task", "options"), ("optimizer", "decay_norm_and_bias"), ("init", "backbone_checkpoint"),
                    ("training", "channels_last"), ("training", "compile"))
"""Trajectory-shaping fields newer than 0.1: hashed only when set away from their default."""

_STAGE_KEYS_ADDED_AFTER_0_1 = ("pattern",)
"""Stage fields (of any stage kind) newer than 0.1 whose default is None: hashed only when set."""


def _default_at(path: tuple[str, ...]) -> Any:
    """The default of the config field at ``path`` (e.g. ``("training", "on_nonfinite")``)."""
    model: Any = RunConfig
    for name in path[:-1]:
        model = model.model_fields[name].annotation
    field = model.model_fields[path[-1]]
    return field.get_default(call_default_factory=True)


_TYPE_LABELS = {"str", "int", "float", "bool", "dict", "list", "tuple", "none"}  # pydantic's union branch labels
_STAGE_TAGS = set(REGISTRY)


def _one_line(error: ValidationError, prefix: str = "") -> str:
    """The first validation error as ``key=value: message`` (pydantic's union labels removed)."""
    first = error.errors()[0]
    parts = [prefix] if prefix else []
    previous: object = None
    for part in first["loc"]:
        text = str(part)
        if "[" in text or "-" in text or text in _TYPE_LABELS or (isinstance(previous, int) and text in _STAGE_TAGS):
            previous = part
            continue  # a union branch label, not a key
        parts.append(text)
        previous = part
    key = ".".join(parts)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown key {key!r}"
    if first["type"] == "missing":
        return f"missing key {key!r}"
    if not key:
        return message
    value = first.get("input")
    shown = "" if isinstance(value, (dict, list)) and first["type"] != "too_short" else f"={value!r}"
    return f"{key}{shown}: {message}"


def parse_config(raw: dict[str, Any], check_files: bool = True) -> RunConfig:
    """Validate ``raw``; ``check_files=False`` skips the checks that data paths and checkpoints exist."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(raw).__name__}")
    import_modules(raw.get("imports"))
    try:
        return RunConfig.model_validate(raw, context={"skip_file_checks": not check_files})
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def import_modules(names: Any) -> None:
    """Import the config's ``imports:`` (modules that register tasks, models or datasets) before validation."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"imports={names!r}: must be a list of module names, e.g. [my_package.my_task]")
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's module is one line naming it
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(f"imports: cannot import module {name!r} ({type(exc).__name__}: {detail})") from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.0.c=value`` to the nested dict/list ``raw`` in place (value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override key {where!r}: index must be in [0, {len(node) - 1}]")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"override key {where!r}: {'.'.join(parts[:depth])!r} holds a value, not a section")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_files: bool = True) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start}); give a YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = f" ({err.problem})" if getattr(err, "problem", None) else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}{problem}") from None
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    if isinstance(raw, dict) and not raw.get("output_dir") and isinstance(raw.get("name", ""), str):
        output_dir = default_output_dir(raw.get("name") or RunConfig.model_fields["name"].default, overrides)
        if output_dir is not None:
            raw["output_dir"] = output_dir
    return parse_config(raw, check_files)


_NAMING_KEYS = frozenset({"name", "output_dir", "training.progress"})  # overrides that change no result


def default_output_dir(name: str, overrides: Sequence[str]) -> str | None:
    """``runs/<name>__<overrides>`` for a config loaded with overrides and no ``output_dir``.

    So runs of one config file with different overrides (a sweep) get different directories.
    Overrides of ``name``, ``output_dir`` and ``training.progress`` are left out; None when no
    override is left. Characters other than letters, digits and ``._=,+-`` become ``_``; if that
    changed anything, or the text is longer than 80 characters (then cut to 80), an 8-digit hash
    of the overrides is appended so distinct overrides keep distinct directories.
    """
    kept = [a for a in overrides if a.partition("=")[0].strip() not in _NAMING_KEYS]
    if not kept:
        return None
    text = "__".join(kept)
    safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text)
    if safe != text or len(safe) > 80:
        safe = f"{safe[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return str(Path("runs") / f"{name}__{safe}")


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
