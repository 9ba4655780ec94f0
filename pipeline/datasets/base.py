"""What every dataset module provides: its raw layout, classes, splits, sensor size and download sources."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from pipeline.config import ConfigError
from pipeline.events import DecodedEvents, SensorSize
from pipeline.io.errors import RawDataError

__all__ = ["Recording", "Window", "Download", "DatasetSpec", "MissingRawDataError", "MissingDecoderError",
           "require_aedat4_decoder", "whole_recording", "read_listing", "check_disjoint", "download_instructions",
           "carve_validation", "val_size", "check_plan_disjoint", "SPLITS"]

#: The splits of every event store, in store order. ``val`` is carved from the training side at ingest
#: (`carve_validation`); it is absent from a store ingested with a validation size of 0.
SPLITS = ("train", "val", "test")


class MissingRawDataError(FileNotFoundError):
    """The raw files of a dataset are not where they should be; the message says what to download and where."""


class MissingDecoderError(ImportError):
    """A raw file needs an optional decoder that is not installed; the message names the file and the extra."""


def require_aedat4_decoder(files: list[Path]) -> None:
    """Before any work: the ``aedat`` decoder is importable when the plan holds AEDAT 4 ``files`` (a no-op for an
    empty list). Raises MissingDecoderError naming the first file, how many need it, and what to install."""
    if not files:
        return
    from pipeline.io import aedat4

    try:
        aedat4.decoder()
    except ImportError as err:
        more = f" and {len(files) - 1} more recording(s)" if len(files) > 1 else ""
        raise MissingDecoderError(f"{files[0]}{more}: AEDAT 4.0, {err}") from None


@dataclass(frozen=True)
class Recording:
    """One raw file. ``name`` is its path relative to the raw root (what the store's manifest records)."""

    path: Path
    name: str
    meta: dict = field(default_factory=dict)  # JSON-serialisable: user, lighting, class, index ...


@dataclass(frozen=True)
class Window:
    """One sample cut from a recording: events with ``start_us <= t < end_us``. ``row`` is the 1-based csv row
    (0 when the sample is the whole recording)."""

    label: int
    start_us: int
    end_us: int
    row: int = 0


@dataclass(frozen=True)
class Download:
    """One file of the official release."""

    filename: str
    url: str
    md5: str | None
    manual: bool = False  # behind a licence/registration page: the user fetches it by hand


class DatasetSpec(Protocol):
    """The interface `pipeline.ingest` relies on (see dvs_gesture.py, cifar10_dvs.py, digits_dvs.py)."""

    name: str
    classes: tuple[str, ...]
    sensor_size: SensorSize
    default_split: str
    split_schemes: tuple[str, ...]
    downloads: tuple[Download, ...]
    reader_version: str
    decode: Callable[[bytes, Path], DecodedEvents]  # a raw file's bytes (and its path, for errors) -> events

    def raw_layout(self, raw_dir: Path) -> str:
        """The expected on-disk tree (for error messages and docs)."""
        ...

    default_val: float  # the validation size when params.yaml's ingest.val names none (see `val_size`)
    val_rule: str  # how the validation split is carved, in words (recorded in the store's manifest)

    def recordings(self, raw_dir: Path, split: str, val: float | None = None) -> dict[str, list[Recording]]:
        """Recordings per split name (``train``, ``val``, ``test``; ``val`` empty when ``val`` is 0), in a pinned
        order; ``val`` (default ``default_val``) is the validation size, see `val_size`. Raises
        MissingRawDataError / RawDataError, ConfigError for a validation size the training side cannot give."""
        ...

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        """The samples of one recording."""
        ...

    def label_files(self, rec: Recording) -> list[Path]:
        """Files besides the recording whose bytes shape its samples (hashed into the store's identity)."""
        ...

    # Optional: ``check_recording(rec) -> None``, cheap checks `pipeline.ingest` runs on every recording of the
    # plan before it reads any (a header, a label csv), raising RawDataError; see DVSGesture.check_recording.


def whole_recording(label: int, events: DecodedEvents) -> list[Window]:
    """One sample holding every event of a recording: the window [t_first, t_last + 1)."""
    if len(events.t) == 0:
        return [Window(label, 0, 0)]
    return [Window(label, int(events.t[0]), int(events.t[-1]) + 1)]


def read_listing(path: Path) -> list[tuple[int, str]]:
    """The non-empty lines of a trials list (``trials_to_train.txt``) as ``(1-based row, name)``.

    A name listed twice would double its samples: that is an error naming both rows. A UTF-8 BOM (Excel, Notepad)
    is accepted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise RawDataError(path, f"cannot read trials list: {err}") from err
    seen: dict[str, int] = {}
    out = []
    for row, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise RawDataError(path, f"{name!r} is listed twice (rows {seen[name]} and {row}): its samples would be "
                                     "counted twice", row=row)
        seen[name] = row
        out.append((row, name))
    return out


def check_disjoint(listings: dict[str, tuple[Path, list[tuple[int, str]]]]) -> None:
    """Refuse a recording listed in two splits (train samples in the test set), naming both files and rows.

    ``listings`` maps split name -> (listing file, its ``read_listing`` rows).
    """
    owner: dict[str, tuple[Path, int]] = {}
    for _split, (path, rows) in listings.items():
        for row, name in rows:
            if name in owner:
                first, first_row = owner[name]
                raise RawDataError(path, f"{name!r} is also listed in {first} (row {first_row}): a recording in two "
                                         "splits would put the same samples on both sides", row=row)
            owner[name] = (path, row)


def download_instructions(spec: DatasetSpec, raw: Path) -> str:
    """Human instructions: what to download, from where, and where to put it."""
    if not spec.downloads:  # a folder of the user's own recordings: nothing to download
        return f"Put the recordings under {raw} as {spec.raw_layout(raw)} (see pipeline/datasets/recordings.py)."
    lines = [f"To ingest {spec.name}, put the official files under {raw}:"]
    for d in spec.downloads:
        how = "download by hand (licence page)" if d.manual else "download"
        lines.append(f"  - {how}: {d.url}  ->  {raw / d.filename}" + (f"  (md5 {d.md5})" if d.md5 else ""))
    lines.append(f"  then extract them so that the layout is: {spec.raw_layout(raw)}")
    lines.append(f"  (`python -m pipeline.download {spec.name}` verifies and extracts archives already in {raw})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ validation split
def val_size(size: float, where: str = "ingest.val") -> dict:
    """The keyword arguments of `carve_validation` for a validation size as params.yaml writes it
    (``ingest.val.<dataset>``): ``0`` -> no validation split; ``0 < size < 1`` -> that fraction of the groups
    (``fraction=size``); an integer ``size >= 1`` -> that many whole groups (``n_groups=size``). Anything else
    (negative, a non-integer above 1, a bool) is a ConfigError naming ``where``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) or size < 0 \
            or (size >= 1 and size != int(size)):
        raise ConfigError(f"{where} = {size!r}: give 0 (no validation split), a fraction in (0, 1), or a whole "
                          "number of groups >= 1")
    return {"fraction": float(size)} if size < 1 else {"n_groups": int(size)}


