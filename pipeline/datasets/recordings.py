"""Your own recordings: a folder of event files -> the same event store, frame caches and training CLI.

    python -m pipeline.ingest recordings --raw DIR [--name NAME] [--sensor-size W H] [--split SCHEME]
    python -m pipeline.bin NAME --T 16 --out-size 128 128
    python -m pipeline.train NAME --set train.arch=gesture_net ...

Raw layout (every file below DIR whose name ends in .aedat4, .aedat, .aedat3, .aedat2, .npy, .h5 or .hdf5 is a
recording; hidden files and other files are ignored)::

    DIR/
        recordings.json              optional: {"classes": ["clap", "wave"], "sensor_size": [640, 480],
                                                "csv_time": "absolute"}
        trials_to_train.txt          optional (both or neither): recording paths relative to DIR, one per line
        trials_to_test.txt
        clap/rec01.aedat4            a recording; its format comes from its first bytes (see below)
        wave/rec02.aedat4
        session1.aedat4              ... a recording with a label csv holds one sample per csv row:
        session1_labels.csv          class,start_us,end_us   (a header row is optional)

Formats (sniffed from the bytes with `pipeline.io.aedat_header.sniff_version` and the npy/HDF5 magic numbers,
not from the extension): AEDAT 4.0 (pipeline.io.aedat4, needs the ``aedat4`` extra), AEDAT 3.1 polarity events
(pipeline.io.aedat3), AEDAT 2.0 jAER DVS128 (pipeline.io.aedat2, in CIFAR10-DVS's orientation), and ``.npy`` /
HDF5 arrays with fields x, y, t, p (pipeline.io.arrays). ``t`` is in µs.

Samples and labels:

* With ``<stem>_labels.csv`` next to a recording (``<stem>`` = the file name without its extension): one sample
  per row, the events with ``start_us <= t < end_us``; ``class`` is a class name. Times are on the recording's
  own clock (``csv_time: absolute``, the default, as in DVS-Gesture; DV's AEDAT 4 clock is µs since the Unix
  epoch), or µs after its first event (``csv_time: relative``).
* Without one: the whole recording is one sample, labelled by its parent folder's name (``clap/rec01.aedat4`` is
  a ``clap``); a recording directly in DIR is labelled ``unlabeled``.
* Classes: ``recordings.json``'s ``classes`` (in that order; every label must be one of them), else every label
  found, sorted -- numerically when all are integers (so "10" comes after "9"), else as strings.

Sensor size: from each header (AEDAT 4: the event stream's sizeX/sizeY; AEDAT 3.1: the camera in the ``#Source``
line, see `CAMERAS`; AEDAT 2.0: 128x128; HDF5: a ``sensor_size`` attribute), else ``--sensor-size W H`` or
``recordings.json``'s ``sensor_size`` (needed for .npy). All recordings must agree; a header that disagrees with
the flag is an error too.

Splits (``--split``, or ``ingest.splits.<name>`` in params.yaml):

* ``trials`` (the default when both trials lists exist): DVS-Gesture's rule; every recording must be listed in
  exactly one of the lists.
* ``random:<seed>[:<test_fraction>]`` (the default otherwise: ``random:0``, test fraction 0.2): the recordings,
  sorted by path, permuted by ``numpy.random.default_rng(seed)``; the first ``max(1, round(f * n))`` are test.
  Whole recordings are held out, never rows of one recording.

Validation (``ingest.val.<name>``, default 0.2): whole recordings of the training side (never a test one) become
the ``val`` split (`pipeline.datasets.base.carve_validation`): the last ``ceil(0.2 n)`` training recordings in path
order -- per class when every training recording is labelled by its folder (so each class keeps training
recordings: a class with a single training recording keeps it), else over all training recordings (a csv-labelled
recording holds several classes). An integer ``N >= 1`` holds out N recordings (per class when folder-labelled);
0 gives no validation split. Keep one recording per user/session if you want whole users held out.

The dataset's name (``--name``, default ``recordings``; raw folder default ``<raw_root>/<name>``) names the store
(``<events_root>/<name>.zarr``), its frame caches and runs, and the ``recipes.<name>`` section params.yaml may
hold: ``pipeline.bin <name>`` and ``pipeline.train <name>`` then work as for the built-in datasets. The store's
``reader_version`` names every reader used and a hash of the classes, sensor size, csv time base and trials
lists, so a change to any of them gives a new store id (and new frame caches).

Why ~480 lines: users' folders come in many shapes (formats, label sources, sensor sizes per folder), and each
refusal names its file and row; they are one dataset spec and read best together.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.datasets.base import (Download, MissingRawDataError, Recording, Window, carve_validation,
                                    require_aedat4_decoder, val_size, whole_recording)
from pipeline.events import DecodedEvents, SensorSize
from pipeline.io import aedat2, aedat3, arrays
from pipeline.io.aedat_header import SUPPORTED, sniff_version
from pipeline.io.errors import RawDataError

__all__ = ["SPEC", "Recordings", "CAMERAS", "SUFFIXES", "sniff_format", "read_labels_csv"]

#: File name endings that mark a recording (the bytes then decide its format).
SUFFIXES = (".aedat4", ".aedat", ".aedat3", ".aedat2", ".npy", ".h5", ".hdf5")
#: AEDAT 3.1 ``#Source N: <camera>`` names -> (W, H): case-insensitive prefixes, most specific first. The names
#: are cAER's (``chipIDToName``: DAVIS240A/B/C, DAVIS128, DAVIS346[A|B|BSI], DAVIS640[H], DAVISHet640, DAVIS208,
#: DVS132S) and DVS128 (DVS-Gesture's header).
CAMERAS = (("dvs128", (128, 128)), ("dvs132s", (132, 104)), ("davis128", (128, 128)), ("davis208", (208, 192)),
           ("davis240", (240, 180)), ("davis346", (346, 260)), ("davis640", (640, 480)),
           ("davishet640", (640, 480)))
UNLABELED = "unlabeled"
_JSON_KEYS = ("classes", "sensor_size", "csv_time")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED = ("dvs_gesture", "cifar10_dvs", "digits_dvs", "orbit_digits")
_HEAD_BYTES = 1 << 20
READER_VERSION = "recordings/1"


def sniff_format(head: bytes, path: str | Path) -> str:
    """``"AEDAT 4.0" | "AEDAT 3.1" | "AEDAT 2.0" | "npy" | "HDF5"`` from a file's first bytes; RawDataError
    (file, offset 0) for anything else. A ``#`` header without a version line is AEDAT 2.0, as in
    pipeline.io.aedat2."""
    found = sniff_version(head)
    if found is not None:
        version = found[0]
        if version not in SUPPORTED:
            raise RawDataError(path, f"AEDAT version {version} is not supported (supported: {', '.join(SUPPORTED)})",
                               offset=0)
        return f"AEDAT {version}"
    if head.startswith(arrays.NPY_MAGIC):
        return "npy"
    if head.startswith(arrays.HDF5_MAGIC):
        return "HDF5"
    if head.startswith(b"#") and not head.startswith(b"#!AER-DAT"):
        return "AEDAT 2.0"
    raise RawDataError(path, f"unknown format: first bytes {bytes(head[:16])!r}; expected an AEDAT 4.0 / 3.1 / 2.0 "
                             "file ('#!AER-DAT<version>'), a .npy structured array or an HDF5 file", offset=0)


def camera_size(source: str | None) -> tuple[int, int] | None:
    """The sensor (W, H) of an AEDAT 3.1 ``#Source`` camera name, when `CAMERAS` knows it."""
    name = (source or "").strip().lower()
    for prefix, size in CAMERAS:
        if name.startswith(prefix):
            return size
    return None


