"""Frame caches: one per (dataset, split, binning parameters), built atomically, validated on open.

Layout (a public contract; readable with plain ``zarr`` or ``h5py``)::

    <frames_root>/<dataset>/<split>-T<T>-<by>-<H>x<W>-<semantics>-<dtype>-<key>.zarr   (or .h5)
        frames (N, T, P, H, W)   one sample per chunk; Zarr shards of `SHARD_SAMPLES` samples
        label i2 (N), recording i4 (N), window_start_us i8 (N), window_end_us i8 (N)   (from the event store)
        attrs: format = "tssd-frame-cache", format_version, complete, key, dataset, split, classes,
               sensor_size [W, H, P] of the frames, binning {T, by, semantics, out_size, dtype, overlap},
               source {store_id, path, split}, saturated (total increments lost to dtype saturation),
               saturated_samples, files {relative path: bytes} (Zarr: every file written but the root zarr.json)

``key`` is the sha256 (first 16 hex digits) of every input that changes the bytes: the binning parameters, the
source store's ``store_id``, the split and the format version; it is part of the file name, so a change of any
parameter or of the source reads a different cache and never a stale one. As in the event store, HDF5
attribute values are JSON strings. Opening (`FrameCache`) also refuses a Zarr cache whose files are not exactly
those written (``files``) and a cache whose arrays disagree with its attributes (``frames`` must be
``(N, binning.T, P, H, W)`` with ``N`` labels and ``sensor_size`` ``[W, H, P]``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.binning import DTYPE_NAMES, SEMANTICS, bin_batch
from pipeline.config import FORMATS, ConfigError, check_choice
from pipeline.events import SensorSize
from pipeline.storage import (
    ZSTD_BITSHUFFLE,
    Codec,
    Product,
    ProductWriter,
    StoreError,
    backend_for,
    stable_hash,
)
from pipeline.store import EventSplit, open_event_store

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BY",
    "Binning",
    "BinConfig",
    "Timesteps",
    "FrameCache",
    "cache_path",
    "build_frame_cache",
    "open_frame_cache",
    "ensure_frame_cache",
]

FORMAT = "tssd-frame-cache"
FORMAT_VERSION = 2  # 2: the file inventory (attrs['files']) that opening checks
SHARD_SAMPLES = 64
#: The frames: bit-shuffled zstd in Zarr (counts are small: most bits are zero), lzf in HDF5; the per-sample arrays
#: with each library's default (zarr-python's zstd; HDF5 uncompressed).
FRAMES_CODEC = Codec(ZSTD_BITSHUFFLE, {"compression": "lzf"})
_SMALL = Codec()
#: What ``T`` counts frames along (`Binning.by`): the `pipeline.binning` slicing argument each choice becomes.
BY = {"time": "n_time_bins", "count": "n_event_bins"}


@dataclasses.dataclass(frozen=True)
class Binning:
    """Every parameter that shapes a frame cache's bytes.

    ``by='time'`` bins into ``T`` frames along time (``n_time_bins``), ``by='count'`` along the event index
    (``n_event_bins``); ``semantics`` is ``exact`` (lossless), ``tonic`` or ``spikingjelly`` (see
    `pipeline.binning`); ``out_size=(H', W')`` downsamples while binning.
    """

    T: int
    by: str = "time"
    semantics: str = "exact"
    out_size: tuple[int, int] | None = None
    dtype: str = "int16"
    overlap: float = 0.0

    def __post_init__(self) -> None:
        if self.T <= 0:
            raise ValueError(f"T must be positive, got {self.T}")
        for name, options in (("by", BY), ("semantics", SEMANTICS), ("dtype", DTYPE_NAMES)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(options)}")
        if self.out_size is not None:
            object.__setattr__(self, "out_size", tuple(int(v) for v in self.out_size))

    @classmethod
    def from_config(cls, cfg: BinConfig, T: int) -> Binning:
        """The binning of the ``bin:`` section ``cfg`` at ``T`` frames."""
        return cls(T=T, by=cfg.by, semantics=cfg.semantics, out_size=cfg.out_size, dtype=cfg.dtype)

    def kwargs(self) -> dict:
        """Keyword arguments for `pipeline.binning.bin_batch` / `to_frames`."""
        return {BY[self.by]: self.T, "semantics": self.semantics, "out_size": self.out_size,
                "dtype": np.dtype(self.dtype), "overlap": self.overlap}

    def frame_sensor(self, sensor: SensorSize) -> SensorSize:
        """Sensor size of the frames: ``out_size`` replaces (W, H)."""
        if self.out_size is None:
            return sensor
        return SensorSize(self.out_size[1], self.out_size[0], sensor.polarities)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["out_size"] = list(self.out_size) if self.out_size else None
        return d


@dataclasses.dataclass(frozen=True)
class BinConfig:
    """The ``bin:`` section: the frame caches `pipeline.bin` builds -- one `Binning` per frame count in ``T``
    (`Binning.from_config`), all stored in ``format``. The choices are `Binning`'s (`BY`,
    `pipeline.binning.SEMANTICS`, `pipeline.binning.DTYPE_NAMES`) and `pipeline.config.FORMATS`."""

    T: tuple[int, ...] = (8, 16)
    by: str = "time"  # time | count
    semantics: str = "exact"  # exact (lossless) | tonic | spikingjelly
    out_size: tuple[int, int] | None = None  # (H, W) to downsample to while binning
    dtype: str = "int16"  # int16 | uint8 (saturating, counted) | float32
    format: str = "zarr"  # zarr | h5

    def __post_init__(self) -> None:
        check_choice("bin.by", self.by, BY)
        check_choice("bin.semantics", self.semantics, SEMANTICS)
        check_choice("bin.dtype", self.dtype, DTYPE_NAMES)
        check_choice("bin.format", self.format, FORMATS)
        if any(t <= 0 for t in self.T):
            raise ConfigError(f"bin.T = {list(self.T)}: every frame count must be >= 1")
        if self.out_size is not None and min(self.out_size) <= 0:
            raise ConfigError(f"bin.out_size = {list(self.out_size)}: H and W must be >= 1")


@dataclasses.dataclass(frozen=True)
class Timesteps:
    """The ``train:`` keys that choose the frame caches a training run reads: the student's ``T_s`` (the
    deployed network's inference cost) and the teacher's ``T_t`` (None: ``2 * T_s``).

    `pipeline.runs.TrainConfig` (the whole ``train:`` section) extends it; `pipeline.bin --for-training` loads
    only these keys, so building the caches depends on them and on no training code."""

    T_s: int = 2  # student timesteps (inference cost)
    T_t: int | None = 4  # teacher timesteps; null = 2 * T_s

    def __post_init__(self) -> None:
        if self.T_s <= 0 or (self.T_t is not None and self.T_t <= 0):
            raise ConfigError(f"train.T_s = {self.T_s} and train.T_t = {self.T_t} must be positive")
        if self.teacher_T <= self.T_s:
            raise ConfigError(f"train.T_t = {self.teacher_T} must exceed train.T_s = {self.T_s}: the teacher is the "
                              "same network run for more timesteps (set both, or T_t: null for 2 * T_s)")

    @property
    def teacher_T(self) -> int:
        """T_t: the teacher's timesteps (2 * T_s unless set)."""
        return self.T_t if self.T_t is not None else 2 * self.T_s

    @property
    def frame_counts(self) -> tuple[int, ...]:
        """The frame counts of the caches a run reads: ``(T_s, T_t)``, ascending."""
        return tuple(sorted({self.T_s, self.teacher_T}))


