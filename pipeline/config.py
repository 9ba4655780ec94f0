"""The config loader: ``params.yaml`` -> the frozen dataclass a section describes, with ``--set`` overrides.

One loader, `load_section`, for every stage and every section::

    params.yaml[section]  ->  recipes.<dataset>[.<name>].<section> (merged key by key, when a dataset is given)
                          ->  recipes.<dataset>[.<name>].by_method.<method> (``train`` only: the run's method)
                          ->  --set section.key=value (value parsed as YAML; replaces what is at that path)

A dataset's recipe is either inline, ``recipes.<dataset>: {bin: {...}, train: {...}}``, or a set of named
recipes, ``recipes.<dataset>: {use: tet, tet: {bin:, train:, by_method:}, tssd_vgg9: {...}}``, of which ``use``
names the default and ``--recipe NAME`` (``recipe=``) picks another (`resolve_recipe`). ``by_method`` maps a
method to ``train`` keys for that method only; the method itself is resolved first (flag > --set > recipe.train >
train: > the dataclass default) and may not be set there.

Unknown keys and wrong types are errors (`ConfigError`, naming the key). A stage's own flags (``--T``,
``--method``, ...) become ``--set``-style overrides with `flag_overrides`, appended after the user's ``--set``s, so
a flag wins over everything and every value reaches the config one way. Derived values are computed by the
stages and printed, never written back into the config.

The dataclasses belong to the code that takes them, and each defines its choice lists next to the code that
implements them: ``bin:`` is `pipeline.frames.BinConfig`, ``train:`` is `pipeline.runs.TrainConfig` (with
`pipeline.data.Augment` and `models.neurons.NeuronConfig` inside), ``digits_dvs:`` is
`pipeline.datasets.digits_dvs.DigitsDVSConfig`. The sections that only stages read (``paths:``, ``ingest:``,
``evaluate:``) are defined here. This module imports no other project module, so every one of them can import
`ConfigError` from it.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "PathsConfig", "IngestConfig", "EvaluateConfig", "load_params", "load_section",
           "apply_overrides", "flag_overrides", "build", "check_choice", "resolve_recipe", "recipe_methods",
           "FORMATS", "RECIPE_KEYS"]

DEFAULT_PARAMS = Path("params.yaml")
C = TypeVar("C")

#: Storage formats of the event store and the frame caches (`pipeline.store.store_format` reads both).
FORMATS = ("zarr", "h5")


class ConfigError(ValueError):
    """params.yaml or a --set override does not fit the config schema."""


def check_choice(name: str, value: Any, options: typing.Iterable) -> None:
    """Raise ConfigError unless ``value`` is one of ``options`` (a tuple, or a registry dict's keys)."""
    options = tuple(options)
    if value not in options:
        raise ConfigError(f"{name} = {value!r}; choose one of {', '.join(map(str, options))}")


# ------------------------------------------------------------------------------------------ stage-only sections
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
    """`pipeline.ingest`: raw files -> event store (taken as it is by `pipeline.ingestion.ingest`)."""

    format: str = "zarr"  # zarr | h5
    chunk_events: int = 1 << 18  # events per compressed chunk (read granularity)
    shard_events: int = 1 << 25  # events per Zarr shard file (a multiple of chunk_events)
    out_of_sensor: str = "error"  # error | drop (counted) for events outside the sensor
    splits: dict[str, str] = dataclasses.field(  # dataset -> split scheme
        default_factory=lambda: {"dvs_gesture": "official", "digits_dvs": "official", "cifar10_dvs": "tet"})
    # dataset -> validation size carved from the training side (pipeline.datasets.base.val_size: 0 none, a
    # fraction in (0, 1), or N whole groups; checked there); a dataset not named gets its spec's default_val
    val: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"dvs_gesture": 0.15, "digits_dvs": 0.15, "cifar10_dvs": 0.1})

    def __post_init__(self) -> None:
        check_choice("ingest.format", self.format, FORMATS)
        check_choice("ingest.out_of_sensor", self.out_of_sensor, ("error", "drop"))
        if self.chunk_events <= 0 or self.shard_events <= 0 or self.shard_events % self.chunk_events:
            raise ConfigError("ingest.shard_events must be a positive multiple of ingest.chunk_events")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """`pipeline.evaluate`: inference timesteps to test (T_s and T_t of the run are always added)."""

    T: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    batch_size: int = 64

    def __post_init__(self) -> None:
        if any(t <= 0 for t in self.T) or self.batch_size <= 0:
            raise ConfigError(f"evaluate.T = {list(self.T)} and evaluate.batch_size = {self.batch_size} must be >= 1")


