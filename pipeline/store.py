"""The event store: every event of a dataset, columnar, indexed by sample. Zarr v3 (default) or HDF5.

Layout (identical in both backends; Zarr arrays are sharded so a store is tens of files)::

    <dataset>.zarr/  or  <dataset>.h5
        attrs: format="tssd-event-store", format_version, complete, store_id, dataset, classes,
               sensor_size [W, H, P], split_scheme, validation {size, rule, recordings, users}, reader_version,
               sources [{name, size, sha256}],
               counts {events_read, invalid_dropped, nonpolarity_skipped, outside_windows, out_of_sensor, ...}
        <split>/                       one group per split ("train", "val", "test"; no "val" when ingest.val = 0)
            x u2, y u2, t i8 (µs), p u1   all events of the split, sample after sample
            offsets i8 (N+1)          sample i is rows offsets[i]:offsets[i+1]
            label i2 (N)
            recording i4 (N)          index into the split's attrs["recordings"] (file name + metadata)
            window_start_us i8 (N), window_end_us i8 (N)   the sample's window [start, end)
            attrs: n_samples, n_events, recordings [{name, ...meta}], counts {...}

In HDF5 every attribute value is stored as a JSON string (``json.loads(f.attrs[key])``); in Zarr attributes
are JSON already. Zarr columns are Blosc-zstd (level 3; byte shuffle, bit shuffle for ``p``, see
`COLUMN_CODECS`).

Writes stream: each column is written chunk by chunk (`pipeline.storage.ShardWriter`: compression in a thread
pool, shard files written in order by one I/O thread, the files zarr-python itself would write), so memory holds
a few chunks per column, never a split. The bin stage reads the columns back the same way
(`EventSplit.column_readers`, `pipeline.storage.ShardReader`). What every product shares (atomic output, the two
backends, attributes, header and inventory checks, pinning) is `pipeline.storage`; this module is the event
store's layout on top of it.

Writes are atomic: a store is built under ``<path>.tmp-<pid>`` and swapped into place only once complete
(`pipeline.storage.atomic_output`: one ``renameat2(RENAME_EXCHANGE)``, so the path never lacks a complete
product; writers of one folder take turns under an ``flock``), so a killed ingest leaves nothing that opens.
`open_event_store` refuses a store of another format version, one not marked complete, and (Zarr) one whose
files are not exactly those written (root attribute ``files``: ``{relative path: bytes}`` of every file but the
root ``zarr.json``; zarr would read a missing chunk as zeros). A reader pins the version it opened
(`pipeline.storage.Pin`): a re-ingest that replaces the store while it is read makes the next read fail with
"changed while it was being read", never mix versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.events import EVENT_DTYPE, SensorSize
from pipeline.storage import (
    ZSTD_BITSHUFFLE,
    ZSTD_SHUFFLE,
    Codec,
    Product,
    ProductWriter,
    ShardReader,
    StoreError,
    atomic_output,
    backend_for,
    remove_path,
    stable_hash,
    store_format,
    write_atomic,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "COLUMNS",
    "COLUMN_CODECS",
    "StoreError",
    "EventStoreWriter",
    "EventStore",
    "EventSplit",
    "open_event_store",
    # the storage layer's, importable from here too (the stages' call sites): see `pipeline.storage`
    "store_format",
    "atomic_output",
    "stable_hash",
    "remove_path",
    "write_atomic",
]

FORMAT = "tssd-event-store"
FORMAT_VERSION = 2  # 2: Zarr stores carry the file inventory (attrs['files']) that opening checks
COLUMNS = {"x": "<u2", "y": "<u2", "t": "<i8", "p": "u1"}
SAMPLE_ARRAYS = {"offsets": "<i8", "label": "<i2", "recording": "<i4", "window_start_us": "<i8", "window_end_us": "<i8"}

#: Blosc settings per event column (Zarr): zstd level 3; byte shuffle for the multi-byte columns, bit shuffle for
#: the polarity (one bit of eight used: 5x smaller and ~10x faster to compress than byte shuffle, a no-op at
#: typesize 1). The small per-sample arrays use `SMALL_CODEC`. Every setting reads with plain zarr.
COLUMN_CODECS = {"x": ZSTD_SHUFFLE, "y": ZSTD_SHUFFLE, "t": ZSTD_SHUFFLE, "p": ZSTD_BITSHUFFLE}
SMALL_CODEC = ZSTD_SHUFFLE
#: The same, per backend (HDF5: lzf with byte shuffle for the columns, uncompressed small arrays).
_COLUMN = {k: Codec(v, {"compression": "lzf", "shuffle": True}) for k, v in COLUMN_CODECS.items()}
_SMALL = Codec(SMALL_CODEC)


# ------------------------------------------------------------------------------------------ writing
class _SplitWriter:
    """Streams one split's columns to the sink (bounded memory: a few chunks per column, never the split)."""

    def __init__(self, sink: ProductWriter, name: str, chunk: int, shard: int):
        self.sink = sink
        self.group = sink.group(name)
        self.cols = {k: sink.column(self.group, k, dt, _COLUMN[k], chunk_rows=chunk, shard_rows=shard)
                     for k, dt in COLUMNS.items()}
        self.offsets = [0]
        self.meta: dict[str, list[int]] = {k: [] for k in SAMPLE_ARRAYS if k != "offsets"}

    def add(self, x, y, t, p, *, label: int, recording: int, start_us: int, end_us: int) -> None:
        n = len(t)
        for k, v in zip(COLUMNS, (x, y, t, p)):
            v = np.asarray(v, dtype=COLUMNS[k])
            if len(v) != n:
                raise ValueError(f"column {k} has {len(v)} values, t has {n}")
            self.cols[k].write(v)
        self.offsets.append(self.offsets[-1] + n)
        for k, v in zip(self.meta, (label, recording, start_us, end_us)):
            self.meta[k].append(int(v))

    def finish(self, attrs: dict) -> None:
        for col in self.cols.values():
            col.close()
        self.sink.array(self.group, "offsets", np.asarray(self.offsets, SAMPLE_ARRAYS["offsets"]), _SMALL)
        for k, v in self.meta.items():
            self.sink.array(self.group, k, np.asarray(v, SAMPLE_ARRAYS[k]), _SMALL)
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
        self.backend = backend_for(path, fmt)
        self.fmt = self.backend.name
        if backend_for(path) is not self.backend:
            raise StoreError(f"{path}: a {self.fmt} store needs a {self.backend.suffix} path "
                             "(readers choose the backend by suffix)")
        self.chunk, self.shard = chunk_events, shard_events
        self._splits: dict[str, _SplitWriter] = {}

    def __enter__(self) -> "EventStoreWriter":
        self._sink = ProductWriter(self.path, self.backend).__enter__()
        return self

    def split(self, name: str) -> _SplitWriter:
        if name not in self._splits:
            self._splits[name] = _SplitWriter(self._sink, name, self.chunk, self.shard)
        return self._splits[name]

    def finish_split(self, name: str, attrs: dict) -> None:
        self._splits[name].finish(attrs)

    def finish(self, attrs: dict) -> None:
        """Write root attributes and mark the store complete (the last write before the rename)."""
        self._sink.finish({**attrs, "format": FORMAT, "format_version": FORMAT_VERSION, "splits": list(self._splits)})

    def __exit__(self, exc_type, exc, tb) -> None:
        self._sink.__exit__(exc_type, exc, tb)