def _label_key(labels: set[str]) -> list[str]:
    if labels and all(re.fullmatch(r"-?\d+", s) for s in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def read_labels_csv(path: Path) -> list[tuple[str, int, int, int]]:
    """Rows ``(class name, start_us, end_us, row)`` of a ``<stem>_labels.csv`` (1-based rows; a first row whose
    times are not integers is a header). RawDataError names the file and row."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RawDataError(path, f"cannot read label csv: {err}") from None
    rows = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != 3:
            raise RawDataError(path, f"expected 3 cells (class,start_us,end_us), found {len(cells)}: {line!r}", row=row)
        cls, a, b = cells
        try:
            start, end = int(a), int(b)
        except ValueError:
            if row == 1 and not rows:
                continue  # a header row
            raise RawDataError(path, f"start_us and end_us must be integers, found {line!r}", row=row) from None
        if not cls:
            raise RawDataError(path, "empty class name", row=row)
        if end <= start:
            raise RawDataError(path, f"window end {end} is not after its start {start}", row=row)
        rows.append((cls, start, end, row))
    if not rows:
        raise RawDataError(path, "label csv has no rows (delete it to make the recording one sample)")
    return rows


@dataclass(frozen=True)
class _Item:
    """One recording found in the folder (planned by `Recordings.for_raw`)."""

    path: Path
    name: str  # path relative to the raw folder, posix
    fmt: str
    size: tuple[int, int] | None  # what the header says
    csv: Path | None
    rows: tuple[tuple[str, int, int, int], ...]  # from the csv
    folder_label: str


@dataclass(frozen=True)
class Recordings:
    """The ``recordings`` dataset spec. `configure` applies the CLI's --name / --sensor-size; `for_raw` scans a
    folder and returns the spec of that folder (classes, sensor size, splits), which `pipeline.ingest` uses."""

    name: str = "recordings"
    classes: tuple[str, ...] = ()
    sensor_size: SensorSize = SensorSize(1, 1, 2)
    default_split: str = "random:0"
    default_val: float = 0.2
    val_rule: str = ("whole recordings: the last ones of the training side in path order, per class when every "
                     "training recording is folder-labelled (a fraction f: ceil(f * n), never all of a class)")
    split_schemes: tuple[str, ...] = ("trials", "random:<seed>[:<test_fraction>]")
    downloads: tuple[Download, ...] = ()
    reader_version: str = READER_VERSION
    size_flag: tuple[int, int] | None = None
    raw_dir: Path | None = None
    csv_time: str = "absolute"
    items: tuple[_Item, ...] = field(default=(), repr=False)
    by_path: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------------------------------ planning
    def configure(self, name: str | None = None, sensor_size: tuple[int, int] | None = None) -> "Recordings":
        """The spec with the command line's ``--name`` and ``--sensor-size W H`` (the flag wins over
        recordings.json's sensor_size)."""
        if name is not None:
            _check_name(name, "--name")
        if sensor_size is not None:
            w, h = (int(v) for v in sensor_size)
            if w <= 0 or h <= 0:
                raise ValueError(f"--sensor-size must be positive, got {w} {h}")
            sensor_size = (w, h)
        return replace(self, name=name or self.name, size_flag=sensor_size)

    def raw_layout(self, raw_dir: Path) -> str:
        return (f"{raw_dir}/[<class>/]<recording>.aedat4|.aedat|.npy|.h5 [+ <recording>_labels.csv "
                "(class,start_us,end_us)] [+ trials_to_train.txt, trials_to_test.txt] [+ recordings.json]")

    def for_raw(self, raw_dir: Path) -> "Recordings":
        """Scan ``raw_dir``: find the recordings, sniff their formats, read their headers' sensor sizes and their
        label csvs, and derive the classes. Raises MissingRawDataError (no recordings) or RawDataError."""
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise MissingRawDataError(f"{raw_dir} is not a folder. Expected {self.raw_layout(raw_dir)}.")
        conf = _read_json(raw_dir / "recordings.json")
        csv_time = conf.get("csv_time", "absolute")
        if csv_time not in ("absolute", "relative"):
            raise RawDataError(raw_dir / "recordings.json", f"csv_time must be 'absolute' or 'relative', got {csv_time!r}")
        paths = sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts)
                       and not p.name.endswith(".part"))
        if not paths:
            raise MissingRawDataError(f"no recordings under {raw_dir}. Expected {self.raw_layout(raw_dir)}.")
        stems: dict[Path, Path] = {}
        items = []
        for p in paths:
            key = p.with_suffix("")
            if key in stems:
                raise RawDataError(p, f"two recordings share the stem {key.name!r} ({stems[key].name} and {p.name}): "
                                      "their label csv would be ambiguous; rename one")
            stems[key] = p
            fmt, size = _sniff_file(p)
            csv = p.with_name(p.stem + "_labels.csv")
            rows = tuple(read_labels_csv(csv)) if csv.is_file() else ()
            parent = p.parent.relative_to(raw_dir)
            items.append(_Item(p, p.relative_to(raw_dir).as_posix(), fmt, size, csv if rows else None, rows,
                               p.parent.name if parent.parts else UNLABELED))
        for csv in sorted(raw_dir.rglob("*_labels.csv")):
            if any(part.startswith(".") for part in csv.relative_to(raw_dir).parts):
                continue
            if csv.with_name(csv.name[: -len("_labels.csv")]) not in stems:
                raise RawDataError(csv, "label csv of no recording: no file "
                                        f"{csv.name[: -len('_labels.csv')]}.<{'|'.join(s[1:] for s in SUFFIXES)}> next to it")
        require_aedat4_decoder([i.path for i in items if i.fmt == "AEDAT 4.0"])  # before any work, not at file 90
        classes = self._classes(conf, items, raw_dir)
        size = self._sensor(conf, items, raw_dir)
        trials = [raw_dir / f"trials_to_{s}.txt" for s in ("train", "test")]
        present = [t.is_file() for t in trials]
        if any(present) and not all(present):
            missing = trials[present.index(False)]
            raise MissingRawDataError(f"{missing} not found: give both trials lists or neither")
        config = {"classes": list(classes), "sensor_size": list(size), "csv_time": csv_time,
                  "label_rule": "csv rows, else parent folder",
                  "trials": [hashlib.sha256(t.read_bytes()).hexdigest() for t in trials] if all(present) else None}
        readers = sorted({_READERS[i.fmt] for i in items})
        version = f"{READER_VERSION} [{', '.join(readers)}] config {_hash(config)[:16]}"
        return replace(self, classes=classes, sensor_size=SensorSize(size[0], size[1], 2),
                       default_split="trials" if all(present) else "random:0", reader_version=version,
                       raw_dir=raw_dir, csv_time=csv_time, items=tuple(items),
                       by_path={i.path: i for i in items})

    def _classes(self, conf: dict, items: list[_Item], raw_dir: Path) -> tuple[str, ...]:
        used = {r[0] for i in items for r in i.rows} | {i.folder_label for i in items if not i.rows}
        if "classes" not in conf:
            return tuple(_label_key(used))
        classes = conf["classes"]
        where = raw_dir / "recordings.json"
        if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
            raise RawDataError(where, f"'classes' must be a non-empty list of names, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise RawDataError(where, f"'classes' lists a name twice: {classes!r}")
        for i in items:
            for cls, _, _, row in i.rows:
                if cls not in classes:
                    raise RawDataError(i.csv, f"class {cls!r} is not in recordings.json's classes {classes}", row=row)
            if not i.rows and i.folder_label not in classes:
                raise RawDataError(i.path, f"no label csv, and its folder label {i.folder_label!r} is not in "
                                           f"recordings.json's classes {classes}")
        return tuple(classes)

    def _sensor(self, conf: dict, items: list[_Item], raw_dir: Path) -> tuple[int, int]:
        given, origin = self.size_flag, "--sensor-size"
        if given is None and "sensor_size" in conf:
            s = conf["sensor_size"]
            if not (isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v > 0 for v in s)):
                raise RawDataError(raw_dir / "recordings.json", f"'sensor_size' must be [width, height], got {s!r}")
            given, origin = (s[0], s[1]), "recordings.json's sensor_size"
        first: _Item | None = None
        for i in items:
            if i.size is None:
                continue
            if given is not None and i.size != given:
                raise RawDataError(i.path, f"its header says a {i.size[0]}x{i.size[1]} sensor, {origin} says "
                                           f"{given[0]}x{given[1]}")
            if first is not None and i.size != first.size:
                raise RawDataError(i.path, f"mixed sensor sizes: {i.size[0]}x{i.size[1]} here, "
                                           f"{first.size[0]}x{first.size[1]} in {first.path}")
            first = first or i
        if first is not None:
            return first.size
        if given is not None:
            return given
        raise RawDataError(items[0].path, f"its format ({items[0].fmt}) does not record the sensor size: give "
                                          "--sensor-size W H or 'sensor_size': [W, H] in recordings.json")

    # ------------------------------------------------------------------------------------------ ingest API
    def _planned(self) -> tuple[_Item, ...]:
        if self.raw_dir is None:
            raise RuntimeError("Recordings spec used before for_raw(raw_dir)")
        return self.items

    def recordings(self, raw_dir: Path, split: str = "random:0", val: float | None = None
                   ) -> dict[str, list[Recording]]:
        items = self._planned()
        by_name = {i.name: i for i in items}
        if split == "trials":
            assign = self._trials(Path(raw_dir), by_name)
        elif split.startswith("random:"):
            if len(by_name) < 2:
                raise RawDataError(raw_dir, f"split {split!r} holds whole recordings out and needs at least 2 "
                                            f"(found {len(by_name)}); list them in trials_to_train.txt / "
                                            "trials_to_test.txt instead")
            assign = _random_split(sorted(by_name), split)
        else:
            raise ValueError(f"unknown recordings split {split!r}; choose one of trials, random:<seed>[:<test_fraction>]")
        out: dict[str, list[Recording]] = {"train": [], "test": []}
        for split_name, names in assign.items():
            for n in names:
                i = by_name[n]
                meta = {"format": i.fmt, "labels": "csv" if i.rows else "folder"}
                if not i.rows:
                    meta["label"] = self.classes.index(i.folder_label)
                out[split_name].append(Recording(i.path, i.name, meta))
        by_folder = all("label" in r.meta for r in out["train"])
        train, held = carve_validation(out["train"], lambda r: r.name,
                                       **val_size(self.default_val if val is None else val, f"ingest.val.{self.name}"),
                                       per_class=(lambda r: r.meta["label"]) if by_folder else None)
        return {"train": train, "val": held, "test": out["test"]}

    def _trials(self, raw_dir: Path, by_name: dict[str, _Item]) -> dict[str, list[str]]:
        assign: dict[str, list[str]] = {}
        seen: dict[str, tuple[Path, int]] = {}
        for split_name in ("train", "test"):
            listing = raw_dir / f"trials_to_{split_name}.txt"
            if not listing.is_file():
                raise MissingRawDataError(f"split 'trials' needs {listing}")
            names = []
            for row, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
                n = line.strip().replace("\\", "/")
                if not n or n.startswith("#"):
                    continue
                if n not in by_name:
                    raise RawDataError(listing, f"{n!r} is not a recording under {raw_dir} (paths are relative to it, "
                                                f"with the extension)", row=row)
                if n in seen:
                    where, r = seen[n]
                    raise RawDataError(listing, f"{n!r} is listed twice (also {where.name}, row {r})", row=row)
                seen[n] = (listing, row)
                names.append(n)
            assign[split_name] = names
        unlisted = sorted(set(by_name) - set(seen))
        if unlisted:
            raise RawDataError(by_name[unlisted[0]].path, f"recording is in neither trials_to_train.txt nor "
                                                          f"trials_to_test.txt ({len(unlisted)} unlisted)")
        return assign

    @staticmethod
    def decode(data: bytes, path: Path) -> DecodedEvents:
        fmt = sniff_format(data[:64], path)
        if fmt == "AEDAT 4.0":
            from pipeline.io import aedat4

            return aedat4.read_aedat4(path, head=data[:_HEAD_BYTES])  # the decoder reads the file itself
        if fmt == "AEDAT 3.1":
            return aedat3.decode_aedat31(data, path)
        if fmt == "AEDAT 2.0":
            return aedat2.decode_aedat20(data, path)
        if fmt == "npy":
            return arrays.decode_npy(data, path)
        return arrays.decode_h5(data, path)

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        self._planned()
        item = self.by_path[rec.path]
        if not item.rows:
            return whole_recording(int(rec.meta["label"]), events)
        t0 = int(events.t[0]) if self.csv_time == "relative" and len(events.t) else 0
        return [Window(self.classes.index(c), t0 + a, t0 + b, row) for c, a, b, row in item.rows]

    def label_files(self, rec: Recording) -> list[Path]:
        self._planned()
        item = self.by_path[rec.path]
        return [item.csv] if item.csv else []


