"""The storage layer under every product (the event store, `pipeline.store`; the frame caches, `pipeline.frames`;
checkpoints and metrics): the format-agnostic pieces, written once.

    atomic.py        atomic_output, write_atomic, remove_path: a product appears complete or not at all
    base.py          StoreError, stable_hash, the header check (format, version, complete), the Zarr file
                     inventory and its check, Pin (a reader stays on the version it opened)
    backends.py      Backend: Zarr v3 | HDF5 behind one interface (roots, attributes, streamed and small arrays,
                     inventories, the fast reader), so products never branch on the format
    shards.py        the codec settings (Codec, ZSTD_SHUFFLE, ZSTD_BITSHUFFLE) and ShardWriter (sharded Zarr
                     arrays written in a thread pool, byte-identical to zarr-python's)
    shard_reader.py  ShardReader: rows of those arrays read straight from the shard files, index crc32c checked
    product.py       ProductWriter (build atomically, publish once finished) and Product (open, check, pin)

A product knows only its own layout and attributes; this package knows nothing of events or frames.
"""

from pipeline.storage.atomic import atomic_output, remove_path, write_atomic
from pipeline.storage.backends import HDF5, ZARR, Backend, backend_for, store_format
from pipeline.storage.base import FILES_ATTR, Pin, StoreError, check_files, check_header, list_files, stable_hash
from pipeline.storage.product import Product, ProductWriter
from pipeline.storage.shard_reader import ShardReader
from pipeline.storage.shards import ZSTD_BITSHUFFLE, ZSTD_SHUFFLE, Codec, ShardWriter, default_threads

__all__ = [
    "atomic_output", "write_atomic", "remove_path",
    "StoreError", "stable_hash", "FILES_ATTR", "list_files", "check_files", "check_header", "Pin",
    "Backend", "ZARR", "HDF5", "backend_for", "store_format",
    "Codec", "ZSTD_SHUFFLE", "ZSTD_BITSHUFFLE", "default_threads", "ShardWriter", "ShardReader",
    "ProductWriter", "Product",
]
