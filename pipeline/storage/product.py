"""Writing a product atomically and opening one for reading: the two halves every product (event store, frame
cache) is built on.

`ProductWriter` builds a product under its temporary name (`atomic_output`) through its `Backend`, streams its
arrays in a thread pool, and publishes it only once `ProductWriter.finish` wrote the root attributes, the file
inventory (Zarr) and ``complete = True``, in that order. `Product` opens one: it pins the version (`Pin`), reads
the root attributes, and refuses another format, another version, an incomplete product and (Zarr) one whose
files are not exactly those written; every later read comes from the version pinned.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.storage.atomic import atomic_output
from pipeline.storage.backends import Backend, backend_for
from pipeline.storage.base import FILES_ATTR, Pin, StoreError, check_header
from pipeline.storage.shard_reader import ShardReader
from pipeline.storage.shards import Codec, default_threads

__all__ = ["ProductWriter", "Product"]


class ProductWriter:
    """Context manager writing one product at ``path`` atomically.

    >>> with ProductWriter(path, backend) as w:                              # doctest: +SKIP
    ...     col = w.column(w.root, "frames", "int16", codec, chunk_rows=1, shard_rows=64, shape=(n, T, P, H, W))
    ...     col.write(block); col.close()
    ...     w.array(w.root, "label", labels, Codec())
    ...     w.finish({"format": ..., "format_version": ...})

    Leaving the block with an exception, or without `finish`, publishes nothing (and the latter is a StoreError).
    ``pool`` (``threads`` workers, default `default_threads`) compresses the streamed arrays; the caller may use
    it for its own reads. One I/O thread writes the shard files, in order."""

    def __init__(self, path: str | Path, backend: Backend, threads: int | None = None):
        self.path, self.backend = Path(path), backend
        self.threads = threads or default_threads()
        self._finished = False

    def __enter__(self) -> "ProductWriter":
        self._atomic = atomic_output(self.path)
        self.tmp = self._atomic.__enter__()
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="store")
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-io")  # one: writes stay in order
        self._columns: list = []
        try:
            self.root = self.backend.create(self.tmp)
        except BaseException as err:
            self._shutdown()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def group(self, name: str):
        return self.root.create_group(name)

    def column(self, group, name: str, dtype, codec: Codec, *, chunk_rows: int, shard_rows: int,
               shape: tuple[int, ...] | None = None):
        """A streamed array (`Backend.column`): ``.write(rows)``, then ``.close()``."""
        col = self.backend.column(group, name, dtype, codec, chunk_rows=chunk_rows, shard_rows=shard_rows,
                                  pool=self.pool, io=self.io, threads=self.threads, shape=shape)
        self._columns.append(col)
        return col

    def array(self, group, name: str, data: np.ndarray, codec: Codec) -> None:
        self.backend.array(group, name, data, codec)

    def set_attrs(self, node, attrs: dict) -> None:
        self.backend.write_attrs(node, attrs)

    def finish(self, attrs: dict) -> None:
        """Write the root attributes, then the file inventory (Zarr) and ``complete = True``: the last write
        before the product is published."""
        self.set_attrs(self.root, attrs)
        files = self.backend.inventory(self.tmp)
        self.set_attrs(self.root, {FILES_ATTR: files, "complete": True} if files is not None else {"complete": True})
        self._finished = True

    def _shutdown(self) -> None:
        for col in self._columns:  # a no-op for closed columns; on an error, drops queued chunks and open files
            col.abort()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True)  # every queued write done (or cancelled by abort) before the rename

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._shutdown()
        finally:
            self.backend.close(self.root)
        unfinished = exc_type is None and not self._finished
        self._atomic.__exit__(RuntimeError if unfinished else exc_type, exc, tb)
        if unfinished:  # never publish a product whose finish() was not called
            raise StoreError(f"{self.path}: finish() was not called; nothing was written")


class Product:
    """An opened product at ``path``: ``attrs`` (root attributes), ``files`` (Zarr: the inventory checked, else
    None), ``pin`` (the version opened), ``backend``.

    Opening refuses a missing path, one that does not open, another ``format`` than ``expected_format``,
    another ``format_version`` than ``version``, an incomplete product and (Zarr) one whose files are not those
    written. `root`/`open_root` give the root node of the version pinned (or a StoreError saying it changed)."""

    def __init__(self, path: str | Path, expected_format: str, version: int):
        self.path = Path(path)
        self.backend = backend_for(self.path)
        self.pin = Pin(self.path)
        with self.root() as root:
            self.attrs = self.backend.read_attrs(root)
        check_header(self.attrs, self.path, expected_format, version)
        self.files = self.backend.check_inventory(self.path, self.attrs)
        self.pin.check()  # the attributes and the files checked are those of the version pinned

    @property
    def fmt(self) -> str:
        return self.backend.name

    def open_root(self):
        """The root node, open (the caller closes it with ``backend.close``), of the version pinned."""
        root = self.backend.open(self.path)
        try:
            self.pin.check()
        except StoreError:
            self.backend.close(root)
            raise
        return root

    @contextlib.contextmanager
    def root(self) -> Iterator:
        """The root node of the version pinned, closed on exit."""
        root = self.open_root()
        try:
            yield root
        finally:
            self.backend.close(root)

    def after_read(self) -> None:
        """Call after reading through zarr-python (which opens chunk files by path): a StoreError if what was read
        may come from a version that replaced the one pinned."""
        if self.backend.reads_by_path:
            self.pin.check()

    def shard_reader(self, rel: str, what: str = "store") -> ShardReader | None:
        """The fast reader of the array ``rel`` (Zarr, in the layout `ShardWriter` writes), else None."""
        return self.backend.shard_reader(self.path / rel, self.pin, rel, self.files, what)
