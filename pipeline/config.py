"""One frozen dataclass per ``params.yaml`` section; unknown keys and wrong types are errors.

Stages load their section with `load_section`, applying ``--set a.b=value`` overrides (values parsed as YAML).
Derived values are computed by the stages and printed, never written back into the config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["PathsConfig", "IngestConfig", "BinConfig", "EvaluateConfig", "TrainConfig", "AugmentConfig", "for_dataset", "load_params", "load_section", "apply_overrides", "ConfigError",
           "resolve_training"]

DEFAULT_PARAMS = Path("params.yaml")
C = TypeVar("C")


class ConfigError(ValueError):
    """params.yaml or a --set override does not fit the config schema."""


@dataclasses.dataclass(frozen=True)
class PathsConfig:
    """Where generated artifacts live (all under data_cache/, which DVC owns)."""

    raw_root: str = "data_cache/raw"
    events_root: str = "data_cache/events"
    frames_root: str = "data_cache/frames"
    runs_root: str = "data_cache/runs"
    report_root: str = "data_cache/report"

    def store_path(self, dataset: str, fmt: str) -> Path:
        """Where the event store of ``dataset`` lives: ``<events_root>/<dataset>.zarr`` (or ``.h5``)."""
        return Path(self.events_root) / f"{dataset}.{'zarr' if fmt == 'zarr' else 'h5'}"


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """`pipeline.ingest`: raw files -> event store."""

    format: str = "zarr"  # zarr | h5
    chunk_events: int = 1 << 18  # events per compressed chunk (read granularity)
    shard_events: int = 1 << 25  # events per Zarr shard file (a multiple of chunk_events)
    out_of_sensor: str = "error"  # error | drop (counted) for events outside the sensor
    splits: dict[str, str] = dataclasses.field(  # dataset -> split scheme
        default_factory=lambda: {"dvs_gesture": "official", "digits_dvs": "official", "cifar10_dvs": "tet"})

    def __post_init__(self) -> None:
        _choice("ingest.format", self.format, ("zarr", "h5"))
        _choice("ingest.out_of_sensor", self.out_of_sensor, ("error", "drop"))
        if self.chunk_events <= 0 or self.shard_events <= 0 or self.shard_events % self.chunk_events:
            raise ConfigError("ingest.shard_events must be a positive multiple of ingest.chunk_events")


@dataclasses.dataclass(frozen=True)
class BinConfig:
    """`pipeline.bin`: event store -> frame caches (per-dataset values come from ``recipes.<name>.bin``)."""

    T: tuple[int, ...] = (8, 16)
    by: str = "time"  # time | count
    semantics: str = "exact"  # exact (lossless) | tonic | spikingjelly
    out_size: tuple[int, int] | None = None  # (H, W) to downsample to while binning
    dtype: str = "int16"  # int16 | uint8 (saturating, counted) | float32
    format: str = "zarr"  # zarr | h5

    def __post_init__(self) -> None:
        _choice("bin.by", self.by, ("time", "count"))
        _choice("bin.semantics", self.semantics, ("exact", "tonic", "spikingjelly"))
        _choice("bin.dtype", self.dtype, ("int16", "uint8", "float32"))
        _choice("bin.format", self.format, ("zarr", "h5"))
        if any(t <= 0 for t in self.T):
            raise ConfigError(f"bin.T = {list(self.T)}: every frame count must be >= 1")
        if self.out_size is not None and min(self.out_size) <= 0:
            raise ConfigError(f"bin.out_size = {list(self.out_size)}: H and W must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """`pipeline.evaluate`: inference timesteps to test (T_s and T_t of the run are always added)."""

    T: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation shared by every view of a sample (see pipeline.data.Augment)."""

    flip_p: float = 0.0
    max_shift_px: int = 2
    shift_mode: str = "roll"  # roll (TET) | translate (zero fill, NDA)
    cutout_px: int = 0

    def __post_init__(self) -> None:
        _choice("train.augment.shift_mode", self.shift_mode, ("roll", "translate"))
        if not 0.0 <= self.flip_p <= 1.0:
            raise ConfigError(f"train.augment.flip_p = {self.flip_p} must be a probability in [0, 1]")
        if self.max_shift_px < 0 or self.cutout_px < 0:
            raise ConfigError(f"train.augment.max_shift_px ({self.max_shift_px}) and cutout_px ({self.cutout_px}) "
                              "must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`pipeline.train` (per-dataset values come from ``recipes.<name>.train``). The defaults are params.yaml's
    (tested), so code that builds a config without the file gets what `make repro` runs."""

    method: str = "tssd"  # baseline | multi_T | tsd | ssd | tssd
    arch: str = "small"  # small | gesture_net | vggsnn
    T_s: int = 2  # student timesteps (inference cost)
    T_t: int | None = 4  # teacher timesteps; null = 2 * T_s
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant
    seed: int = 0
    alpha: float = 1.0  # weight of the temporal self-distillation term
    beta: float = 1.0  # weight of the spatial self-distillation term
    teacher_ce: float = 1.0  # weight of the teacher run's own task loss (0: the paper's formula as written)
    weak_ce: float = 0.0  # weight of the weak classifier's own task loss (was `gamma`)
    tau_kd: float = 2.0  # distillation temperature
    kd_on: str = "mean"  # mean (time-averaged logits) | per_step (each student step vs the teacher steps it spans)
    bn_stats: str = "student"  # student (teacher pass: batch stats, running stats untouched) | shared | per_T
    teacher_input: str = "rebin"  # rebin (the events in T_t bins) | repeat (each T_s frame held T_t/T_s steps)
    weak_head: str = "bottleneck"  # bottleneck (BYOT conv-BN-LIF x2, GAP, linear) | gap_linear
    ssd_target: str = "student"  # student | teacher: whose final output the weak classifier is distilled to
    task_loss: str = "ce"  # ce (on time-averaged logits) | tet (per-timestep, TET)
    tet_lambda: float = 0.0
    teacher_grad: bool = False  # does the temporal KD term's gradient reach the teacher run?
    weak_stages: list[str] | None = None  # null = the architecture's middle stage
    neuron: dict[str, Any] = dataclasses.field(  # models.neurons.NeuronConfig options
        default_factory=lambda: {"tau_steps": 2.0, "v_th": 1.0, "surrogate": "rect", "alpha": 1.0})
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    in_memory: bool = True  # load frame caches into RAM
    num_workers: int = 0
    amp: bool = True  # autocast on CUDA (bf16 where supported)
    channels_last: bool = True  # on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    #: keys that were renamed: a params file that still uses one gets an error naming the new key
    RENAMED: typing.ClassVar[dict[str, str]] = {"gamma": "weak_ce"}

    def __post_init__(self) -> None:
        _choice("train.method", self.method, ("baseline", "multi_T", "tsd", "ssd", "tssd"))
        _choice("train.kd_on", self.kd_on, ("mean", "per_step"))
        _choice("train.bn_stats", self.bn_stats, ("student", "shared", "per_T"))
        _choice("train.teacher_input", self.teacher_input, ("rebin", "repeat"))
        _choice("train.weak_head", self.weak_head, ("bottleneck", "gap_linear"))
        _choice("train.ssd_target", self.ssd_target, ("student", "teacher"))
        _choice("train.optimizer", self.optimizer, ("sgd", "adamw"))
        _choice("train.schedule", self.schedule, ("cosine", "constant"))
        _choice("train.task_loss", self.task_loss, ("ce", "tet"))
        if self.T_s <= 0 or (self.T_t is not None and self.T_t <= 0) or self.epochs < 0 or self.batch_size <= 0:
            raise ConfigError("train.T_s, T_t, batch_size must be positive and epochs >= 0")
        for key in ("lr", "weight_decay", "alpha", "beta", "teacher_ce", "weak_ce", "tet_lambda"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} = {getattr(self, key)} must be >= 0")
        if self.tau_kd <= 0:
            raise ConfigError(f"train.tau_kd = {self.tau_kd} must be > 0 (the distillation temperature divides the logits)")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum = {self.momentum} must be in [0, 1)")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers = {self.num_workers} must be >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
                and self.device[5:].isdigit()):
            raise ConfigError(f"train.device = {self.device!r}; choose auto, cpu, cuda or cuda:N")
        if self.teacher_T <= self.T_s:
            raise ConfigError(f"train.T_t = {self.teacher_T} must exceed train.T_s = {self.T_s}: the teacher is the "
                              "same network run for more timesteps (set both, or T_t: null for 2 * T_s)")
        self._check_method_switches()

    def _check_method_switches(self) -> None:
        """The TSSD switches that only some methods read: refuse the combinations that cannot mean anything."""
        teacher = self.method in ("multi_T", "tsd", "tssd")
        if self.method == "ssd" and self.ssd_target == "teacher":
            raise ConfigError("train.ssd_target = 'teacher' needs the teacher run: use method tssd "
                              "(method ssd has no T_t run)")
        if self.method == "multi_T" and self.teacher_ce == 0:
            raise ConfigError("train.method = multi_T with train.teacher_ce = 0 is the baseline plus an unused "
                              "teacher pass: the control needs the teacher's task loss (teacher_ce > 0)")
        divides = self.teacher_T % self.T_s == 0
        if teacher and self.teacher_input == "repeat" and not divides:
            raise ConfigError(f"train.teacher_input = 'repeat' holds each of the T_s = {self.T_s} frames for "
                              f"T_t / T_s steps: train.T_t = {self.teacher_T} must be a multiple of T_s")
        kd_with_teacher = self.method in ("tsd", "tssd")
        if self.kd_on == "per_step" and kd_with_teacher and not divides:
            raise ConfigError(f"train.kd_on = 'per_step' compares each of the T_s = {self.T_s} student steps with the "
                              f"T_t / T_s teacher steps of the same time: train.T_t = {self.teacher_T} must be a "
                              "multiple of T_s (or use kd_on: mean)")
        if teacher and self.bn_stats == "per_T" and self.teacher_ce == 0 and not self.teacher_grad:
            raise ConfigError("train.bn_stats = 'per_T' with teacher_ce = 0 and teacher_grad = false: no loss "
                              "reaches the teacher run, so its own BatchNorm parameters would never train "
                              "(set teacher_ce > 0 or teacher_grad: true, or use bn_stats student/shared)")

    @property
    def teacher_T(self) -> int:
        """T_t: the teacher's timesteps (2 * T_s unless set)."""
        return self.T_t if self.T_t is not None else 2 * self.T_s


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{name} = {value!r}; choose one of {', '.join(map(str, options))}")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """The whole params.yaml as a dict. A missing file is an error: running on the dataclass defaults instead
    of the parameters the user meant would be a silent wrong result."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root, or pass --params PATH)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # the message carries yaml's line and column
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


#: Top-level sections of params.yaml; a --set naming anything else is a typo, not a new section.
SECTIONS = ("datasets", "methods", "paths", "ingest", "digits_dvs", "bin", "train", "evaluate", "recipes")


def apply_overrides(params: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested dict, returning a new dict."""
    import copy

    out = copy.deepcopy(params)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        if key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {key.split('.')[0]!r}; sections: {', '.join(SECTIONS)}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {err}") from None
    return out


def _check_type(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{name} = {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name} must be null, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_check_type(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _check_type(f"{name}.{k}", v, vt) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, name)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def build(cls: type[C], data: dict | None, name: str) -> C:
    """Build dataclass ``cls`` from a mapping: unknown keys and wrong types raise ConfigError."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        _refuse_unknown(cls, name, unknown, fields)
    kwargs = {k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def _refuse_unknown(cls: type, name: str, unknown, fields) -> None:
    """ConfigError for keys ``cls`` does not have; a renamed key's message names its new name."""
    renamed = getattr(cls, "RENAMED", {})
    for key in sorted(unknown):
        if key in renamed:
            raise ConfigError(f"{name}.{key} was renamed {name}.{renamed[key]} (same meaning): rename the key")
    raise ConfigError(f"unknown key(s) in {name}: {sorted(unknown)}; valid keys: {sorted(fields)}")


def _merge(base: dict, layer: dict) -> dict:
    """``layer`` over ``base``; nested mappings (augment, neuron, ...) are merged key by key, one level deep."""
    out = dict(base)
    for k, v in layer.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def for_dataset(section: str, cls: type[C], dataset: str, params: str | Path | dict = DEFAULT_PARAMS,
                overrides: list[str] | None = None) -> C:
    """``params.yaml[section]``, then ``recipes.<dataset>.<section>``, then the ``--set section.*`` overrides:
    an explicit command-line value always wins over the dataset's recipe."""
    data = params if isinstance(params, dict) else load_params(params)
    cli = apply_overrides({}, overrides)
    recipe = (apply_overrides(data, overrides).get("recipes") or {}).get(dataset) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipes.{dataset} must be a mapping, got {recipe!r}")
    fields = sorted(f.name for f in dataclasses.fields(cls))
    merged: dict = {}
    for name, layer in ((section, data.get(section)), (f"recipes.{dataset}.{section}", recipe.get(section)),
                        (f"--set {section}", cli.get(section))):
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise ConfigError(f"{name} must be a mapping, got {layer!r}")
        if unknown := sorted(set(layer) - set(fields)):
            _refuse_unknown(cls, name, unknown, fields)
        merged = _merge(merged, layer)
    return build(cls, merged, section)


def load_section(section: str, cls: type[C], params: str | Path | dict = DEFAULT_PARAMS,
                 overrides: list[str] | None = None) -> C:
    """Load ``params.yaml[section]`` into ``cls`` after applying ``--set`` overrides."""
    data = params if isinstance(params, dict) else load_params(params)
    data = apply_overrides(data, overrides)
    return build(cls, data.get(section), section)


def resolve_training(dataset: str, params_path: str | Path | dict = DEFAULT_PARAMS,
                     overrides: list[str] | None = None) -> tuple[TrainConfig, BinConfig, PathsConfig]:
    """Configs for ``dataset``: params.yaml, then ``recipes.<dataset>``, then ``--set`` overrides (which win)."""
    return (for_dataset("train", TrainConfig, dataset, params_path, overrides),
            for_dataset("bin", BinConfig, dataset, params_path, overrides),
            load_section("paths", PathsConfig, params_path, overrides))
