"""The image store: every image of a static dataset (CIFAR-10/100, ImageNet, digits_img) as uint8 arrays, by split.
Zarr v3 (default) or HDF5, the third product on `pipeline.storage` (after the event store and the frame caches).

Layout (identical in both backends; readable with plain ``zarr`` / ``h5py``)::

    <images_root>/<dataset>.zarr/  or  <dataset>.h5
        attrs: format="tssd-image-store", format_version, complete, files (Zarr inventory), store_id, dataset,
               classes [names], image_shape [C, H, W], splits ["train", "val", "test"] (no "val" when
               ingest.val = 0), validation {size, rule, per_class, n}, sources [{name, size, md5 | sha256, ...}],
               mean [C], std [C] (of the train split, pixel values scaled to 0..1), counts {split: n},
               extra_arrays [names], reader_version, and what the dataset adds (coarse_classes, decode, ...)
        <split>/
            images u1 (N, C, H, W)    chunks of `chunk_rows` images along N; Zarr shards of 64 chunks
            label i8 (N)              class index into attrs["classes"]
            source_index i8 (N)       the image's index in its raw set (attrs["source_set"]: the release's train
                                      or test images, in the release's order)
            <extra> i8 (N)            per-sample arrays a dataset adds (cifar100: coarse_label)
            attrs: n_samples, source_set, extra_arrays, and what the dataset adds

``store_id`` is the sha256 of the content: the dataset name, the classes, the image shape, and for every split its
name and the bytes of every array (images, labels, source indices, extras), so the same images in Zarr or HDF5 have
the same id and a frame of another content never does. ``mean``/``std`` are computed from the train split's
bytes while they are written (float64 sums).

Writes are atomic (`pipeline.storage.ProductWriter`: built under ``<path>.tmp-<pid>``, swapped in once
``complete``); opening (`open_image_store`) refuses another format or version, an incomplete store, (Zarr) one
whose files are not exactly those written, and a split whose arrays disagree with each other or with the
attributes, naming the path, the split and the array. Reads come from the version opened (`pipeline.storage.Pin`).

Reading for training: ``split.load()`` reads the whole split once into memory (Zarr: straight from the shard
files, chunks decompressed in parallel, `pipeline.storage.ShardReader`); after it ``split.images(a, b)`` is a
slice of that array (no copy), so a batch of contiguous indices costs nothing. Without ``load()``,
``images(a, b)`` reads rows ``a..b`` from disk.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.storage import (
    ZSTD_SHUFFLE,
    Codec,
    Product,
    ProductWriter,
    StoreError,
    backend_for,
    default_threads,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "IMAGES_CODEC", "StoreError", "ImageStoreWriter", "ImageStore", "ImageSplit",
           "open_image_store", "chunk_rows_for"]

FORMAT = "tssd-image-store"
FORMAT_VERSION = 1
#: Images: Blosc zstd level 1, no shuffle (uint8: shuffling one-byte items is a no-op) in Zarr; lzf in HDF5. Natural
#: images compress little (CIFAR ~0.9x); level 1 keeps the one-time read of a split fast.
IMAGES_CODEC = Codec({"cname": "zstd", "clevel": 1, "shuffle": "noshuffle"}, {"compression": "lzf"})
_SMALL = Codec(ZSTD_SHUFFLE)
#: Per-sample integer arrays every split holds; `ImageStoreWriter.split` takes more (``extras``).
BASE_ARRAYS = ("label", "source_index")
_CHUNK_BYTES = 1 << 20  # ~1 MiB of images per compressed chunk (CIFAR: 341 images)
_CHUNKS_PER_SHARD = 64


def chunk_rows_for(image_shape: tuple[int, int, int]) -> int:
    """Images per compressed chunk: ~1 MiB of pixels, at least one image."""
    return max(1, _CHUNK_BYTES // int(np.prod(image_shape)))


# ------------------------------------------------------------------------------------------ writing
class _SplitWriter:
    """One split being written: its per-sample arrays are given up front, its images streamed in order."""

    def __init__(self, owner: "ImageStoreWriter", name: str, labels: np.ndarray, source_index: np.ndarray,
                 extras: dict[str, np.ndarray], attrs: dict):
        sink, shape = owner._sink, owner.image_shape
        self.owner, self.name = owner, name
        self.n = len(labels)
        self.arrays = {"label": np.ascontiguousarray(labels, "<i8"),
                       "source_index": np.ascontiguousarray(source_index, "<i8"),
                       **{k: np.ascontiguousarray(v, "<i8") for k, v in extras.items()}}
        for k, v in self.arrays.items():
            if v.shape != (self.n,):
                raise ValueError(f"split {name!r}: array {k!r} has shape {v.shape}, expected ({self.n},)")
        self.attrs = attrs
        self.group = sink.group(name)
        chunk = min(chunk_rows_for(shape), max(self.n, 1))  # HDF5: a chunk no larger than the array
        self.images = sink.column(self.group, "images", np.uint8, IMAGES_CODEC, chunk_rows=chunk,
                                  shard_rows=chunk * _CHUNKS_PER_SHARD, shape=(self.n, *shape))
        self.written = 0
        self.hash = hashlib.sha256()
        c = shape[0]
        self.sums = np.zeros(c, np.float64)
        self.squares = np.zeros(c, np.float64)

    def write(self, block: np.ndarray) -> None:
        """Append images ``uint8 (k, C, H, W)`` (in the split's order)."""
        block = np.ascontiguousarray(block)
        if block.dtype != np.uint8 or block.shape[1:] != self.owner.image_shape:
            raise ValueError(f"split {self.name!r}: images must be uint8 (k, {', '.join(map(str, self.owner.image_shape))}), "
                             f"got {block.dtype} {block.shape}")
        if self.written + len(block) > self.n:
            raise ValueError(f"split {self.name!r}: more than its {self.n} images written")
        self.images.write(block)
        self.hash.update(block.data)
        if len(block):
            self.sums += block.sum(axis=(0, 2, 3), dtype=np.uint64).astype(np.float64)
            sq = block.astype(np.uint16)
            sq *= sq
            self.squares += sq.sum(axis=(0, 2, 3), dtype=np.uint64).astype(np.float64)
        self.written += len(block)

    def finish(self) -> None:
        if self.written != self.n:
            raise ValueError(f"split {self.name!r}: {self.written} images written, its labels say {self.n}")
        self.images.close()
        sink = self.owner._sink
        for k, v in self.arrays.items():
            sink.array(self.group, k, v, _SMALL)
            self.hash.update(k.encode())
            self.hash.update(v.data)
        extras = [k for k in self.arrays if k not in BASE_ARRAYS]
        sink.set_attrs(self.group, {**self.attrs, "n_samples": self.n, "extra_arrays": extras})


class ImageStoreWriter:
    """Write an image store atomically.

    >>> with ImageStoreWriter(path, "cifar10", classes, (3, 32, 32), "zarr") as w:      # doctest: +SKIP
    ...     s = w.split("train", labels, source_index, extras={}, attrs={"source_set": "train"})
    ...     s.write(images_block)  # uint8 (k, 3, 32, 32), in order, until every image of the split is written
    ...     w.finish_split("train")
    ...     w.finish({"sources": [...], "validation": {...}})   # store_id, mean, std, counts added here

    Splits are written one after the other. ``mean``/``std`` come from the split named ``"train"`` (a store without
    one records none). Leaving the block with an exception, or before `finish`, publishes nothing.
    """

    def __init__(self, path: str | Path, dataset: str, classes: list[str] | tuple[str, ...],
                 image_shape: tuple[int, int, int], fmt: str | None = None, threads: int | None = None):
        self.path = Path(path)
        self.backend = backend_for(path, fmt)
        if backend_for(path) is not self.backend:
            raise StoreError(f"{path}: a {self.backend.name} store needs a {self.backend.suffix} path "
                             "(readers choose the backend by suffix)")
        if len(image_shape) != 3 or min(image_shape) <= 0:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        self.dataset, self.classes = dataset, [str(c) for c in classes]
        self.image_shape = tuple(int(v) for v in image_shape)
        self.threads = threads
        self._done: dict[str, _SplitWriter] = {}
        self._open: _SplitWriter | None = None

    def __enter__(self) -> "ImageStoreWriter":
        self._sink = ProductWriter(self.path, self.backend, self.threads).__enter__()
        return self

    def split(self, name: str, labels: np.ndarray, source_index: np.ndarray,
              extras: dict[str, np.ndarray] | None = None, attrs: dict | None = None) -> _SplitWriter:
        """Start split ``name``: its labels (int, ``[N]``, in ``0..len(classes)-1``), source indices and extra
        per-sample int arrays (``[N]`` each); then `_SplitWriter.write` its N images in the same order."""
        if self._open is not None:
            raise ValueError(f"split {self._open.name!r} is still open: finish_split it first")
        if name in self._done:
            raise ValueError(f"split {name!r} written twice")
        extras = dict(extras or {})
        if clash := set(extras) & {"images", *BASE_ARRAYS}:
            raise ValueError(f"extra arrays may not be named {sorted(clash)}")
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"split {name!r}: labels outside 0..{len(self.classes) - 1}")
        self._open = _SplitWriter(self, name, labels, np.asarray(source_index), extras, dict(attrs or {}))
        return self._open

    def finish_split(self, name: str) -> None:
        if self._open is None or self._open.name != name:
            raise ValueError(f"split {name!r} is not the one open")
        self._open.finish()
        self._done[name], self._open = self._open, None

    def finish(self, attrs: dict) -> dict:
        """Write the root attributes (``attrs`` plus format, version, dataset, classes, image_shape, splits,
        counts, store_id, mean, std) and mark the store complete. Returns the root attributes written."""
        if self._open is not None:
            raise ValueError(f"split {self._open.name!r} was not finished")
        ident = hashlib.sha256()
        header = {"dataset": self.dataset, "classes": self.classes, "image_shape": list(self.image_shape),
                  "splits": list(self._done), "format_version": FORMAT_VERSION}
        ident.update(repr(sorted(header.items())).encode())
        for name, s in self._done.items():
            ident.update(name.encode())
            ident.update(s.hash.digest())
        mean = std = None
        if "train" in self._done and self._done["train"].n:
            t = self._done["train"]
            count = t.n * self.image_shape[1] * self.image_shape[2]
            m = t.sums / count
            mean = (m / 255.0).tolist()
            std = (np.sqrt(np.maximum(t.squares / count - m * m, 0.0)) / 255.0).tolist()
        extras = sorted({k for s in self._done.values() for k in s.arrays if k not in BASE_ARRAYS})
        out = {**attrs, **header, "format": FORMAT, "store_id": ident.hexdigest(), "mean": mean, "std": std,
               "counts": {name: s.n for name, s in self._done.items()}, "extra_arrays": extras}
        self._sink.finish(out)
        return out

    def __exit__(self, exc_type, exc, tb) -> None:
        self._sink.__exit__(exc_type, exc, tb)


