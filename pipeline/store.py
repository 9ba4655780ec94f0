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

Writes stream: each column is written chunk by chunk (`ShardWriter`: compression in a thread pool, shard files
written in order by one I/O thread, the files zarr-python itself would write), so memory holds a few chunks per
column, never a split. The bin stage reads the columns back the same way (`ShardedColumnReader`).

Writes are atomic: a store is built under ``<path>.tmp-<pid>`` and swapped into place only once complete
(`atomic_output`: one ``renameat2(RENAME_EXCHANGE)``, so the path never lacks a complete product; writers of one
folder take turns under an ``flock``), so a killed ingest leaves nothing that opens. `open_event_store` refuses a
store of another format version, one not marked complete, and (Zarr) one whose files are not exactly those
written (root attribute ``files``: ``{relative path: bytes}`` of every file but the root ``zarr.json``; zarr
would read a missing chunk as zeros). A reader pins the version it opened (`_Pin`): a re-ingest that replaces
the store while it is read makes the next read fail with "changed while it was being read", never mix versions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import h5py
import google_crc32c
import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

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
FORMAT_VERSION = 2  # 2: Zarr stores carry the file inventory (attrs['files']) that opening checks
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


_libc_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(..., RENAME_EXCHANGE)``): at every
    instant each name holds one complete tree. False where the OS or the filesystem cannot exchange."""
    global _libc_renameat2
    if _libc_renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _libc_renameat2 = fn
        except (AttributeError, OSError):  # not Linux, or a libc without renameat2 (glibc < 2.28)
            _libc_renameat2 = False
    if _libc_renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _libc_renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel / filesystem cannot
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive ``flock`` on the folder itself, held by the writers of products in it (not by readers) across
    the swap and the clean-up of temporaries: concurrent writers of one product publish one after the other. No
    lock file is created (a DVC output folder stays exactly the products)."""
    if fcntl is None:  # pragma: no cover - Windows: no flock; the swap still never leaves a partial product
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _after_swap_hook() -> None:
    """Called between the steps of a two-step (non-exchange) swap; tests replace it to simulate a kill there."""


