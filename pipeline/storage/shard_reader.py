"""`ShardReader`: rows of a sharded Zarr v3 array read straight from its shard files, index checksums checked.

One reader for every product: the event store's 1-D columns (ranges of rows, read ahead in a thread pool while
the bin stage bins) and the frame caches' ``(N, T, P, H, W)`` frames (one sample per chunk, read in the
DataLoader). Why not zarr-python: it decodes into its own buffers and copies them out (~2x the work on the bin
stage's reads) and spends ~1.2 ms per call in its async bridge (a sample read here takes ~50 µs).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import blosc

from pipeline.storage.base import Pin, StoreError

__all__ = ["ShardReader"]

#: Data types the reader decodes (little-endian); others are read through zarr-python.
_DTYPES = ("uint8", "uint16", "int16", "int32", "int64", "float32")


class ShardReader:
    """Reads rows of a Zarr v3 array sharded along axis 0 (every other axis whole) straight from its shard files:
    one ``pread`` and one Blosc decompression per inner chunk, into the destination array (no intermediate copy
    for whole chunks), chunks in parallel in a thread pool (Blosc releases the GIL).

    Only for the layout `pipeline.storage.shards.ShardWriter` and zarr-python write (checked against the array's
    ``zarr.json``; `open` returns None otherwise and the caller reads through zarr-python): ``sharding_indexed``
    with inner ``bytes(little) -> blosc``, index (``offset, nbytes`` u64 LE per inner chunk, then its crc32c) at
    the end of each shard file, verified on first use of the shard; default chunk keys ``c/<shard>/0/...``; fill
    value 0. Tests check it against zarr-python.

    With ``pin`` (the product's `Pin`) and ``rel`` (the array's path in the product), shard files are opened
    relative to the version that was opened; with ``listed`` (the shard files the product's inventory lists,
    relative to the array), a listed shard that is gone is a StoreError (deleted, or the product was replaced),
    and only an unlisted one reads as the fill value (a shard of zeros is not written). ``what`` names the
    product in messages ("store", "cache").
    """

    _MISSING = np.uint64(2**64 - 1)

    def __init__(self, root: Path, n: int, chunk: int, shard: int, row_shape: tuple[int, ...], dtype: np.dtype,
                 pin: Pin | None = None, rel: str = "", listed: set[str] | None = None, what: str = "store"):
        self.root, self.n, self.chunk, self.shard, self.dtype = root, n, chunk, shard, dtype
        self.row_shape = tuple(row_shape)
        self.pin, self.rel, self.listed, self.what = pin, rel, listed, what
        self.per_shard = shard // chunk
        self._key_tail = "/0" * len(self.row_shape)  # chunk key c/<shard>/0/...: every other axis is one chunk
        self._index: dict[int, np.ndarray] = {}
        self._cache: tuple[int, Any] | None = None  # (chunk number, future of its decompressed rows)

    @classmethod
    def open(cls, path: Path, pin: Pin | None = None, rel: str = "", listed: set[str] | None = None,
             what: str = "store") -> "ShardReader | None":
        """The reader of the array in directory ``path``, or None where it is not in the layout read here."""
        try:
            meta = json.loads((Path(path) / "zarr.json").read_text())
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            shape = [int(v) for v in meta["shape"]]
            shard_shape = [int(v) for v in meta["chunk_grid"]["configuration"]["chunk_shape"]]
            chunk_shape = [int(v) for v in conf["chunk_shape"]]
            ok = (codec["name"] == "sharding_indexed" and [c["name"] for c in conf["codecs"]] == ["bytes", "blosc"]
                  and conf["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
                  and conf["index_location"] == "end" and len(shape) >= 1
                  and shard_shape[1:] == shape[1:] and chunk_shape[1:] == shape[1:]
                  and meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
                  and meta["fill_value"] == 0 and meta["data_type"] in _DTYPES)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not ok or chunk_shape[0] <= 0 or shard_shape[0] % chunk_shape[0]:
            return None
        return cls(Path(path), shape[0], chunk_shape[0], shard_shape[0], tuple(shape[1:]),
                   np.dtype(meta["data_type"]).newbyteorder("<"), pin, rel, listed, what)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": {}, "_cache": None}

    def _shard_path(self, s: int) -> Path:
        return self.root / f"c/{s}{self._key_tail}"

    def _open_shard(self, s: int) -> int | None:
        """A descriptor on shard file ``s`` (caller closes it), or None for a shard that was not written."""
        key = f"c/{s}{self._key_tail}"
        try:
            if self.pin is not None:
                return self.pin.open_file(f"{self.rel}/{key}")
            return os.open(self._shard_path(s), os.O_RDONLY)
        except FileNotFoundError:
            if self.listed is None or key not in self.listed:
                return None  # not written: every chunk in it is the fill value
            if self.pin is not None:
                self.pin.check()  # replaced by another write: say so
            raise StoreError(f"{self._shard_path(s)} is missing (the {self.what} lists it): a damaged {self.what}; "
                             "rebuild it") from None

    def _shard_index(self, s: int) -> np.ndarray:
        if s not in self._index:
            fd = self._open_shard(s)
            if fd is None:
                self._index[s] = np.full((self.per_shard, 2), self._MISSING, np.uint64)
            else:
                size = 16 * self.per_shard + 4
                try:
                    raw = os.pread(fd, size, max(0, os.fstat(fd).st_size - size))
                finally:
                    os.close(fd)
                if len(raw) != size:
                    raise StoreError(f"{self._shard_path(s)}: shard file too short for its index (a damaged "
                                     f"{self.what}); rebuild it")
                if np.uint32(google_crc32c.value(raw[:-4])).astype("<u4").tobytes() != raw[-4:]:
                    raise StoreError(f"{self._shard_path(s)}: shard index checksum mismatch (a damaged {self.what}); "
                                     "rebuild it")
                self._index[s] = np.frombuffer(raw[:-4], "<u8").reshape(self.per_shard, 2)
        return self._index[s]

    def _chunk_bytes(self, c: int) -> bytes | None:
        """Chunk ``c`` as stored (Blosc-compressed), or None for a chunk that is all fill value (not stored)."""
        s, j = divmod(c, self.per_shard)
        offset, nbytes = self._shard_index(s)[j]
        if offset == self._MISSING:  # an all-zero chunk is not stored: the fill value
            return None
        fd = self._open_shard(s)
        if fd is None:  # the index was read, so the file existed: it went away since
            if self.pin is not None:
                self.pin.check()
            raise StoreError(f"{self._shard_path(s)} disappeared while it was being read")
        try:
            return os.pread(fd, int(nbytes), int(offset))
        finally:
            os.close(fd)

    def _decode_into(self, c: int, dest: np.ndarray) -> np.ndarray:
        """Chunk ``c`` (all ``chunk`` rows, a padded last chunk included) into ``dest``."""
        raw = self._chunk_bytes(c)
        if raw is None:
            dest[:] = 0
        else:
            blosc.decompress(raw, dest)
        return dest

    def _decode_new(self, c: int) -> np.ndarray:
        return self._decode_into(c, np.empty((self.chunk, *self.row_shape), self.dtype))

    def read(self, i: int) -> np.ndarray:
        """Row ``i`` (negative counts from the end), ``row_shape``, read now in this thread: a frame cache's
        sample ``(T, P, H, W)``."""
        if not -self.n <= i < self.n:
            raise IndexError(f"row {i} out of range for an array of {self.n} rows")
        c, j = divmod(int(i) % self.n, self.chunk)
        raw = self._chunk_bytes(c)
        if raw is None:
            return np.zeros(self.row_shape, self.dtype)
        return np.frombuffer(blosc.decompress(raw), self.dtype).reshape(self.chunk, *self.row_shape)[j]

    def start(self, a: int, b: int, pool: ThreadPoolExecutor) -> "_PendingRead":
        """Begin reading rows ``[a, b)`` in ``pool``; `_PendingRead.result` waits and returns them,
        ``(b - a, *row_shape)``.

        Reads must go forward (each starting where the last ended, as the bin stage reads): the chunk that
        straddles ``b`` is kept and not decompressed twice."""
        if not 0 <= a <= b <= self.n:
            raise IndexError(f"rows {a}:{b} out of range for an array of {self.n}")
        out = np.empty((b - a, *self.row_shape), self.dtype)
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
