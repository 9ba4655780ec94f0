"""Loader throughput from a frame cache vs tonic's ``DiskCachedDataset`` on the same frames.

    .venv/bin/python bench/bench_loader.py [--samples 2000] [--events 20000]

Builds a synthetic event store (``--samples`` samples of ``--events`` events on 128x128), bins it into a frame
cache of (16, 2, 64, 64) uint8 per sample with the project's own stage code, then reads every sample, in one
process on one core (``torch.set_num_threads(1)``, no DataLoader workers):

* ours, lazy: `pipeline.data.FrameDataset(cache)` -- one chunk read + decompress per sample, from the sharded
  Zarr cache (read straight from the shard file, `pipeline.storage.ShardReader`) and from the HDF5 cache;
* ours, in RAM: `FrameDataset(cache, in_memory=True)`;
* tonic: ``tonic.DiskCachedDataset`` (one LZF-compressed HDF5 file per sample, its default), read after it was
  filled from the same frames.

Every sample is asserted equal between the three before the timings are printed (target: ours >= 5000
samples/s on one core).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data import FrameDataset
from pipeline.frames import Binning, build_frame_cache, open_frame_cache
from pipeline.store import EventStoreWriter, open_event_store


def synthetic_store(path: Path, n_samples: int, n_events: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with EventStoreWriter(path) as w:
        for split in ("train",):
            s = w.split(split)
            for i in range(n_samples):
                n = int(rng.integers(n_events // 2, 3 * n_events // 2))
                t = np.sort(rng.integers(0, 1_000_000, n))
                s.add(rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n),
                      label=i % 10, recording=0, start_us=0, end_us=1_000_000)
            w.finish_split(split, {})
        w.finish({"dataset": "bench", "classes": [str(k) for k in range(10)], "sensor_size": [128, 128, 2],
                  "store_id": f"bench-{seed}-{n_samples}-{n_events}"})


def timed_pass(ds, n: int) -> float:
    """Seconds to read every sample once (outputs dropped as they come, as a training loop does)."""
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    import tonic

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--events", type=int, default=20000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n = args.samples
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_store(tmp / "ev.zarr", n, args.events)
        store = open_event_store(tmp / "ev.zarr")
        cache = open_frame_cache(build_frame_cache(store["train"], store.attrs,
                                                   Binning(T=16, out_size=(64, 64), dtype="uint8"),
                                                   tmp / "frames.zarr", progress=False))
        cache_h5 = open_frame_cache(build_frame_cache(store["train"], store.attrs,
                                                      Binning(T=16, out_size=(64, 64), dtype="uint8"),
                                                      tmp / "frames.h5", progress=False))
        lazy = FrameDataset(cache)
        lazy_h5 = FrameDataset(cache_h5)
        ram = FrameDataset(cache, in_memory=True)
        ram[0]  # loads the cache into RAM (timed separately below)

        class Frames:  # the same frames as numpy, the way a tonic pipeline hands them to DiskCachedDataset
            def __len__(self) -> int:
                return n

            def __getitem__(self, i):
                return np.asarray(cache.frames[i]), int(cache.labels[i])

        disk = tonic.DiskCachedDataset(Frames(), cache_path=str(tmp / "tonic_cache"))
        fill_s = timed_pass(disk, n)  # first pass writes one HDF5 file per sample
        t_load0 = time.perf_counter()
        ram_full = FrameDataset(cache, in_memory=True)
        ram_full[0]
        ram_load_s = time.perf_counter() - t_load0
        for i in range(n):
            (a, la), (b, lb), (c, lc), (d, ld) = lazy[i], ram[i], disk[i], lazy_h5[i]
            assert torch.equal(a, b) and torch.equal(a, d) and np.array_equal(a.numpy(), np.asarray(c, np.float32))
            assert la == lb == lc == ld
        lazy_s = min(timed_pass(lazy, n) for _ in range(2))
        lazy_h5_s = min(timed_pass(lazy_h5, n) for _ in range(2))
        ram_s = min(timed_pass(ram, n) for _ in range(2))
        tonic_s = min(timed_pass(disk, n) for _ in range(2))
        size_ours = sum(f.stat().st_size for f in (tmp / "frames.zarr").rglob("*") if f.is_file())
        size_tonic = sum(f.stat().st_size for f in (tmp / "tonic_cache").rglob("*") if f.is_file())
        files_ours = sum(1 for f in (tmp / "frames.zarr").rglob("*") if f.is_file())
    rows = {"ours (lazy, sharded zarr)": lazy_s, "ours (lazy, HDF5)": lazy_h5_s, "ours (in RAM)": ram_s,
            "tonic DiskCachedDataset": tonic_s}
    print(f"{n} samples of (16, 2, 64, 64) uint8, one process, one thread; outputs asserted equal")
    print(f"{'loader':<28} {'samples/s':>10} {'vs tonic':>9}")
    for name, s in rows.items():
        print(f"{name:<28} {n / s:>10.0f} {tonic_s / s:>8.1f}x")
    print(f"cache on disk: ours {size_ours / 1e6:.1f} MB in {files_ours} files (RAM load {ram_load_s:.2f} s); "
          f"tonic {size_tonic / 1e6:.1f} MB in {n} files (filled in {fill_s:.1f} s). Target: ours >= 5000 samples/s.")
    return {k: n / s for k, s in rows.items()}


if __name__ == "__main__":
    main()