class atomic_output:
    """Context manager yielding a temporary sibling path ``<path>.tmp-<pid>``; on success it replaces ``path``
    (file or directory), on failure it is removed.

    Publishing never leaves a moment without a complete product: a file is ``os.replace``d; a directory is
    exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)`` step (Linux), then the old one, now under the
    temporary name, is deleted. Where the exchange is not available the swap takes two renames (old ->
    ``<path>.old-<pid>``, new -> ``path``). Writers of products in one folder hold an ``flock`` on that folder
    across the swap and the clean-up, so concurrent writers of the same product each publish in turn and the last
    one's complete product stays. On entry (under that lock), leftovers of dead processes are cleared:
    ``.tmp-<pid>`` is removed; ``.old-<pid>`` (a kill between the two renames) is renamed back to ``path`` when
    ``path`` is missing, removed otherwise. Temporaries of live processes are left alone."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")

    def _clear_stale(self) -> None:
        for kind in ("old", "tmp"):  # old first: a stranded previous product is restored before temporaries go
            for stale in sorted(self.path.parent.glob(f"{glob.escape(self.path.name)}.{kind}-*")):
                pid = stale.name.rsplit("-", 1)[-1]
                if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                    continue
                if kind == "old" and not os.path.lexists(self.path):
                    os.replace(stale, self.path)
                else:
                    remove_path(stale)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.parent):
            self._clear_stale()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            remove_path(self.tmp)
            return
        with _locked(self.path.parent):
            self._publish()
        remove_path(self.tmp)  # the replaced product, if there was one (outside the lock: it may be large)

    def _publish(self) -> None:
        if not self.tmp.is_dir() or not os.path.lexists(self.path):
            os.replace(self.tmp, self.path)  # a file, or a directory onto nothing: one atomic step
            return
        if _exchange(self.tmp, self.path):
            return
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        os.replace(self.path, old)
        _after_swap_hook()
        os.replace(self.tmp, self.path)
        os.replace(old, self.tmp)


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


# ------------------------------------------------------------------------------------------ shard writing
#: Blosc settings per event column (Zarr): zstd level 3; byte shuffle for the multi-byte columns, bit shuffle for
#: the polarity (one bit of eight used: 5x smaller and ~10x faster to compress than byte shuffle, a no-op at
#: typesize 1). The small per-sample arrays use `SMALL_CODEC`. Every setting reads with plain zarr.
COLUMN_CODECS = {
    "x": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "y": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "t": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "p": {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
}
SMALL_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}


def default_threads() -> int:
    """Worker threads for (de)compression: the CPUs this process may run on, at most 8 (one thread produces the
    data, so more would only hold more chunks in memory: each thread keeps ~2 chunks per column in flight)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _blosc_of(codec: BloscCodec, itemsize: int):
    """A numcodecs Blosc compressor with exactly the settings of Zarr's ``codec`` (as zarr-python builds it)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
    return Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle, blocksize=codec.blocksize,
                 typesize=itemsize)


def _encode_chunk(blosc, chunk: np.ndarray) -> bytes | None:
    """One inner chunk, compressed; None when it is all fill value (0), which Zarr does not store. (Only a chunk
    that compresses to under 1/64 of its size, or 256 bytes, can be all zeros: the others are not scanned.)"""
    data = blosc.encode(chunk)
    if len(data) <= max(256, chunk.nbytes // 64) and not chunk.view(np.uint8).any():
        return None
    return data


class _ShardFile:
    """One shard file being written; every method runs on the single I/O thread, in submission order."""

    def __init__(self, path: Path):
        self.path = path
        self.f = None

    def append(self, data: bytes) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "wb")
        self.f.write(data)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class ShardWriter:
    """Streams rows into a sharded Zarr v3 array created by zarr-python's own ``create_array``, one shard file at a
    time, instead of through zarr-python's per-call machinery.

    The array must be chunked along axis 0 only (every other axis whole), with the codecs zarr-python writes for
    ``shards=..., compressors=BloscCodec(...)``: ``sharding_indexed`` holding ``bytes(little) -> blosc``, index
    ``bytes -> crc32c`` at the end. Each shard file is what the Zarr v3 sharding specification prescribes and
    zarr-python writes: the compressed inner chunks in order, then the index (``offset, nbytes`` u64 LE per
    inner chunk, ``2**64 - 1`` for a chunk that is all fill value and so not stored) and the index's crc32c; a
    shard with no stored chunk is not written; a last, partial chunk is padded with the fill value (0). A test
    checks the files byte for byte against zarr-python's.

    Chunks are compressed in ``pool`` (Blosc releases the GIL), at most ``max_pending`` at a time, and handed in
    order to the single thread ``io`` that writes the files, so the caller never waits on the disk, memory stays
    at a few chunks, and the output does not depend on thread timing. Rows go in with `write` (``(k, *shape[1:])``
    arrays); `close` writes the last shard and returns the number of rows written. Nothing is published until the
    caller's atomic rename (see `atomic_output`).
    """

    def __init__(self, arr, pool: ThreadPoolExecutor, io: ThreadPoolExecutor, max_pending: int = 8):
        meta = arr.metadata
        codecs = getattr(meta, "codecs", ())
        shard_codec = codecs[0] if len(codecs) == 1 else None
        inner = getattr(shard_codec, "codecs", ())
        if not (shard_codec.__class__.__name__ == "ShardingCodec" and len(inner) == 2
                and inner[0].__class__.__name__ == "BytesCodec" and isinstance(inner[1], BloscCodec)
                and [c.__class__.__name__ for c in shard_codec.index_codecs] == ["BytesCodec", "Crc32cCodec"]
                and shard_codec.index_location.value == "end" and float(meta.fill_value) == 0
                and tuple(shard_codec.chunk_shape[1:]) == tuple(meta.shape[1:])
                and tuple(meta.chunk_grid.chunk_shape[1:]) == tuple(meta.shape[1:])
                and isinstance(arr.store_path.store, LocalStore)):
            raise ValueError(f"ShardWriter cannot write {arr.path}: not the sharded Blosc layout it writes "
                             "(in a local directory store)")
        self.arr, self.pool, self.io, self.max_pending = arr, pool, io, max_pending
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self.row_shape = tuple(meta.shape[1:])
        self.chunk_rows = int(shard_codec.chunk_shape[0])
        self.chunks_per_shard = int(meta.chunk_grid.chunk_shape[0]) // self.chunk_rows
        self.blosc = _blosc_of(inner[1], self.dtype.itemsize)
        self.store_root = Path(arr.store_path.store.root) / arr.path
        self.n_rows = 0  # rows accepted
        self._free: list[np.ndarray] = []  # chunk buffers whose compression is done, for reuse
        self._buf = self._new_buffer()
        self._fill = 0
        self._pending: deque = deque()  # (compression future, its buffer), in chunk order
        self._io_pending: deque = deque()  # I/O futures, in order
        self._shard = 0
        self._file: _ShardFile | None = None
        self._pos = 0
        self._index = np.full((self.chunks_per_shard, 2), 2**64 - 1, "<u8")
        self._slot = 0  # next inner-chunk slot of the current shard

    def _new_buffer(self) -> np.ndarray:
        return self._free.pop() if self._free else np.empty((self.chunk_rows, *self.row_shape), self.dtype)

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} written to an array of rows {self.row_shape}")
        i, n = 0, rows.shape[0]
        while i < n:
            take = min(self.chunk_rows - self._fill, n - i)
            self._buf[self._fill : self._fill + take] = rows[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.chunk_rows:
                self._submit()
        self.n_rows += n

    def _submit(self) -> None:
        chunk = self._buf
        if self._fill < self.chunk_rows:
            chunk[self._fill :] = 0  # the fill value pads a boundary chunk, as zarr-python does
        self._fill = 0
        self._pending.append((self.pool.submit(_encode_chunk, self.blosc, chunk), chunk))
        while len(self._pending) > self.max_pending or (self._pending and self._pending[0][0].done()):
            self._collect()
        self._buf = self._new_buffer()

    def _collect(self) -> None:
        """Hand the oldest compressed chunk to the I/O thread (in order) and recycle its buffer."""
        future, buf = self._pending.popleft()
        data = future.result()
        self._free.append(buf)
        if data is not None:
            if self._file is None:
                key = self.arr.metadata.encode_chunk_key((self._shard,) + (0,) * len(self.row_shape))
                self._file = _ShardFile(self.store_root / key)
                self._pos = 0
            self._io(self._file.append, data)
            self._index[self._slot] = (self._pos, len(data))
            self._pos += len(data)
        self._slot += 1
        if self._slot == self.chunks_per_shard:
            self._end_shard()

    def _io(self, fn, *args) -> None:
        self._io_pending.append(self.io.submit(fn, *args))
        while len(self._io_pending) > 4 * self.max_pending or (self._io_pending and self._io_pending[0].done()):
            self._io_pending.popleft().result()  # re-raises a failed write here

    def _end_shard(self) -> None:
        if self._file is not None:
            index = self._index.tobytes()
            self._io(self._file.append, index + np.uint32(google_crc32c.value(index)).astype("<u4").tobytes())
            self._io(self._file.close)
            self._file = None
        self._index = np.full((self.chunks_per_shard, 2), 2**64 - 1, "<u8")
        self._slot = 0
        self._shard += 1

    def close(self) -> int:
        """Write what remains (the partial chunk, the last shard's index); returns the rows written."""
        if self._fill:
            self._submit()
        while self._pending:
            self._collect()
        if self._slot:
            self._end_shard()
        while self._io_pending:
            self._io_pending.popleft().result()
        return self.n_rows

    def abort(self) -> None:
        """Drop queued work and close the open file (after an error; a no-op once closed)."""
        for f, _ in self._pending:
            f.cancel()
        self._pending.clear()
        for f in self._io_pending:
            f.cancel()
        self._io_pending.clear()
        if self._file is not None:
            self.io.submit(self._file.close)
            self._file = None


# ------------------------------------------------------------------------------------------ backends
class _Sink:
    """Minimal writer interface over Zarr v3 / HDF5: growable 1-D columns, small arrays, JSON attributes."""

    def __init__(self, path: Path, fmt: str, chunk: int, shard: int, threads: int | None = None):
        self.fmt, self.chunk, self.shard = fmt, chunk, shard
        if fmt == "zarr":
            self.root = zarr.open_group(path, mode="w-")
        else:
            self.root = h5py.File(path, "w-", libver="latest")  # dense attribute storage: no 64 KiB limit
        self._codec = BloscCodec(**SMALL_CODEC)
        self.threads = threads or default_threads()
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="store")
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-io")  # one: writes stay in order
        self._writers: list[ShardWriter] = []

    def group(self, name: str):
        return self.root.create_group(name)

    def column(self, group, name: str, dtype: str):
        """A streaming column: ``.write(values)`` appends, ``.close()`` finishes it."""
        if self.fmt == "zarr":
            arr = group.create_array(
                name, shape=(0,), dtype=dtype, chunks=(self.chunk,), shards=(self.shard,),
                compressors=BloscCodec(**COLUMN_CODECS[name]),
            )
            writer = ShardWriter(arr, self.pool, self.io, max_pending=2 * self.threads + 2)
            self._writers.append(writer)
            return _ZarrColumn(arr, writer)
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(self.chunk,),
                                  compression="lzf", shuffle=True)
        return _H5Column(ds, self.chunk)

    def array(self, group, name: str, data: np.ndarray) -> None:
        if self.fmt == "zarr":
            group.create_array(name, data=data, chunks=(max(len(data), 1),), compressors=self._codec)
        else:
            group.create_dataset(name, data=data)

    def set_attrs(self, node, attrs: dict) -> None:
        write_attrs(node, self.fmt, attrs)

    def close(self) -> None:
        for w in self._writers:  # a no-op for closed writers; on an error, drops queued chunks and open files
            w.abort()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True)  # every queued write done (or cancelled by abort) before the rename
        if self.fmt == "h5":
            self.root.close()


