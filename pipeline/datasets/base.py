"""What every dataset module provides: its raw layout, classes, splits, sensor size and download sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from pipeline.events import DecodedEvents, SensorSize
from pipeline.io.errors import RawDataError

__all__ = ["Recording", "Window", "Download", "DatasetSpec", "MissingRawDataError", "MissingDecoderError",
           "require_aedat4_decoder", "whole_recording", "read_listing", "check_disjoint", "download_instructions"]


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

    def recordings(self, raw_dir: Path, split: str) -> dict[str, list[Recording]]:
        """Recordings per split name, in a pinned order. Raises MissingRawDataError / RawDataError."""
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
