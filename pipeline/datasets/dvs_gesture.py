"""DVS128-Gesture (Amir et al., CVPR 2017): 122 AEDAT 3.1 recordings of 29 users under 5 lightings.

Raw layout (the official ``DvsGesture.tar.gz`` extracted into ``data_cache/raw/dvs_gesture/``)::

    data_cache/raw/dvs_gesture/DvsGesture/     (or the files directly in data_cache/raw/dvs_gesture/)
        trials_to_train.txt                    one recording file name per line (98 recordings)
        trials_to_test.txt                     (24 recordings)
        user01_fluorescent.aedat               AEDAT 3.1, see pipeline.io.aedat3
        user01_fluorescent_labels.csv          class,startTime_usec,endTime_usec   (class is 1-based)
        ...

One sample per csv row: events with ``startTime_usec <= t < endTime_usec``, label = class - 1, in the official
class order below (not the string-sorted folder order that puts class "10" at index 2). Windows may overlap
(the real user22_led_labels.csv has one); both samples are kept and the overlap is reported.
On the real data this gives 1176 train / 288 test samples (official split).

Validation (``ingest.val.dvs_gesture``, default 0.15): whole users carved from the official training side by
`pipeline.datasets.base.carve_validation` -- the last ceil(0.15 x 23) = 4 training users in user order (users
20..23 of the official training users 1..23; 19 users train), never a test user. The trials lists are not changed (the raw files stay
byte-identical); the carving is recorded in the store's ``validation`` attribute.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.datasets.base import (Download, MissingRawDataError, Recording, Window, carve_validation, check_disjoint,
                                    read_listing, val_size)
from pipeline.events import DecodedEvents, SensorSize
from pipeline.io import aedat3
from pipeline.io.errors import RawDataError

__all__ = ["SPEC", "DVSGesture", "read_label_csv", "CLASSES"]

CLASSES = (
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
)
_CSV_HEADER = ("class", "starttime_usec", "endtime_usec")
_NAME = re.compile(r"^user(\d+)_(.+)\.aedat$")


def read_label_csv(path: Path, n_classes: int) -> list[Window]:
    """Parse ``userNN_<lighting>_labels.csv``: header ``class,startTime_usec,endTime_usec``, then 1-based rows."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Excel's csv) is accepted
    except (OSError, UnicodeDecodeError) as err:
        raise RawDataError(path, f"cannot read label csv: {err}") from err
    if not lines or tuple(c.strip().lower() for c in lines[0].split(",")) != _CSV_HEADER:
        raise RawDataError(path, f"expected header 'class,startTime_usec,endTime_usec', found {lines[:1]!r}", row=1)
    windows = []
    for row, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            cls, start, end = (int(c) for c in cells)
        except ValueError:
            raise RawDataError(path, f"expected three integers, found {line!r}", row=row) from None
        if not 1 <= cls <= n_classes:
            raise RawDataError(path, f"unknown class {cls} (valid: 1..{n_classes})", row=row)
        if start < 0:
            raise RawDataError(path, f"window start {start} is negative", row=row)
        if end < start:
            raise RawDataError(path, f"window end {end} is before start {start}", row=row)
        if end >= 1 << 63:
            raise RawDataError(path, f"window end {end} µs does not fit in int64 (the store's time type)", row=row)
        windows.append(Window(label=cls - 1, start_us=start, end_us=end, row=row))
    return windows