class _ZarrColumn:
    """A 1-D Zarr column streamed shard by shard (`ShardWriter`); its shape is set when it is closed."""

    def __init__(self, arr, writer: ShardWriter):
        self.arr, self.writer = arr, writer

    def write(self, values: np.ndarray) -> None:
        self.writer.write(values)

    def close(self) -> None:
        n = self.writer.close()
        self.arr.resize((n,))  # growing from (0,) deletes nothing: every shard written stays


class _H5Column:
    """A 1-D HDF5 column written in whole-chunk blocks (no partial-chunk rewrites)."""

    def __init__(self, ds, chunk: int, block_chunks: int = 8):
        self.ds = ds
        self._buf = np.empty(chunk * block_chunks, ds.dtype)
        self._fill = 0

    def write(self, values: np.ndarray) -> None:
        i, n = 0, len(values)
        while i < n:
            take = min(len(self._buf) - self._fill, n - i)
            self._buf[self._fill : self._fill + take] = values[i : i + take]
            self._fill += take
            i += take
            if self._fill == len(self._buf):
                self._flush()

    def _flush(self) -> None:
        n = self.ds.shape[0]
        self.ds.resize((n + self._fill,))
        self.ds[n:] = self._buf[: self._fill]
        self._fill = 0

    def close(self) -> None:
        if self._fill:
            self._flush()