# ------------------------------------------------------------------------------------------ reading
class EventSplit:
    """One split of an event store: ``len(split)``, ``split[i] -> (events, label)``.

    ``events`` is a structured array with tonic's field names (x, y, t, p), so tonic transforms apply directly.
    Handles are opened lazily and dropped on pickling, so a split is safe to use in DataLoader workers. Every read
    comes from the version of the store that was opened (its `pipeline.storage.Pin`), or fails with a StoreError
    saying it changed.
    """

    def __init__(self, store: Product, name: str):
        self.store, self.name = store, name
        self.path = store.path
        try:
            with store.root() as root:
                g = root[name]
                self.offsets = np.asarray(g["offsets"][:], np.int64)
                self.labels = np.asarray(g["label"][:], np.int64)
                self.recording = np.asarray(g["recording"][:], np.int64)
                self.window_us = np.stack([np.asarray(g["window_start_us"][:]), np.asarray(g["window_end_us"][:])],
                                          1)
                self.attrs = store.backend.read_attrs(g)
                lengths = {k: int(g[k].shape[0]) for k in COLUMNS}
        except KeyError as err:
            raise StoreError(f"{self.path} split {name!r} has no array {err}: a damaged store; rebuild it") from None
        store.pin.check()  # everything above came from the version pinned
        self._check_shapes(lengths)
        self._group = None
        self._resident: dict[str, np.ndarray] | None = None  # every column, once `preload` read them

    def _check_shapes(self, lengths: dict[str, int]) -> None:
        """The arrays must agree with each other and with the split's attributes (a cheap check, no data read)."""
        n, off = len(self.labels), self.offsets
        problems = []
        if len(off) != n + 1 or len(self.recording) != n or len(self.window_us) != n:
            problems.append(f"offsets has {len(off)} entries, label {n}, recording {len(self.recording)}, "
                            f"windows {len(self.window_us)} (expected N + 1, N, N, N)")
        elif n and (off[0] != 0 or np.any(off[1:] < off[:-1])):
            problems.append("offsets do not start at 0 and never decrease")
        if self.attrs.get("n_samples", n) != n:
            problems.append(f"attrs say n_samples = {self.attrs['n_samples']}, the arrays hold {n}")
        total = int(off[-1]) if len(off) else 0
        if self.attrs.get("n_events", total) != total:
            problems.append(f"attrs say n_events = {self.attrs['n_events']}, offsets end at {total}")
        bad = {k: v for k, v in lengths.items() if v != total}
        if bad:
            problems.append(f"columns {bad} do not hold the {total} events offsets index")
        if problems:
            raise StoreError(f"{self.path} split {self.name!r} is inconsistent: " + "; ".join(problems) +
                             "; rebuild it")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None}

    def _cols(self):
        if self._group is None:
            self._group = self.store.open_root()[self.name]
        return self._group

    def __len__(self) -> int:
        return len(self.labels)

    def column_readers(self) -> "dict[str, ShardReader] | None":
        """Direct shard readers for x, y, t, p (Zarr stores in the layout `ShardWriter` writes), else None."""
        readers = {k: self.store.shard_reader(f"{self.name}/{k}") for k in COLUMNS}
        if any(r is None or r.n != self.offsets[-1] for r in readers.values()):
            return None
        return readers

    def preload(self, max_bytes: int = 2 << 30) -> bool:
        """Read every event column into memory once (a split of at most ``max_bytes``), so that each sample is a
        slice of it instead of one read per column per sample (evaluate reads the test split once per inference T).
        Returns whether the split is now resident; a larger split stays on disk."""
        if self._resident is None:
            n = int(self.offsets[-1]) if len(self.offsets) else 0
            if n * EVENT_DTYPE.itemsize > max_bytes:
                return False
            self._resident = self.event_slice(0, n)
        return True

    def event_slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Columns x, y, t, p for event rows [start, stop) of the split."""
        if self._resident is not None:
            return {k: v[start:stop] for k, v in self._resident.items()}
        g = self._cols()
        out = {k: np.asarray(g[k][start:stop]) for k in COLUMNS}
        self.store.after_read()  # zarr-python opens files by path: make sure they were the pinned version's
        return out

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


class EventStore(Product):
    """An opened event store: ``store.attrs``, ``store.splits``, ``store[split] -> EventSplit``.

    Opening checks the format, the version, the ``complete`` flag and (Zarr) that the files are exactly those
    written (`pipeline.storage.Product`); every split then reads the version opened, or fails saying the store
    changed."""

    def __init__(self, path: str | Path):
        super().__init__(path, FORMAT, FORMAT_VERSION)
        self.sensor_size = SensorSize.of(self.attrs["sensor_size"])
        self.splits: list[str] = list(self.attrs["splits"])
        self.store_id: str = self.attrs["store_id"]
        self._cache: dict[str, EventSplit] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}  # a pickled split carries its store, not the store's other splits

    def __getitem__(self, split: str) -> EventSplit:
        if split not in self.splits:
            raise KeyError(f"{self.path} has no split {split!r}; splits: {self.splits}")
        if split not in self._cache:
            self._cache[split] = EventSplit(self, split)
        return self._cache[split]


def open_event_store(path: str | Path) -> EventStore:
    """Open and validate an event store written by `EventStoreWriter`."""
    return EventStore(path)
