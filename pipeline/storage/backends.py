"""The two on-disk backends of every product, Zarr v3 (a directory) and HDF5 (one file), behind one interface.

A `Backend` holds everything that differs between them, so the products (`pipeline.store`, `pipeline.frames`)
never branch on the format: creating and opening the root, attributes (JSON in Zarr; JSON *strings* in HDF5),
streamed arrays (`column`: Zarr shards written by `ShardWriter`; HDF5 chunked datasets), small arrays, the file
inventory (Zarr only: HDF5 records its own end of file and refuses a truncated one), whether zarr-python reads
chunk files by path (so a reader must re-check its pin after a read), and the fast `ShardReader` (Zarr only).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import json
import numpy as np
import zarr

from pipeline.config import FORMATS
from pipeline.storage.base import Pin, StoreError, check_files, list_files
from pipeline.storage.shard_reader import ShardReader
from pipeline.storage.shards import Codec, ShardWriter

__all__ = ["Backend", "ZARR", "HDF5", "backend_for", "store_format"]


class Backend:
    """The interface; `ZARR` and `HDF5` are the two instances."""

    name: str
    suffix: str
    #: zarr-python opens chunk files by path, so what it reads may be of a version that replaced the one opened:
    #: a reader re-checks its `Pin` after such reads. An open HDF5 handle keeps the version it opened.
    reads_by_path: bool

    def create(self, path: Path):
        """A new, empty root at ``path`` (which must not exist)."""
        raise NotImplementedError

    def _open(self, path: Path):
        raise NotImplementedError

    def open(self, path: Path):
        """The root at ``path`` for reading; a StoreError naming the file when it is missing or cannot be opened."""
        if not path.exists():
            raise StoreError(f"{path} does not exist")
        try:
            return self._open(path)
        except Exception as err:  # zarr/h5py raise many types for a damaged store; name the file, keep the cause
            raise StoreError(f"{path} cannot be opened as a {self.name} store: {err}") from err

    def close(self, root) -> None:
        """Release the root's handle (a no-op for Zarr)."""

    def read_attrs(self, node) -> dict:
        raise NotImplementedError

    def write_attrs(self, node, attrs: dict) -> None:
        raise NotImplementedError

    def inventory(self, path: Path) -> dict[str, int] | None:
        """What to record of the files written under ``path`` (`list_files`), or None where none is needed."""
        return None

    def check_inventory(self, path: Path, attrs: dict) -> dict[str, int] | None:
        """Refuse a product whose files are not those recorded (`check_files`); returns the inventory."""
        return None

    def column(self, group, name: str, dtype, codec: Codec, *, chunk_rows: int, shard_rows: int,
               pool: ThreadPoolExecutor, io: ThreadPoolExecutor, threads: int, shape: tuple[int, ...] | None = None):
        """A streamed array written row block by row block: ``.write(rows)``, ``.close()``, ``.abort()``.

        ``shape=None``: a 1-D column whose length is what was written (the event columns); else the array's full
        shape (the frames), rows written in order. Chunks of ``chunk_rows`` rows along axis 0, every other axis
        whole; Zarr shards of ``shard_rows`` rows, compressed in ``pool`` and written in order by ``io``."""
        raise NotImplementedError

    def array(self, group, name: str, data: np.ndarray, codec: Codec) -> None:
        """A small array written at once (one chunk)."""
        raise NotImplementedError

    def shard_reader(self, path: Path, pin: Pin | None, rel: str, files: dict[str, int] | None,
                     what: str) -> ShardReader | None:
        """The fast reader of the array at ``path`` (``rel`` inside the product), or None: read it through the
        library. ``files``: the product's inventory (a listed shard that is gone is an error)."""
        return None


