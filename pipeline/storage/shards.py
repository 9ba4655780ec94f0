"""Zarr v3 sharded arrays, written fast: the codec settings every product uses, and `ShardWriter`.

Every array a product streams (event columns, frames) is a Zarr v3 array chunked along axis 0 only and sharded
(``sharding_indexed``: inner ``bytes(little) -> blosc``, index ``bytes -> crc32c`` at the end), so a store is tens
of files. `ShardWriter` writes exactly the files zarr-python writes for that layout, compressing in a thread
pool; `pipeline.storage.shard_reader.ShardReader` reads them back the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

__all__ = ["ZSTD_SHUFFLE", "ZSTD_BITSHUFFLE", "Codec", "default_threads", "ShardWriter"]

#: Blosc zstd level 3 with byte shuffle: multi-byte integer columns (x, y, t) and the small per-sample arrays.
ZSTD_SHUFFLE = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}
#: Blosc zstd level 3 with bit shuffle: arrays of small counts (polarity, frames), where most bits are zero
#: (for the polarity 5x smaller and ~10x faster to compress than byte shuffle).
ZSTD_BITSHUFFLE = {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"}


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one array of a product is compressed, in each backend.

    ``blosc``: Zarr's Blosc settings (`ZSTD_SHUFFLE`...), or None for zarr-python's default compressor;
    ``h5``: keyword arguments of h5py's ``create_dataset`` (``{"compression": "lzf", "shuffle": True}``...).
    Every setting reads with plain zarr / h5py."""

    blosc: dict | None = None
    h5: dict = dataclasses.field(default_factory=dict)

    def zarr_compressors(self):
        """The ``compressors`` argument of zarr-python's ``create_array``."""
        return BloscCodec(**self.blosc) if self.blosc is not None else "auto"


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