_READERS = {"AEDAT 4.0": "aedat4-reader/1", "AEDAT 3.1": aedat3.READER_VERSION, "AEDAT 2.0": aedat2.READER_VERSION,
            "npy": arrays.READER_VERSION, "HDF5": arrays.READER_VERSION}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_name(name: str, origin: str) -> None:
    if not _NAME.match(name) or name in _RESERVED:
        raise ValueError(f"{origin}: {name!r} cannot name a dataset (letters, digits, '_', '-', '.'; not one of "
                         f"{', '.join(_RESERVED)})")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RawDataError(path, f"cannot read: {err}") from None
    if not isinstance(conf, dict):
        raise RawDataError(path, "must hold a JSON object")
    if unknown := sorted(set(conf) - set(_JSON_KEYS)):
        raise RawDataError(path, f"unknown key(s) {unknown}; valid keys: {list(_JSON_KEYS)}")
    return conf


def _sniff_file(path: Path) -> tuple[str, tuple[int, int] | None]:
    """A recording's format and the sensor size its header records (None when it records none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as err:
        raise RawDataError(path, f"cannot read: {err}") from None
    fmt = sniff_format(head, path)
    if fmt == "AEDAT 4.0":
        from pipeline.io import aedat4

        ioh = aedat4.read_ioheader(path, head if len(head) < _HEAD_BYTES else None)
        streams = aedat4.stream_table(ioh["description"])
        events = sorted(i for i, s in streams.items() if s.get("type") == "EVTS")
        if not events:
            raise RawDataError(path, "no event stream in the AEDAT 4 header")
        s = streams[events[0]]
        return fmt, ((s["width"], s["height"]) if "width" in s and "height" in s else None)
    if fmt == "AEDAT 3.1":
        header, _ = aedat3.parse_header(head, path)
        return fmt, camera_size(header.get("source"))
    if fmt == "AEDAT 2.0":
        return fmt, (128, 128)
    if fmt == "HDF5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return fmt, arrays.h5_sensor_size(arrays._events_group(f, path), path)
        except OSError as err:
            raise RawDataError(path, f"not a readable HDF5 file: {err}", offset=0) from None
    return fmt, None


def _random_split(names: list[str], scheme: str) -> dict[str, list[str]]:
    parts = scheme.split(":")
    try:
        seed = int(parts[1])
        frac = float(parts[2]) if len(parts) > 2 else 0.2
        if len(parts) > 3 or not 0 < frac < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"split {scheme!r}: expected random:<seed>[:<test_fraction>] with 0 < fraction < 1") from None
    n = len(names)
    if n < 2:
        raise ValueError(f"split {scheme!r} needs at least 2 recordings to hold one out (found {n}); "
                         "record more, or list them in trials_to_train.txt / trials_to_test.txt")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(frac * n)))
    test = {names[k] for k in perm[:n_test]}
    return {"train": [m for m in names if m not in test], "test": [m for m in names if m in test]}


SPEC = Recordings()