class _Zarr(Backend):
    name, suffix, reads_by_path = "zarr", ".zarr", True

    def create(self, path: Path):
        return zarr.open_group(path, mode="w-")

    def _open(self, path: Path):
        return zarr.open_group(path, mode="r")

    def read_attrs(self, node) -> dict:
        return dict(node.attrs)

    def write_attrs(self, node, attrs: dict) -> None:
        for k, v in attrs.items():
            node.attrs[k] = v

    def inventory(self, path: Path) -> dict[str, int]:
        return list_files(path)

    def check_inventory(self, path: Path, attrs: dict) -> dict[str, int] | None:
        return check_files(path, attrs)

    def column(self, group, name, dtype, codec, *, chunk_rows, shard_rows, pool, io, threads, shape=None):
        full = shape if shape is not None else (0,)
        arr = group.create_array(name, shape=full, dtype=dtype, chunks=(chunk_rows, *full[1:]),
                                 shards=(shard_rows, *full[1:]), compressors=codec.zarr_compressors())
        return _ZarrColumn(arr, ShardWriter(arr, pool, io, max_pending=2 * threads + 2), grows=shape is None)

    def array(self, group, name, data, codec) -> None:
        group.create_array(name, data=data, chunks=(max(len(data), 1),), compressors=codec.zarr_compressors())

    def shard_reader(self, path, pin, rel, files, what):
        listed = None if files is None else {f[len(rel) + 1:] for f in files if f.startswith(rel + "/")}
        return ShardReader.open(path, pin, rel, listed, what)


class _HDF5(Backend):
    name, suffix, reads_by_path = "h5", ".h5", False

    def create(self, path: Path):
        return h5py.File(path, "w-", libver="latest")  # dense attribute storage: no 64 KiB limit

    def _open(self, path: Path):
        return h5py.File(path, "r")

    def close(self, root) -> None:
        root.close()

    def read_attrs(self, node) -> dict:
        return {k: json.loads(v) for k, v in node.attrs.items()}

    def write_attrs(self, node, attrs: dict) -> None:
        for k, v in attrs.items():
            node.attrs[k] = json.dumps(v)

    def column(self, group, name, dtype, codec, *, chunk_rows, shard_rows, pool, io, threads, shape=None):
        if shape is None:
            ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk_rows,),
                                      **codec.h5)
            return _H5Column(ds, chunk_rows)
        ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=(chunk_rows, *shape[1:]) if shape[0] else None,
                                  **codec.h5)
        return _H5Rows(ds)

    def array(self, group, name, data, codec) -> None:
        group.create_dataset(name, data=data, **codec.h5)


ZARR, HDF5 = _Zarr(), _HDF5()


def store_format(path: str | Path, fmt: str | None = None) -> str:
    """'zarr' or 'h5', from ``fmt`` or the path's suffix."""
    fmt = fmt or ("h5" if Path(path).suffix in (".h5", ".hdf5") else "zarr")
    if fmt not in FORMATS:
        raise ValueError(f"unknown store format {fmt!r}; choose {' or '.join(map(repr, FORMATS))}")
    return fmt


def backend_for(path: str | Path, fmt: str | None = None) -> Backend:
    """The backend of ``fmt`` ('zarr' | 'h5'), or of the path's suffix (``.h5``/``.hdf5``: HDF5, else Zarr)."""
    return ZARR if store_format(path, fmt) == "zarr" else HDF5


class _ZarrColumn:
    """A Zarr array streamed shard by shard (`ShardWriter`); a growing column's shape is set when it is closed."""

    def __init__(self, arr, writer: ShardWriter, grows: bool):
        self.arr, self.writer, self.grows = arr, writer, grows

    def write(self, rows: np.ndarray) -> None:
        self.writer.write(rows)

    def close(self) -> None:
        n = self.writer.close()
        if self.grows:
            self.arr.resize((n,))  # growing from (0,) deletes nothing: every shard written stays
        elif n != self.arr.shape[0]:
            raise ValueError(f"{self.arr.path}: {n} rows written to an array of {self.arr.shape[0]}")

    def abort(self) -> None:
        self.writer.abort()


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

    def abort(self) -> None:
        """Nothing queued: every write went to the file already."""


class _H5Rows:
    """An HDF5 dataset of known shape written row block by row block, in order."""

    def __init__(self, ds):
        self.ds, self._pos = ds, 0

    def write(self, rows: np.ndarray) -> None:
        self.ds[self._pos : self._pos + len(rows)] = rows
        self._pos += len(rows)

    def close(self) -> None:
        if self._pos != self.ds.shape[0]:
            raise ValueError(f"{self.ds.name}: {self._pos} rows written to a dataset of {self.ds.shape[0]}")

    def abort(self) -> None:
        """Nothing queued."""