class DVSGesture:
    name = "dvs_gesture"
    classes = CLASSES
    sensor_size = SensorSize(128, 128, 2)
    default_split = "official"
    split_schemes = ("official",)
    default_val = 0.15
    val_rule = "whole users: the last N training users in user order (a fraction f: ceil(f * users))"
    reader_version = aedat3.READER_VERSION
    downloads = (
        Download(
            "DvsGesture.tar.gz",
            "https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794",
            "8a5c71fb11e24e5ca5b11866ca6c00a1",
            manual=True,
        ),
    )

    @staticmethod
    def decode(data: bytes, path: Path) -> DecodedEvents:
        return aedat3.decode_aedat31(data, path)

    def raw_layout(self, raw_dir: Path) -> str:
        return (
            f"{raw_dir}/DvsGesture/trials_to_train.txt, trials_to_test.txt, userNN_<lighting>.aedat and "
            "userNN_<lighting>_labels.csv (extract the official DvsGesture.tar.gz there)"
        )

    @staticmethod
    def _root(raw_dir: Path) -> Path:
        nested = raw_dir / "DvsGesture"
        return nested if (nested / "trials_to_train.txt").is_file() else raw_dir

    def recordings(self, raw_dir: Path, split: str = "official", val: float | None = None
                   ) -> dict[str, list[Recording]]:
        if split != "official":
            raise ConfigError(f"dvs_gesture has one split scheme, 'official'; got {split!r}")
        root = self._root(Path(raw_dir))
        listings = {}
        for split_name in ("train", "test"):
            listing = root / f"trials_to_{split_name}.txt"
            if not listing.is_file():
                raise MissingRawDataError(f"{listing} not found. Expected {self.raw_layout(Path(raw_dir))}.")
            listings[split_name] = (listing, read_listing(listing))
        check_disjoint(listings)
        out: dict[str, list[Recording]] = {}
        for split_name, (listing, rows) in listings.items():
            recs = []
            for row, fname in rows:
                m = _NAME.match(fname)
                if not m:
                    raise RawDataError(listing, f"not a 'userNN_<lighting>.aedat' name: {fname!r}", row=row)
                path = root / fname
                if not path.is_file():
                    raise MissingRawDataError(f"{path} (listed in {listing}, row {row}) not found")
                recs.append(Recording(path, fname, {"user": int(m.group(1)), "lighting": m.group(2)}))
            out[split_name] = recs
        return carve_by_user(out, self.default_val if val is None else val, f"ingest.val.{self.name}")

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        csv = rec.path.with_name(rec.path.stem + "_labels.csv")
        if not csv.is_file():
            raise MissingRawDataError(f"label file {csv} for {rec.path} not found")
        return read_label_csv(csv, len(self.classes))

    def check_recording(self, rec: Recording) -> None:
        """Up-front check (`pipeline.ingest` runs it on every recording before reading any): the AEDAT 3.1 header
        (its first 64 KiB) and the label csv parse. RawDataError names the file and the offset or row."""
        try:
            with open(rec.path, "rb") as f:
                head = f.read(1 << 16)
        except OSError as err:
            raise RawDataError(rec.path, f"cannot read: {err}") from None
        if b"#!END-HEADER" in head or not head.startswith(b"#!AER-DAT3.1"):  # a longer header: left to decode
            aedat3.parse_header(head, rec.path)
        read_label_csv(rec.path.with_name(rec.path.stem + "_labels.csv"), len(self.classes))

    def label_files(self, rec: Recording) -> list[Path]:
        """Files besides the recording whose bytes shape the samples (hashed into the store's identity)."""
        return [rec.path.with_name(rec.path.stem + "_labels.csv")]


SPEC = DVSGesture()


def carve_by_user(plan: dict[str, list[Recording]], val: float, where: str) -> dict[str, list[Recording]]:
    """``{"train", "val", "test"}`` from a ``{"train", "test"}`` plan whose recordings carry ``meta["user"]``:
    whole users of the training side become validation (`carve_validation`, size `val_size(val)`)."""
    train, held = carve_validation(plan["train"], lambda r: r.meta["user"], **val_size(val, where))
    return {"train": train, "val": held, "test": plan["test"]}


def write_recording(root: Path, name: str, x, y, t, p, windows: list[Window], *, valid=None,
                    events_per_packet: int = 4096) -> None:
    """Write one recording in the official layout: ``<name>.aedat`` (AEDAT 3.1) + ``<name>_labels.csv``.

    Used by the digits_dvs emulator and by the tests; ``windows`` carry 0-based labels (written 1-based).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    aedat3.write_aedat31(root / f"{name}.aedat", x, y, t, p, valid=valid, events_per_packet=events_per_packet)
    rows = ["class,startTime_usec,endTime_usec"] + [f"{w.label + 1},{w.start_us},{w.end_us}" for w in windows]
    (root / f"{name}_labels.csv").write_text("\r\n".join(rows) + "\r\n")


def write_trials(root: Path, train: list[str], test: list[str]) -> None:
    """Write ``trials_to_train.txt`` / ``trials_to_test.txt`` listing recording names (without .aedat)."""
    for split, names in (("train", train), ("test", test)):
        (Path(root) / f"trials_to_{split}.txt").write_text("".join(f"{n}.aedat\r\n" for n in names))
