"""The event store: every event of a dataset, columnar, indexed by sample. Zarr v3 (default) or HDF5.

Layout (identical in both backends; Zarr arrays are sharded so a store is tens of files)::

    <dataset>.zarr/  or  <dataset>.h5
        attrs: format="tssd-event-store", format_version, complete, store_id, dataset, classes,
               sensor_size [W, H, P], split_scheme, reader_version, sources [{name, size, sha256}],
               counts {events_read, invalid_dropped, nonpolarity_skipped, outside_windows, out_of_sensor, ...}
        <split>/                       one group per split ("train", "test")
            x u2, y u2, t i8 (µs), p u1   all events of the split, sample after sample
            offsets i8 (N+1)          sample i is rows offsets[i]:offsets[i+1]
            label i2 (N)
            recording i4 (N)          index into the split's attrs["recordings"] (file name + metadata)
            window_start_us i8 (N), window_end_us i8 (N)   the sample's window [start, end)
            attrs: n_samples, n_events, recordings [{name, ...meta}], counts {...}

In HDF5 every attribute value is stored as a JSON string (``json.loads(f.attrs[key])``); in Zarr attributes
are JSON already.

Writes are atomic: a store is built under ``<path>.tmp-<pid>`` and renamed into place only once complete, so
a killed ingest leaves nothing that opens. `open_event_store` refuses a store of another format version or
one not marked complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.events import EVENT_DTYPE, SensorSize

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "StoreError",
    "EventStoreWriter",
    "EventStore",
    "EventSplit",
    "open_event_store",
    "store_format",
    "atomic_output",
    "stable_hash",
    "remove_path",
    "write_atomic",
    "read_attrs",
    "write_attrs",
]

FORMAT = "tssd-event-store"
FORMAT_VERSION = 1
COLUMNS = {"x": "<u2", "y": "<u2", "t": "<i8", "p": "u1"}
SAMPLE_ARRAYS = {"offsets": "<i8", "label": "<i2", "recording": "<i4", "window_start_us": "<i8", "window_end_us": "<i8"}


class StoreError(ValueError):
    """A store (event store or frame cache) is missing, incomplete, or of another format/version/identity."""


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): a content key for caches and stores."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def store_format(path: str | Path, fmt: str | None = None) -> str:
    """'zarr' or 'h5', from ``fmt`` or the path's suffix."""
    fmt = fmt or ("h5" if Path(path).suffix in (".h5", ".hdf5") else "zarr")
    if fmt not in ("zarr", "h5"):
        raise ValueError(f"unknown store format {fmt!r}; choose 'zarr' or 'h5'")
    return fmt