def _key(binning: Binning, store_id: str, split: str, sensor: SensorSize) -> str:
    return stable_hash({"binning": binning.as_dict(), "store_id": store_id, "split": split,
                        "sensor_size": list(sensor), "format_version": FORMAT_VERSION})[:16]


def cache_path(frames_root: str | Path, dataset: str, split: str, binning: Binning, store_id: str,
               sensor: SensorSize, fmt: str = "zarr") -> Path:
    """Where the cache for these inputs lives; the name carries the key of every input."""
    s = binning.frame_sensor(sensor)
    name = (f"{split}-T{binning.T}-{binning.by}-{s.height}x{s.width}-{binning.semantics}-{binning.dtype}"
            f"-{_key(binning, store_id, split, sensor)}")
    return Path(frames_root) / dataset / f"{name}.{'zarr' if fmt == 'zarr' else 'h5'}"


#: Events per bin block (about 13 bytes each in memory; two blocks are in flight while reading ahead).
BLOCK_EVENTS = 1 << 22


def _blocks(offsets: np.ndarray, max_samples: int, max_events: int) -> list[tuple[int, int]]:
    """Consecutive sample ranges ``[a, b)`` of at most ``max_samples`` samples and, unless one sample alone is
    larger, ``max_events`` events."""
    n = len(offsets) - 1
    out, a = [], 0
    while a < n:
        b = a + 1
        while b < n and b - a < max_samples and offsets[b + 1] - offsets[a] <= max_events:
            b += 1
        out.append((a, b))
        a = b
    return out