class _SplitWriter:
    """Streams one split's columns to the sink (bounded memory: a few chunks per column, never the split)."""

    def __init__(self, sink: _Sink, name: str):
        self.sink = sink
        self.group = sink.group(name)
        self.cols = {k: sink.column(self.group, k, dt) for k, dt in COLUMNS.items()}
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
        files = list_files(self._atomic.tmp) if self.fmt == "zarr" else None
        self._sink.set_attrs(self._sink.root, {FILES_ATTR: files, "complete": True} if files is not None
                             else {"complete": True})
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


#: Root attribute of a Zarr product (event store, frame cache): ``{relative path: size in bytes}`` of every file
#: written into it except the root ``zarr.json`` (which holds this list). Checked on open (`check_files`).
FILES_ATTR = "files"


def list_files(root: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file under the directory ``root`` except its own ``zarr.json`` (one walk
    and a stat per file: tens to a few thousand files, no data read)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel != "zarr.json":
                out[rel] = os.stat(full).st_size
    return dict(sorted(out.items()))


def check_files(path: Path, attrs: dict) -> dict[str, int] | None:
    """Refuse a Zarr product whose files are not exactly those written (attribute ``files``): a missing file
    (zarr would read it as the fill value, zeros), one of another size, or one that was not written. Returns the
    inventory. Every product of this format version has one; without it nothing could be checked, so it is refused."""
    expected = attrs.get(FILES_ATTR)
    if expected is None:
        raise StoreError(f"{path} has no file inventory (attrs['{FILES_ATTR}']), so a missing chunk file could not be "
                         "detected: rebuild it")
    found = list_files(path)
    problems = [f"{rel} is missing" for rel in expected if rel not in found]
    problems += [f"{rel} has {found[rel]} bytes, {size} when written" for rel, size in expected.items()
                 if rel in found and found[rel] != size]
    problems += [f"{rel} was not written with it" for rel in found if rel not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreError(f"{path} is damaged: " + "; ".join(problems[:3]) + more +
                         f" ({len(expected)} files were written); rebuild it")
    return expected


class _Pin:
    """The version of a product a reader opened: the ``(st_dev, st_ino)`` of its path at open time, and an open
    descriptor on it (which keeps that inode, even once replaced and deleted, from being reused while the reader
    lives). Shard files are opened relative to the descriptor, so a reader never mixes two versions: after a
    re-ingest replaced the store, `check` (and every read of a file the replacement deleted) raises a StoreError
    saying the store changed. Pickling drops the descriptor; the copy reopens the path and refuses another inode."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"{path} does not exist") from None
        st = os.fstat(self._fd)
        self.ident = (st.st_dev, st.st_ino)

    def changed(self) -> StoreError:
        return StoreError(f"{self.path} changed while it was being read (replaced by another write, e.g. a "
                          "concurrent ingest): nothing read after the change was used; run again")

    def check(self) -> None:
        """Raise `changed` unless ``path`` is still the version opened."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self.changed() from None
        if (st.st_dev, st.st_ino) != self.ident:
            raise self.changed()

    def fd(self) -> int:
        if self._fd is None:  # a copy in another process: reopen, and refuse another version
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise self.changed() from None
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.ident:
                os.close(fd)
                raise self.changed()
            self._fd = fd
        return self._fd

    def open_file(self, rel: str) -> int:
        """A descriptor on file ``rel`` of the pinned version (caller closes it); FileNotFoundError if it is gone."""
        return os.open(rel, os.O_RDONLY, dir_fd=self.fd())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


class ShardedColumnReader:
    """Reads rows ``[a, b)`` of a 1-D sharded Zarr v3 column straight from its shard files: one ``pread`` and one
    Blosc decompression per inner chunk, into the destination array (no intermediate copy for whole chunks),
    chunks in parallel in a thread pool (Blosc releases the GIL).

    Only for the layout `ShardWriter` and zarr-python write for the event columns (checked against the column's
    ``zarr.json``; `open` returns None otherwise and the caller reads through zarr-python): ``sharding_indexed``
    with inner ``bytes(little) -> blosc``, index ``bytes -> crc32c`` at the end (verified on first use of each
    shard), default chunk keys ``c/<shard>``, fill value 0. A test checks it against zarr-python.
    Why: zarr-python decodes into its own buffers and copies them out, ~2x the work on the bin stage's reads.

    With ``pin`` (the store's `_Pin`) and ``rel`` (the column's path in the store), shard files are opened relative
    to the store version that was opened; with ``listed`` (the shard files the store's inventory lists, relative
    to the column), a listed shard that is gone is a StoreError (deleted, or the store was replaced), and only
    an unlisted one reads as the fill value (a shard of zeros is not written).
    """

    _MISSING = 2**64 - 1

    def __init__(self, root: Path, n: int, chunk: int, shard: int, dtype: np.dtype, pin: "_Pin | None" = None,
                 rel: str = "", listed: "set[str] | None" = None):
        self.root, self.n, self.chunk, self.shard, self.dtype = root, n, chunk, shard, dtype
        self.pin, self.rel, self.listed = pin, rel, listed
        self.per_shard = shard // chunk
        self._index: dict[int, np.ndarray] = {}
        self._cache: tuple[int, Any] | None = None  # (chunk number, future of its decompressed rows)

    @classmethod
    def open(cls, path: Path, pin: "_Pin | None" = None, rel: str = "",
             listed: "set[str] | None" = None) -> "ShardedColumnReader | None":
        try:
            meta = json.loads((path / "zarr.json").read_text())
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            ok = (codec["name"] == "sharding_indexed" and [c["name"] for c in conf["codecs"]] == ["bytes", "blosc"]
                  and conf["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
                  and conf["index_location"] == "end" and len(meta["shape"]) == 1
                  and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
                  and meta["fill_value"] == 0 and meta["data_type"] in ("uint8", "uint16", "int16", "int32", "int64"))
            shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            chunk = int(conf["chunk_shape"][0])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not ok or chunk <= 0 or shard % chunk:
            return None
        return cls(path, int(meta["shape"][0]), chunk, shard, np.dtype(meta["data_type"]).newbyteorder("<"),
                   pin, rel, listed)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": {}, "_cache": None}

    def _shard_path(self, s: int) -> Path:
        return self.root / "c" / str(s)

    def _open_shard(self, s: int) -> int | None:
        """A descriptor on shard file ``s`` (caller closes it), or None for a shard that was not written."""
        try:
            if self.pin is not None:
                return self.pin.open_file(f"{self.rel}/c/{s}")
            return os.open(self._shard_path(s), os.O_RDONLY)
        except FileNotFoundError:
            if self.listed is None or f"c/{s}" not in self.listed:
                return None  # not written: every chunk in it is the fill value
            if self.pin is not None:
                self.pin.check()  # replaced by another write: say so
            raise StoreError(f"{self._shard_path(s)} is missing (the store lists it): a damaged store; "
                             "rebuild it") from None

    def _shard_index(self, s: int) -> np.ndarray:
        if s not in self._index:
            fd = self._open_shard(s)
            if fd is None:
                self._index[s] = np.full((self.per_shard, 2), self._MISSING, np.uint64)
            else:
                try:
                    size = os.fstat(fd).st_size
                    raw = os.pread(fd, 16 * self.per_shard + 4, max(0, size - (16 * self.per_shard + 4)))
                finally:
                    os.close(fd)
                if len(raw) != 16 * self.per_shard + 4 or \
                        np.uint32(google_crc32c.value(raw[:-4])).astype("<u4").tobytes() != raw[-4:]:
                    raise StoreError(f"{self._shard_path(s)}: shard index checksum mismatch (a damaged store); "
                                     "rebuild it")
                self._index[s] = np.frombuffer(raw[:-4], "<u8").reshape(self.per_shard, 2)
        return self._index[s]

    def _decode_into(self, c: int, dest: np.ndarray) -> np.ndarray:
        """Chunk ``c`` (all ``chunk`` rows, a padded last chunk included) into ``dest``."""
        s, j = divmod(c, self.per_shard)
        offset, nbytes = self._shard_index(s)[j]
        if offset == self._MISSING:
            dest[:] = 0
            return dest
        fd = self._open_shard(s)
        if fd is None:  # the index was read, so the file existed: it went away since
            if self.pin is not None:
                self.pin.check()
            raise StoreError(f"{self._shard_path(s)} disappeared while it was being read")
        try:
            raw = os.pread(fd, int(nbytes), int(offset))
        finally:
            os.close(fd)
        blosc.decompress(raw, dest)
        return dest

    def _decode_new(self, c: int) -> np.ndarray:
        return self._decode_into(c, np.empty(self.chunk, self.dtype))

    def start(self, a: int, b: int, pool: ThreadPoolExecutor) -> "_PendingRead":
        """Begin reading rows ``[a, b)`` in ``pool``; `_PendingRead.result` waits and returns the ``(b - a,)`` array.

        Reads must go forward (each starting where the last ended, as the bin stage reads): the chunk that
        straddles ``b`` is kept and not decompressed twice."""
        if not 0 <= a <= b <= self.n:
            raise IndexError(f"rows {a}:{b} out of range for a column of {self.n}")
        out = np.empty(b - a, self.dtype)
        whole, parts = [], []
        for c in range(a // self.chunk, -(-b // self.chunk)):
            lo, hi = c * self.chunk, (c + 1) * self.chunk
            if a <= lo and hi <= b:
                whole.append(pool.submit(self._decode_into, c, out[lo - a : hi - a]))
                continue
            if self._cache is not None and self._cache[0] == c:
                fut = self._cache[1]
            else:
                fut = pool.submit(self._decode_new, c)
            parts.append((fut, max(a, lo) - lo, min(b, hi) - lo, max(a, lo) - a))
            if hi > b:
                self._cache = (c, fut)
        return _PendingRead(out, whole, parts)


class _PendingRead:
    def __init__(self, out: np.ndarray, whole: list, parts: list):
        self.out, self.whole, self.parts = out, whole, parts

    def result(self) -> np.ndarray:
        for f in self.whole:
            f.result()
        for fut, lo, hi, at in self.parts:
            self.out[at : at + hi - lo] = fut.result()[lo:hi]
        return self.out


class EventSplit:
    """One split of an event store: ``len(split)``, ``split[i] -> (events, label)``.

    ``events`` is a structured array with tonic's field names (x, y, t, p), so tonic transforms apply directly.
    Handles are opened lazily and dropped on pickling, so a split is safe to use in DataLoader workers. Every read
    comes from the version of the store that was opened (`_Pin`), or fails with a StoreError saying it changed.
    """

    def __init__(self, path: Path, fmt: str, name: str, pin: _Pin | None = None,
                 files: dict[str, int] | None = None):
        self.path, self.fmt, self.name = path, fmt, name
        self.pin = pin or _Pin(path)
        self.files = files
        root = self._open_root()
        try:
            g = root[name]
            self.offsets = np.asarray(g["offsets"][:], np.int64)
            self.labels = np.asarray(g["label"][:], np.int64)
            self.recording = np.asarray(g["recording"][:], np.int64)
            self.window_us = np.stack([np.asarray(g["window_start_us"][:]), np.asarray(g["window_end_us"][:])], 1)
            self.attrs = read_attrs(g, fmt)
            lengths = {k: int(g[k].shape[0]) for k in COLUMNS}
        except KeyError as err:
            raise StoreError(f"{path} split {name!r} has no array {err}: a damaged store; rebuild it") from None
        finally:
            if fmt == "h5":
                root.close()
        self.pin.check()  # everything above came from the version pinned
        self._check_shapes(lengths)
        self._group = None

    def _open_root(self):
        root = open_node(self.path, self.fmt)
        try:
            self.pin.check()
        except StoreError:
            if self.fmt == "h5":
                root.close()
            raise
        return root

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
            self._group = self._open_root()[self.name]
        return self._group

    def __len__(self) -> int:
        return len(self.labels)

    def column_readers(self) -> "dict[str, ShardedColumnReader] | None":
        """Direct shard readers for x, y, t, p (Zarr stores in the layout `ShardWriter` writes), else None."""
        if self.fmt != "zarr":
            return None
        readers = {}
        for k in COLUMNS:
            rel = f"{self.name}/{k}"
            listed = None if self.files is None else {f[len(rel) + 1:] for f in self.files if f.startswith(rel + "/")}
            readers[k] = ShardedColumnReader.open(self.path / rel, self.pin, rel, listed)
        if any(r is None or r.n != self.offsets[-1] for r in readers.values()):
            return None
        return readers

    def event_slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Columns x, y, t, p for event rows [start, stop) of the split."""
        g = self._cols()
        out = {k: np.asarray(g[k][start:stop]) for k in COLUMNS}
        if self.fmt == "zarr":  # zarr-python opens files by path: make sure they were the pinned version's
            self.pin.check()
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


class EventStore:
    """An opened event store: ``store.attrs``, ``store.splits``, ``store[split] -> EventSplit``.

    Opening checks the format, the version, the ``complete`` flag and (Zarr) that the files are exactly those
    written (`check_files`); every split then reads the version opened, or fails saying the store changed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fmt = store_format(self.path)
        self.pin = _Pin(self.path)
        root = open_node(self.path, self.fmt)
        try:
            self.attrs = read_attrs(root, self.fmt)
        finally:
            if self.fmt == "h5":
                root.close()
        check_header(self.attrs, self.path, FORMAT, FORMAT_VERSION)
        self.files = check_files(self.path, self.attrs) if self.fmt == "zarr" else None
        self.pin.check()  # the attributes and the files checked are those of the version pinned
        self.sensor_size = SensorSize.of(self.attrs["sensor_size"])
        self.splits: list[str] = list(self.attrs["splits"])
        self.store_id: str = self.attrs["store_id"]
        self._cache: dict[str, EventSplit] = {}

    def __getitem__(self, split: str) -> EventSplit:
        if split not in self.splits:
            raise KeyError(f"{self.path} has no split {split!r}; splits: {self.splits}")
        if split not in self._cache:
            self._cache[split] = EventSplit(self.path, self.fmt, split, self.pin, self.files)
        return self._cache[split]


def open_event_store(path: str | Path) -> EventStore:
    """Open and validate an event store written by `EventStoreWriter`."""
    return EventStore(path)