# ------------------------------------------------------------------------------------------ reading
class ImageSplit:
    """One split: ``len(split)``, ``labels`` int64 [N], ``source_index`` int64 [N], ``extras`` {name: int64 [N]}
    (also as attributes, e.g. ``split.coarse_label``), ``attrs``; ``images(a, b)`` uint8 [b - a, C, H, W],
    ``load()`` every image.

    Reads come from the version of the store that was opened (or fail with a StoreError saying it changed); handles
    are dropped on pickling (safe in DataLoader workers; the resident array of `load` travels with it)."""

    def __init__(self, store: "ImageStore", name: str):
        self.store, self.name, self.path = store, name, store.path
        with store.root() as root:
            if name not in root:
                raise StoreError(f"{self.path} has no group for split {name!r} (attrs list it): a damaged image "
                                 "store; rebuild it")
            g = root[name]
            self.attrs = store.backend.read_attrs(g)
            wanted = ("images", *BASE_ARRAYS, *self.attrs.get("extra_arrays", []))
            if missing := [k for k in wanted if k not in g]:
                raise StoreError(f"{self.path} split {name!r} has no array {missing[0]!r}: a damaged image store; "
                                 "rebuild it")
            arrays = {k: np.asarray(g[k][:]) for k in wanted[1:]}
            self.shape = tuple(int(v) for v in g["images"].shape)
            dtype = str(g["images"].dtype)
        store.pin.check()
        self._check(arrays, dtype)
        self.labels = arrays.pop("label").astype(np.int64)
        self.source_index = arrays.pop("source_index").astype(np.int64)
        self.extras = {k: v.astype(np.int64) for k, v in arrays.items()}
        self._reader = store.shard_reader(f"{name}/images", what="image store")
        self._pool: ThreadPoolExecutor | None = None
        self._resident: np.ndarray | None = None

    def _check(self, arrays: dict[str, np.ndarray], dtype: str) -> None:
        n = self.shape[0] if self.shape else -1
        problems = []
        if dtype != "uint8" or self.shape[1:] != tuple(self.store.image_shape):
            problems.append(f"array 'images' is {dtype} {self.shape}, the attributes say uint8 (N, "
                            f"{', '.join(map(str, self.store.image_shape))})")
        for k, v in arrays.items():
            if v.shape != (n,) or v.dtype.kind not in "iu":
                problems.append(f"array {k!r} is {v.dtype} {v.shape}, expected {n} integers (one per image)")
        if self.attrs.get("n_samples") != n:
            problems.append(f"attrs say n_samples = {self.attrs.get('n_samples')!r}, array 'images' holds {n}")
        lab = arrays.get("label")
        n_classes = len(self.store.attrs["classes"])
        if lab is not None and lab.size and lab.shape == (n,) and (lab.min() < 0 or lab.max() >= n_classes):
            problems.append(f"array 'label' holds values outside 0..{n_classes - 1}")
        if problems:
            raise StoreError(f"{self.path} split {self.name!r} is inconsistent: " + "; ".join(problems) + "; rebuild it")

    def __getattr__(self, name: str):
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, a: int, b: int) -> np.ndarray:
        try:
            if self._reader is not None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="images")
                return self._reader.start(a, b, self._pool).result()
            with self.store.root() as root:
                out = np.ascontiguousarray(root[self.name]["images"][a:b])
            self.store.after_read()
            return out
        except StoreError:
            raise
        except Exception as err:  # a damaged chunk: Blosc / zarr / h5py raise many types
            raise StoreError(f"{self.path} split {self.name!r} array 'images' rows {a}:{b} cannot be read "
                             f"({type(err).__name__}: {err}): a damaged image store; rebuild it") from err

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images ``start..stop`` (Python slice bounds, clipped), uint8 ``(n, C, H, W)``, C-contiguous. After
        `load`, a view of the resident array (do not write into it); before, read from disk."""
        a, b, _ = slice(start, stop).indices(len(self))
        b = max(a, b)
        if self._resident is not None:
            return self._resident[a:b]
        return self._read(a, b)

    def load(self) -> np.ndarray:
        """Every image of the split, uint8 ``(N, C, H, W)``, read once and kept (later `images` calls slice it)."""
        if self._resident is None:
            self._resident = self._read(0, len(self))
        return self._resident

    @property
    def loaded(self) -> bool:
        return self._resident is not None


class ImageStore(Product):
    """An opened image store: ``attrs``, ``splits``, ``store_id``, ``image_shape`` (C, H, W), ``classes``,
    ``store[split] -> ImageSplit``."""

    def __init__(self, path: str | Path):
        super().__init__(path, FORMAT, FORMAT_VERSION)
        try:
            self.splits: list[str] = list(self.attrs["splits"])
            self.store_id: str = self.attrs["store_id"]
            self.image_shape: tuple[int, int, int] = tuple(int(v) for v in self.attrs["image_shape"])
            self.classes: list[str] = list(self.attrs["classes"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{self.path}: root attributes lack or mangle {err}: a damaged image store; "
                             "rebuild it") from None
        if len(self.image_shape) != 3:
            raise StoreError(f"{self.path}: attrs image_shape = {self.attrs['image_shape']}, expected [C, H, W]")
        self._cache: dict[str, ImageSplit] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def __getitem__(self, split: str) -> ImageSplit:
        if split not in self.splits:
            raise KeyError(f"{self.path} has no split {split!r}; splits: {self.splits}")
        if split not in self._cache:
            self._cache[split] = ImageSplit(self, split)
        return self._cache[split]

    @property
    def mean(self) -> list[float] | None:
        return self.attrs.get("mean")

    @property
    def std(self) -> list[float] | None:
        return self.attrs.get("std")


def open_image_store(path: str | Path) -> ImageStore:
    """Open and validate an image store written by `ImageStoreWriter` (a StoreError naming what is wrong)."""
    return ImageStore(path)