def build_frame_cache(split: EventSplit, store_attrs: dict, binning: Binning, out: str | Path, *,
                      block_samples: int = SHARD_SAMPLES, progress: bool = True,
                      block_events: int = BLOCK_EVENTS, threads: int | None = None) -> Path:
    """Bin every sample of ``split`` and write the cache ``out`` atomically. Returns ``out``.

    A bounded pipeline: blocks of at most ``block_samples`` samples / ``block_events`` events; while Numba bins
    block k (`bin_batch`, parallel over samples), a thread pool decompresses block k+1 straight from the event
    store's shards (`pipeline.storage.ShardReader`) and compresses the frames of block k-1 into the cache's shards
    (`pipeline.storage.ShardWriter`). The bytes written do not depend on the block size or the thread count.
    """
    out = Path(out)
    sensor = SensorSize.of(store_attrs["sensor_size"])
    fs = binning.frame_sensor(sensor)
    n = len(split)
    shape = (n, binning.T, fs.polarities, fs.height, fs.width)
    sat_total, sat_samples = 0, 0
    readers = split.column_readers()
    with ProductWriter(out, backend_for(out), threads) as w:
        frames = w.column(w.root, "frames", np.dtype(binning.dtype), FRAMES_CODEC, chunk_rows=1,
                          shard_rows=min(SHARD_SAMPLES, max(n, 1)), shape=shape)
        bar = tqdm(total=n, desc=f"bin {store_attrs['dataset']}/{split.name} T={binning.T}", unit="sample",
                   disable=not progress, file=sys.stderr)
        blocks = _blocks(split.offsets, max(1, block_samples), block_events)

        def start(k: int):
            a, b = blocks[k]
            lo, hi = int(split.offsets[a]), int(split.offsets[b])
            if readers is None:
                return split.event_slice(lo, hi)
            return {c: r.start(lo, hi, w.pool) for c, r in readers.items()}

        ahead = start(0) if blocks else None
        for k, (a, b) in enumerate(blocks):
            lo = int(split.offsets[a])
            cols = {c: (v if readers is None else v.result()) for c, v in ahead.items()}
            ahead = start(k + 1) if k + 1 < len(blocks) else None  # decompressed while this block bins
            try:
                block, sat = bin_batch(cols["x"], cols["y"], cols["t"], cols["p"],
                                       split.offsets[a : b + 1] - lo, sensor, **binning.kwargs())
            except ValueError as err:  # positions in the message are relative to this block
                raise ValueError(f"{split.path} split {split.name!r}, samples {a}..{b - 1} (event rows from "
                                 f"{lo}): {err}") from err
            del cols
            frames.write(block)
            sat_total += int(sat.sum())
            sat_samples += int(np.count_nonzero(sat))
            bar.update(b - a)
        frames.close()
        bar.close()
        arrays = {"label": split.labels.astype("<i2"), "recording": split.recording.astype("<i4"),
                  "window_start_us": split.window_us[:, 0].copy(), "window_end_us": split.window_us[:, 1].copy()}
        for name, data in arrays.items():
            w.array(w.root, name, data, _SMALL)
        w.finish({  # then the file inventory (Zarr) and complete = True
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "key": _key(binning, store_attrs["store_id"], split.name, sensor),
            "dataset": store_attrs["dataset"], "split": split.name, "classes": store_attrs["classes"],
            "sensor_size": list(fs), "binning": binning.as_dict(),
            "source": {"store_id": store_attrs["store_id"], "path": str(split.path), "split": split.name},
            "saturated": sat_total, "saturated_samples": sat_samples,
        })
    return out


