"""What every dataset module provides: its raw layout, classes, splits, sensor size and download sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from pipeline.events import SensorSize
from pipeline.io.aedat3 import DecodedEvents

__all__ = ["Recording", "Window", "Download", "DatasetSpec", "MissingRawDataError", "whole_recording"]


class MissingRawDataError(FileNotFoundError):
    """The raw files of a dataset are not where they should be; the message says what to download and where."""


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


def whole_recording(label: int, events: DecodedEvents) -> list[Window]:
    """One sample holding every event of a recording: the window [t_first, t_last + 1)."""
    if len(events.t) == 0:
        return [Window(label, 0, 0)]
    return [Window(label, int(events.t[0]), int(events.t[-1]) + 1)]