# ------------------------------------------------------------------------------------------ atomic output
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class atomic_output:
    """Context manager yielding a temporary sibling path; on success it replaces ``path`` (file or directory),
    on failure it is removed. Temporaries left by killed runs (their pid is gone) are cleared on entry; those of
    live processes are left alone."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f"{self.path.name}.tmp-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
                remove_path(stale)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            remove_path(self.tmp)
            return
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        remove_path(old)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (metrics, CSV) so that readers see the old or the new content, never a part."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def remove_path(p: Path) -> None:
    """Delete a file or a directory tree (a store, a cache, a temporary)."""
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


# ------------------------------------------------------------------------------------------ backends
class _Sink:
    """Minimal writer interface over Zarr v3 / HDF5: growable 1-D columns, small arrays, JSON attributes."""

    def __init__(self, path: Path, fmt: str, chunk: int, shard: int):
        self.fmt, self.chunk, self.shard = fmt, chunk, shard
        if fmt == "zarr":
            self.root = zarr.open_group(path, mode="w-")
        else:
            self.root = h5py.File(path, "w-", libver="latest")  # dense attribute storage: no 64 KiB limit
        self._codec = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")

    def group(self, name: str):
        return self.root.create_group(name)

    def column(self, group, name: str, dtype: str):
        if self.fmt == "zarr":
            return group.create_array(
                name, shape=(0,), dtype=dtype, chunks=(self.chunk,), shards=(self.shard,), compressors=self._codec
            )
        return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(self.chunk,),
                                    compression="lzf", shuffle=True)

    @staticmethod
    def append(arr, data: np.ndarray) -> None:
        n = arr.shape[0]
        arr.resize((n + len(data),))
        arr[n:] = data

    def array(self, group, name: str, data: np.ndarray) -> None:
        if self.fmt == "zarr":
            group.create_array(name, data=data, chunks=(max(len(data), 1),), compressors=self._codec)
        else:
            group.create_dataset(name, data=data)

    def set_attrs(self, node, attrs: dict) -> None:
        write_attrs(node, self.fmt, attrs)

    def close(self) -> None:
        if self.fmt == "h5":
            self.root.close()


class _SplitWriter:
    """Buffers one split's columns and writes them in whole shards (no read-modify-write of Zarr shards)."""

    def __init__(self, sink: _Sink, name: str):
        self.sink = sink
        self.group = sink.group(name)
        self.cols = {k: sink.column(self.group, k, dt) for k, dt in COLUMNS.items()}
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
        self.n_pending = 0
        self.offsets = [0]
        self.meta: dict[str, list[int]] = {k: [] for k in SAMPLE_ARRAYS if k != "offsets"}

    def add(self, x, y, t, p, *, label: int, recording: int, start_us: int, end_us: int) -> None:
        for k, v in zip(COLUMNS, (x, y, t, p)):
            self.pending[k].append(np.asarray(v, dtype=COLUMNS[k]))
        self.n_pending += len(t)
        self.offsets.append(self.offsets[-1] + len(t))
        for k, v in zip(self.meta, (label, recording, start_us, end_us)):
            self.meta[k].append(int(v))
        if self.n_pending >= self.sink.shard:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        keep = 0 if final else self.n_pending % self.sink.shard
        for k in COLUMNS:
            data = np.concatenate(self.pending[k]) if self.pending[k] else np.empty(0, COLUMNS[k])
            head, tail = data[: len(data) - keep], data[len(data) - keep :]
            if len(head):
                self.sink.append(self.cols[k], head)
            self.pending[k] = [tail] if keep else []
        self.n_pending = keep

    def finish(self, attrs: dict) -> None:
        self._flush(final=True)
        self.sink.array(self.group, "offsets", np.asarray(self.offsets, SAMPLE_ARRAYS["offsets"]))
        for k, v in self.meta.items():
            self.sink.array(self.group, k, np.asarray(v, SAMPLE_ARRAYS[k]))
        self.sink.set_attrs(self.group, {"n_samples": len(self.offsets) - 1, "n_events": self.offsets[-1], **attrs})


class EventStoreWriter:
    """Write an event store atomically.

    >>> with EventStoreWriter(path, "zarr") as w:          # doctest: +SKIP
    ...     s = w.split("train")
    ...     s.add(x, y, t, p, label=3, recording=0, start_us=0, end_us=10_000)
    ...     w.finish_split("train", {"recordings": [...], "counts": {...}})
    ...     w.finish({...root attributes...})
    """

    def __init__(self, path: str | Path, fmt: str | None = None, *, chunk_events: int = 1 << 18,
                 shard_events: int = 1 << 25):
        if chunk_events <= 0 or shard_events <= 0 or shard_events % chunk_events:
            raise ValueError(f"shard_events ({shard_events}) must be a positive multiple of chunk_events ({chunk_events})")
        self.path = Path(path)
        self.fmt = store_format(path, fmt)
        if store_format(path) != self.fmt:
            raise StoreError(f"{path}: a {self.fmt} store needs a {'.h5' if self.fmt == 'h5' else '.zarr'} path "
                             "(readers choose the backend by suffix)")
        self.chunk, self.shard = chunk_events, shard_events
        self._splits: dict[str, _SplitWriter] = {}
        self._finished = False

    def __enter__(self) -> "EventStoreWriter":
        self._atomic = atomic_output(self.path)
        self._sink = _Sink(self._atomic.__enter__(), self.fmt, self.chunk, self.shard)
        return self

    def split(self, name: str) -> _SplitWriter:
        if name not in self._splits:
            self._splits[name] = _SplitWriter(self._sink, name)
        return self._splits[name]

    def finish_split(self, name: str, attrs: dict) -> None:
        self._splits[name].finish(attrs)

    def finish(self, attrs: dict) -> None:
        """Write root attributes and mark the store complete (the last write before the rename)."""
        self._sink.set_attrs(self._sink.root, {**attrs, "format": FORMAT, "format_version": FORMAT_VERSION,
                                               "splits": list(self._splits)})
        self._sink.set_attrs(self._sink.root, {"complete": True})
        self._finished = True

    def __exit__(self, exc_type, exc, tb) -> None:
        self._sink.close()
        unfinished = exc_type is None and not self._finished
        self._atomic.__exit__(RuntimeError if unfinished else exc_type, exc, tb)
        if unfinished:  # never publish a store whose finish() was not called
            raise StoreError(f"{self.path}: finish() was not called; nothing was written")