def carve_validation(train: list[Recording], group: Callable[[Recording], Hashable], n_groups: int | None = None,
                     fraction: float | None = None, per_class: Callable[[Recording], Hashable] | None = None
                     ) -> tuple[list[Recording], list[Recording]]:
    """Split the training side ``train`` into (train, val) by whole groups; the test split is never touched.

    ``group(rec)`` is the unit held out together (the user for DVS-Gesture and digits_dvs, the recording itself
    for CIFAR10-DVS): every recording of a group lands on the same side, so val holds no user (or recording) that
    train holds. The rule is deterministic and needs no seed: the group keys are sorted (ints or strings, not
    mixed) and the **last** ``k`` go to val -- the same "last ones held out" rule as DVS-Gesture's official test
    users (24..29 of 1..29), digits_dvs' ``test_users`` and CIFAR10-DVS's ``tet`` test indices (900..999).

    * ``n_groups=k``: exactly ``k`` groups (0: none); a ConfigError when that would leave no training group.
    * ``fraction=f``: ``ceil(f * n)`` groups of the ``n`` (at least one when ``f > 0``), but never all: with a
      single group, it stays in train.
    * ``per_class(rec)`` (optional): carve within each class separately (stratified: CIFAR10-DVS's per-class
      recordings), ``k`` groups per class; a group found in two classes is a ValueError.

    Both returned lists keep the order of ``train``. Exactly one of ``n_groups`` / ``fraction`` is given.
    """
    if (n_groups is None) == (fraction is None):
        raise ValueError("carve_validation: give exactly one of n_groups, fraction")
    if n_groups is not None and n_groups < 0 or fraction is not None and not 0 <= fraction < 1:
        raise ConfigError(f"carve_validation: n_groups = {n_groups}, fraction = {fraction}; need n_groups >= 0 or "
                          "0 <= fraction < 1")
    classes: dict[Hashable, list[Hashable]] = {}  # class -> its group keys
    owner: dict[Hashable, Hashable] = {}  # group key -> its class
    for rec in train:
        g, c = group(rec), (per_class(rec) if per_class is not None else None)
        if g in owner:
            if owner[g] != c:
                raise ValueError(f"carve_validation: group {g!r} holds recordings of classes {owner[g]!r} and {c!r}; "
                                 "per-class carving needs groups within one class")
            continue
        owner[g] = c
        classes.setdefault(c, []).append(g)
    held: set = set()
    for c, keys in classes.items():
        try:
            keys = sorted(keys)
        except TypeError:
            raise ValueError(f"carve_validation: group keys {keys[:3]!r}... are not mutually sortable") from None
        n = len(keys)
        if n_groups is not None:
            k = n_groups
            if k and k >= n:
                where = f" of class {c!r}" if per_class is not None else ""
                raise ConfigError(f"a validation split of {k} groups needs more than {k} training groups{where}; the "
                                  f"training side holds {n} ({', '.join(map(str, keys[:6]))}"
                                  f"{' ...' if n > 6 else ''}): lower ingest.val, or set it to 0 for none")
        else:
            k = min(math.ceil(round(fraction * n, 9)), n - 1)  # round: 0.1 * 900 is 90.00000000000001
        held.update(keys[n - k:] if k else ())
    val = [r for r in train if group(r) in held]
    return [r for r in train if group(r) not in held], val


def check_plan_disjoint(plan: dict[str, list[Recording]], where: Path) -> None:
    """Refuse a plan whose splits share a recording (by name or path): its samples would be on both sides of a
    train / val / test comparison. RawDataError naming the recording and both splits."""
    seen: dict[object, str] = {}
    for split_name, recs in plan.items():
        for rec in recs:
            for key in (("name", rec.name), ("path", Path(rec.path).resolve())):
                if key in seen and seen[key] != split_name:
                    raise RawDataError(where, f"recording {rec.name!r} is in both the {seen[key]} and the {split_name} "
                                              "split: its samples would be on both sides")
                seen[key] = split_name