class FrameCache(Product):
    """An opened, validated frame cache: ``frames`` (lazy array), ``labels``, ``attrs``.

    Opening refuses a cache that is incomplete, of another format version, (Zarr) whose files are not exactly
    those written, whose arrays disagree with its attributes, or built from other parameters or another source.
    Handles open lazily and are dropped on pickling (DataLoader-worker safe).
    """

    def __init__(self, path: str | Path, binning: Binning | None = None, store_id: str | None = None):
        super().__init__(path, FORMAT, FORMAT_VERSION)
        try:
            with self.root() as root:
                self.labels = np.asarray(root["label"][:], np.int64)
                self.shape = tuple(root["frames"].shape)
                lengths = {k: int(root[k].shape[0]) for k in ("recording", "window_start_us", "window_end_us")}
                frames_dtype = str(root["frames"].dtype)
        except KeyError as err:
            raise StoreError(f"{self.path} has no array {err}: a damaged cache; rebuild it") from None
        self.pin.check()
        self._check_shape(lengths, frames_dtype)
        problems = []
        if binning is not None and self.attrs["binning"] != binning.as_dict():
            problems.append(f"binning {self.attrs['binning']} != requested {binning.as_dict()}")
        if store_id is not None and self.attrs["source"]["store_id"] != store_id:
            problems.append(f"source store {self.attrs['source']['store_id'][:12]}… != {store_id[:12]}…")
        if problems:
            raise StoreError(f"{self.path} does not match what was asked: " + "; ".join(problems))
        self._frames = None
        self._shards = self.shard_reader("frames", what="cache")

    def _check_shape(self, lengths: dict[str, int], frames_dtype: str) -> None:
        """``frames`` must be (N, T, P, H, W) with N the labels', T the binning's, (P, H, W) the sensor's."""
        b, (w, h, pol) = self.attrs["binning"], self.attrs["sensor_size"]
        expected = (len(self.labels), b["T"], pol, h, w)
        problems = []
        if self.shape != expected:
            problems.append(f"frames has shape {self.shape}, the attributes say (N, T, P, H, W) = {expected} "
                            f"(binning.T = {b['T']}, sensor_size [W, H, P] = {[w, h, pol]}, "
                            f"{len(self.labels)} labels)")
        if frames_dtype != b["dtype"]:
            problems.append(f"frames are {frames_dtype}, the attributes say binning.dtype = {b['dtype']}")
        bad = {k: v for k, v in lengths.items() if v != len(self.labels)}
        if bad:
            problems.append(f"{bad} disagree with the {len(self.labels)} labels")
        if problems:
            raise StoreError(f"{self.path} is inconsistent: " + "; ".join(problems) + "; rebuild it")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_frames": None}

    def sample(self, i: int) -> np.ndarray:
        """Frames ``(T, P, H, W)`` of sample ``i``. Zarr caches in our layout are read through
        `pipeline.storage.ShardReader` (one pread + one Blosc decompression, ~20x faster than zarr-python's
        per-call path)."""
        if self._shards is not None:
            return self._shards.read(i)
        return np.asarray(self.frames[i])

    def read_all(self) -> np.ndarray:
        """Every sample, ``(N, T, P, H, W)``, in RAM (from the version opened, or a StoreError saying it changed)."""
        out = np.asarray(self.frames[:])
        self.after_read()  # zarr-python opened the files by path
        return out

    @property
    def frames(self):
        """The lazy ``(N, T, P, H, W)`` array (zarr array or h5py dataset)."""
        if self._frames is None:
            self._frames = self.open_root()["frames"]  # HDF5: the handle holds the version opened; Zarr: `read_all`
        return self._frames

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def binning(self) -> Binning:
        return Binning(**self.attrs["binning"])


def open_frame_cache(path: str | Path, binning: Binning | None = None, store_id: str | None = None) -> FrameCache:
    """Open a cache; with ``binning``/``store_id`` given, refuse one built from other parameters or source."""
    return FrameCache(path, binning, store_id)


def ensure_frame_cache(store_path: str | Path, split: str, binning: Binning, frames_root: str | Path,
                       fmt: str = "zarr", progress: bool = True) -> FrameCache:
    """Open the cache for (store, split, binning), building it first when it does not exist."""
    store = open_event_store(store_path)
    path = cache_path(frames_root, store.attrs["dataset"], split, binning, store.store_id, store.sensor_size, fmt)
    if not path.exists():
        build_frame_cache(store[split], store.attrs, binning, path, progress=progress)
    return open_frame_cache(path, binning, store.store_id)