# ------------------------------------------------------------------------------------------ reading
def read_attrs(node, fmt: str) -> dict:
    """Attributes of a Zarr/HDF5 node (HDF5 values are JSON strings)."""
    if fmt == "zarr":
        return dict(node.attrs)
    return {k: json.loads(v) for k, v in node.attrs.items()}


def write_attrs(node, fmt: str, attrs: dict) -> None:
    """Set attributes on a Zarr/HDF5 node (HDF5 values stored as JSON strings)."""
    for k, v in attrs.items():
        node.attrs[k] = v if fmt == "zarr" else json.dumps(v)


def check_header(attrs: dict, path: Path, expected_format: str, version: int) -> None:
    """Refuse stores of another format, another version, or not marked complete."""
    if attrs.get("format") != expected_format:
        raise StoreError(f"{path} is not a {expected_format} (format attribute: {attrs.get('format')!r})")
    if attrs.get("format_version") != version:
        raise StoreError(
            f"{path} has format version {attrs.get('format_version')!r}, this code reads version {version}: "
            "rebuild it (e.g. dvc repro)"
        )
    if attrs.get("complete") is not True:
        raise StoreError(f"{path} is incomplete (an interrupted write); rebuild it")


def open_node(path: Path, fmt: str):
    if not path.exists():
        raise StoreError(f"{path} does not exist")
    try:
        return zarr.open_group(path, mode="r") if fmt == "zarr" else h5py.File(path, "r")
    except Exception as err:  # zarr/h5py raise many types for a damaged store; name the file, keep the cause
        raise StoreError(f"{path} cannot be opened as a {fmt} store: {err}") from err


class EventSplit:
    """One split of an event store: ``len(split)``, ``split[i] -> (events, label)``.

    ``events`` is a structured array with tonic's field names (x, y, t, p), so tonic transforms apply directly.
    Handles are opened lazily and dropped on pickling, so a split is safe to use in DataLoader workers.
    """

    def __init__(self, path: Path, fmt: str, name: str):
        self.path, self.fmt, self.name = path, fmt, name
        root = open_node(path, fmt)
        try:
            g = root[name]
            self.offsets = np.asarray(g["offsets"][:], np.int64)
            self.labels = np.asarray(g["label"][:], np.int64)
            self.recording = np.asarray(g["recording"][:], np.int64)
            self.window_us = np.stack([np.asarray(g["window_start_us"][:]), np.asarray(g["window_end_us"][:])], 1)
            self.attrs = read_attrs(g, fmt)
        finally:
            if fmt == "h5":
                root.close()
        self._group = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None}

    def _cols(self):
        if self._group is None:
            self._group = open_node(self.path, self.fmt)[self.name]
        return self._group

    def __len__(self) -> int:
        return len(self.labels)

    def event_slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Columns x, y, t, p for event rows [start, stop) of the split."""
        g = self._cols()
        return {k: np.asarray(g[k][start:stop]) for k in COLUMNS}

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for split {self.name!r} with {n} samples")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        cols = self.event_slice(a, b)
        ev = np.empty(b - a, dtype=EVENT_DTYPE)
        for k, v in cols.items():
            ev[k] = v
        return ev, int(self.labels[i])

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        for i in range(len(self)):
            yield self[i]


class EventStore:
    """An opened event store: ``store.attrs``, ``store.splits``, ``store[split] -> EventSplit``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fmt = store_format(self.path)
        root = open_node(self.path, self.fmt)
        try:
            self.attrs = read_attrs(root, self.fmt)
        finally:
            if self.fmt == "h5":
                root.close()
        check_header(self.attrs, self.path, FORMAT, FORMAT_VERSION)
        self.sensor_size = SensorSize.of(self.attrs["sensor_size"])
        self.splits: list[str] = list(self.attrs["splits"])
        self.store_id: str = self.attrs["store_id"]
        self._cache: dict[str, EventSplit] = {}

    def __getitem__(self, split: str) -> EventSplit:
        if split not in self.splits:
            raise KeyError(f"{self.path} has no split {split!r}; splits: {self.splits}")
        if split not in self._cache:
            self._cache[split] = EventSplit(self.path, self.fmt, split)
        return self._cache[split]


def open_event_store(path: str | Path) -> EventStore:
    """Open and validate an event store written by `EventStoreWriter`."""
    return EventStore(path)