# ------------------------------------------------------------------------------------------ the loader
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
SECTIONS = ("datasets", "methods", "seeds", "paths", "ingest", "digits_dvs", "orbit_digits", "bin", "train", "evaluate", "recipes")


def apply_overrides(params: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested dict, returning a new dict. Each one
    replaces what is at its path; later ones win."""
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


def flag_overrides(section: str, **flags: Any) -> list[str]:
    """A stage's dedicated command-line flags as ``--set``-style overrides of ``section`` (None = not given).

    ``flag_overrides("bin", T=[8], dtype="uint8", by=None)`` -> ``["bin.T=[8]", "bin.dtype=uint8"]``; a stage
    appends them after the user's ``--set``s, so the flag wins (as a later ``--set`` does)."""
    out = []
    for key, value in flags.items():
        if value is None:
            continue
        value = list(value) if isinstance(value, tuple) else value
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        out.append(f"{section}.{key}={text.removesuffix('...').strip()}")  # '...': yaml's end of a bare scalar
    return out


def _under(item: str, section: str) -> bool:
    key, sep, _ = item.partition("=")
    return bool(sep) and (key == section or key.startswith(section + "."))


def _mapping(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping, got {value!r}")
    return value


#: What a recipe may hold: the sections it applies over, and the per-method layer of ``train``.
RECIPE_KEYS = ("bin", "train", "by_method")


def _chosen_recipe(params: dict, dataset: str, recipe: str | None) -> tuple[str | None, dict, str]:
    """(name, mapping, its params path) of ``dataset``'s recipe in the loaded ``params`` (name None: inline)."""
    entry = _mapping(f"recipes.{dataset}", _mapping("recipes", params.get("recipes")).get(dataset))
    where = f"recipes.{dataset}"
    if "use" not in entry:  # the inline form (or no recipe at all: {})
        if recipe is not None:
            raise ConfigError(f"--recipe {recipe}: {where} has no named recipes (" + (
                f"it is one inline recipe: {{{', '.join(map(str, entry))}}}" if entry else "none is defined")
                + f"); to name recipes, write {where}: {{use: NAME, NAME: {{bin: ..., train: ...}}}}")
        name, chosen = None, entry
    else:
        names = [k for k in entry if k != "use"]
        if mixed := [k for k in names if k in RECIPE_KEYS]:
            raise ConfigError(f"{where} has both use: (named recipes) and {mixed} (the inline form): move them "
                              f"into a named recipe")
        name = entry["use"] if recipe is None else recipe
        if name not in names:
            which = f"{where}.use = {name!r}" if recipe is None else f"--recipe {name}"
            raise ConfigError(f"{which}: dataset {dataset} has no such recipe; its recipes: {', '.join(map(str, names))}")
        where = f"{where}.{name}"
        chosen = _mapping(where, entry[name])
    if unknown := sorted(set(chosen) - set(RECIPE_KEYS)):
        raise ConfigError(f"unknown key(s) in {where}: {unknown}; a recipe holds {', '.join(RECIPE_KEYS)}")
    return name, chosen, where


def resolve_recipe(params: str | Path | dict, dataset: str, recipe: str | None = None,
                   overrides: list[str] | None = None) -> tuple[str | None, dict]:
    """The recipe ``dataset``'s runs take: ``(name, {bin:, train:, by_method:})``, after the ``--set``
    overrides (``recipes.<dataset>.use=NAME`` works like ``recipe=NAME``). The name is ``recipe`` if given, else
    the dataset's ``use``; None for an inline recipe or none (``{}``). ConfigError: an unknown name (naming the
    dataset's recipes), ``recipe`` given for a dataset without named recipes, a recipe key that is not one of
    `RECIPE_KEYS`."""
    data = apply_overrides(params if isinstance(params, dict) else load_params(params), overrides)
    name, chosen, _ = _chosen_recipe(data, dataset, recipe)
    return name, chosen


def recipe_methods(params: str | Path | dict, dataset: str, recipe: str | None = None,
                   overrides: list[str] | None = None) -> tuple[str, ...]:
    """The methods the recipe's ``by_method`` layer names (in its order)."""
    return tuple(_mapping("by_method", resolve_recipe(params, dataset, recipe, overrides)[1].get("by_method")))


def _merge(value: dict, layer: dict) -> dict:
    """``layer`` over ``value`` key by key, nested mappings (``augment``) one level deep."""
    return {**value, **{k: ({**value[k], **v} if isinstance(v, dict) and isinstance(value.get(k), dict) else v)
                        for k, v in layer.items()}}


def load_section(section: str, cls: type[C], params: str | Path | dict = DEFAULT_PARAMS,
                 overrides: list[str] | None = None, *, dataset: str | None = None, subset: bool = False,
                 recipe: str | None = None, by_method: bool = True) -> C:
    """``params.yaml[section]`` as a ``cls``: the section, then (``dataset`` given) the dataset's recipe's
    ``<section>`` merged over it key by key (nested mappings such as ``augment`` one level deep), then (section
    ``train``) the recipe's ``by_method.<method>`` for the run's method, then the ``--set section.*`` overrides,
    each replacing the value at its path: an explicit command-line value always wins over the recipe.

    ``recipe`` names one of the dataset's named recipes (None: its ``use``; see `resolve_recipe`).
    ``params`` is a path or an already loaded dict. ``subset=True`` reads only the keys ``cls`` declares (a
    stage that needs a few keys of another stage's section: `pipeline.bin --for-training` reads the training
    timesteps); otherwise an unknown key in any layer is a ConfigError naming the layer. ``by_method=False``
    leaves the per-method layer out (`pipeline.bin --for-training` bins the union over the methods).

    The method that picks the ``by_method`` layer is the one the run will have: the ``--set`` / flag value, else
    the recipe's ``train.method``, else ``train.method``, else ``cls``'s default. The layer may not set
    ``method``; a method it names is checked against ``cls.BY_METHOD`` when ``cls`` has one."""
    data = params if isinstance(params, dict) else load_params(params)
    overrides = list(overrides or [])
    # every other override first (recipes.*, other sections): they are checked here even when not used
    rest = apply_overrides(data, [o for o in overrides if not _under(o, section)])
    value = _mapping(section, rest.get(section))
    mine = [o for o in overrides if _under(o, section)]
    if dataset is not None:
        _, chosen, where = _chosen_recipe(rest, dataset, recipe)
        layer = _mapping(f"{where}.{section}", chosen.get(section))
        if not subset:
            _check_keys(cls, layer, f"{where}.{section}")
        value = _merge(value, layer)
        if section == "train":
            layers = _by_method_layers(cls, chosen, where, subset)
            if by_method and layers:
                after = _mapping(f"--set {section}", apply_overrides({section: value}, mine)[section])
                fields = {f.name: f for f in dataclasses.fields(cls)}
                default = fields["method"].default if "method" in fields else None
                value = _merge(value, layers.get(after.get("method", default), {}))
    elif recipe is not None:
        raise ConfigError(f"recipe {recipe!r} given without a dataset")
    value = _mapping(f"--set {section}" if mine else section, apply_overrides({section: value}, mine)[section])
    return build(cls, value, section, subset=subset)


def _by_method_layers(cls: type, chosen: dict, where: str, subset: bool) -> dict[str, dict]:
    """The recipe's ``by_method`` mapping (method -> train keys), each layer's keys checked."""
    layers = _mapping(f"{where}.by_method", chosen.get("by_method"))
    methods = getattr(cls, "BY_METHOD", None)
    for method, layer in layers.items():
        name = f"{where}.by_method.{method}"
        if methods is not None and method not in methods:
            raise ConfigError(f"{where}.by_method names {method!r}, not a method; choose among {', '.join(methods)}")
        layer = _mapping(name, layer)
        if "method" in layer:
            raise ConfigError(f"{name}.method: the per-method layer cannot change the method it is chosen by")
        if not subset:
            _check_keys(cls, layer, name)
    return {m: _mapping(m, v) for m, v in layers.items()}


def _check_keys(cls: type, data: dict, name: str) -> None:
    """Refuse keys ``cls`` does not have; a renamed key (``cls.RENAMED``: old -> new) is named with its new name."""
    fields = sorted(f.name for f in dataclasses.fields(cls))
    if unknown := sorted(set(data) - set(fields)):
        renamed = getattr(cls, "RENAMED", {})
        for key in unknown:
            if key in renamed:
                raise ConfigError(f"{name}.{key} was renamed {name}.{renamed[key]} (same meaning): rename the key")
        raise ConfigError(f"unknown key(s) in {name}: {unknown}; valid keys: {fields}")


def build(cls: type[C], data: dict | None, name: str, *, subset: bool = False) -> C:
    """Build dataclass ``cls`` from a mapping: unknown keys (unless ``subset``) and wrong types raise ConfigError,
    and so does a ValueError of ``cls``'s own checks (the library's message, prefixed with ``name``)."""
    data = _mapping(name, data)
    if subset:
        data = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
    _check_keys(cls, data, name)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a library class's own check (e.g. models.neurons.NeuronConfig)
        raise ConfigError(f"{name}: {err}") from None


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
