"""Frame caches, datasets, multi-view augmentation, and the bin/show stages."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import zarr

import pipeline.frames as frames_mod
from pipeline.binning import to_frames
from pipeline.config import IngestConfig
from pipeline.data import Augment, FrameDataset, MultiViewDataset, RebinView
from pipeline.datasets import get_spec
from pipeline.frames import Binning, build_frame_cache, cache_path, ensure_frame_cache, open_frame_cache
from pipeline.ingest import ingest
from pipeline.store import StoreError, open_event_store

from tests.conftest import make_gesture_tree


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frames")
    tree = make_gesture_tree(tmp / "raw", n_events=8000)
    out = tmp / "ev.zarr"
    ingest(get_spec("dvs_gesture"), tree.root, out, IngestConfig(chunk_events=1024, shard_events=4096), progress=False)
    return out


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_cache_matches_to_frames_read_with_plain_libraries(store_path, tmp_path, fmt):
    b = Binning(T=5, out_size=(32, 32), dtype="uint8")
    cache = ensure_frame_cache(store_path, "train", b, tmp_path, fmt, progress=False)
    split = open_event_store(store_path)["train"]
    if fmt == "zarr":
        g = zarr.open_group(cache.path, mode="r")
        frames, labels, attrs = g["frames"], g["label"][:], dict(g.attrs)
    else:
        f = h5py.File(cache.path, "r")
        frames, labels, attrs = f["frames"], f["label"][:], {k: json.loads(v) for k, v in f.attrs.items()}
    assert frames.shape == (len(split), 5, 2, 32, 32)
    for i in (0, 7, len(split) - 1):
        ev, label = split[i]
        np.testing.assert_array_equal(frames[i], to_frames(ev, (128, 128, 2), n_time_bins=5, out_size=(32, 32),
                                                           dtype=np.uint8))
        assert labels[i] == label
    assert attrs["binning"] == b.as_dict() and attrs["source"]["store_id"] == open_event_store(store_path).store_id
    assert attrs["saturated"] == 0 and attrs["format_version"] == frames_mod.FORMAT_VERSION


def test_every_parameter_changes_the_cache_path(store_path):
    store = open_event_store(store_path)
    base = Binning(T=8)
    variants = [Binning(T=9), Binning(T=8, by="count"), Binning(T=8, semantics="tonic"), Binning(T=8, out_size=(64, 64)),
                Binning(T=8, dtype="uint8"), Binning(T=8, overlap=0.5)]
    paths = {cache_path("r", "d", "train", v, store.store_id, store.sensor_size) for v in [base, *variants]}
    assert len(paths) == 1 + len(variants)
    assert cache_path("r", "d", "train", base, "other-store", store.sensor_size) != \
        cache_path("r", "d", "train", base, store.store_id, store.sensor_size)
    assert cache_path("r", "d", "test", base, store.store_id, store.sensor_size) != \
        cache_path("r", "d", "train", base, store.store_id, store.sensor_size)


def test_killed_bin_leaves_nothing_that_opens(store_path, tmp_path, monkeypatch):
    store = open_event_store(store_path)
    b = Binning(T=4)
    out = cache_path(tmp_path, "dvs_gesture", "train", b, store.store_id, store.sensor_size)
    calls = {"n": 0}
    real = frames_mod.bin_batch

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the process were interrupted mid-build
        return real(*args, **kwargs)

    monkeypatch.setattr(frames_mod, "bin_batch", dying)
    monkeypatch.setattr(frames_mod, "SHARD_SAMPLES", 4)  # several blocks even for a small split
    with pytest.raises(KeyboardInterrupt):
        build_frame_cache(store["train"], store.attrs, b, out, block_samples=4, progress=False)
    assert not out.exists() and list(out.parent.glob("*")) == []
    with pytest.raises(StoreError):
        open_frame_cache(out)


def test_sigkilled_bin_process_leaves_nothing_that_opens(store_path, tmp_path):
    """SIGKILL `python -m pipeline.bin` while it writes: no cache opens; the next run clears the leftover."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "pipeline.bin", "dvs_gesture", "--store", str(store_path), "--T", "64",
           "--splits", "train", "--set", f"paths.frames_root={tmp_path}", "--set", "recipes.dvs_gesture={}", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("dvs_gesture/*.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = open_event_store(store_path)
    out = cache_path(tmp_path, "dvs_gesture", "train", Binning(T=64), store.store_id, store.sensor_size)
    killed_mid_write = proc.returncode == -signal.SIGKILL and bool(list(tmp_path.glob("dvs_gesture/*.tmp-*")))
    print("killed mid-write:", killed_mid_write)
    if killed_mid_write:
        assert not out.exists()
        with pytest.raises(StoreError):
            open_frame_cache(out)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert open_frame_cache(out, Binning(T=64)).shape[1] == 64
    assert list(tmp_path.glob("dvs_gesture/*.tmp-*")) == []


def test_open_refuses_other_parameters_or_source(store_path, tmp_path):
    cache = ensure_frame_cache(store_path, "test", Binning(T=3), tmp_path, progress=False)
    with pytest.raises(StoreError, match="binning"):
        open_frame_cache(cache.path, Binning(T=4))
    with pytest.raises(StoreError, match="source store"):
        open_frame_cache(cache.path, Binning(T=3), store_id="0" * 64)
    with pytest.raises(StoreError, match="not a tssd-frame-cache"):
        open_frame_cache(store_path)


def test_multiview_same_events_and_identical_augmentation(store_path, tmp_path):
    """T_s and T_t views come from the same events, and carry the same flip/roll/cutout draw."""
    s = ensure_frame_cache(store_path, "train", Binning(T=4), tmp_path, progress=False)
    t = ensure_frame_cache(store_path, "train", Binning(T=8), tmp_path, progress=False)
    rebin = RebinView((store_path, "train"), Binning(T=16))
    aug = Augment(flip_p=0.5, max_shift_px=5, cutout_px=9)
    ds = MultiViewDataset({"student": s, "teacher": t, "rebinned": rebin}, aug, seed=3)
    plain = MultiViewDataset({"student": s}, None)
    flips = 0
    for i in range(len(ds)):
        views, label = ds[i]
        assert {k: v.shape[0] for k, v in views.items()} == {"student": 4, "teacher": 8, "rebinned": 16}
        sums = [v.sum(0) for v in views.values()]  # exact semantics: every event in exactly one frame
        torch.testing.assert_close(sums[0], sums[1], rtol=0, atol=0)
        torch.testing.assert_close(sums[0], sums[2], rtol=0, atol=0)
        raw = plain[i][0]["student"].sum(0)
        flips += int(not torch.equal(sums[0], raw))
        assert label == int(open_event_store(store_path)["train"].labels[i])
    assert flips > 0  # the augmentation did something
    a, _ = ds[5]
    b, _ = ds[5]
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded per (seed, epoch, index)
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0]["student"], plain[i][0]["student"]) for i in range(len(ds)))


def test_augment_flip_and_translate_exact():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    aug = Augment(shift_mode="translate")
    from pipeline.data import AugParams

    y = aug.apply(x, AugParams(flip=True, dx=1, dy=-1, cutout=None))
    expected = torch.zeros_like(x)
    expected[..., 0:3, 1:5] = x.flip(-1)[..., 1:4, 0:4]
    assert torch.equal(y, expected)
    r = Augment(shift_mode="roll").apply(x, AugParams(False, 2, 0, (0, 2, 0, 2)))
    assert torch.equal(r[..., 2:, :], x.roll(2, -1)[..., 2:, :]) and r[..., :2, :2].abs().sum() == 0


def test_frame_dataset_in_memory_and_workers(store_path, tmp_path):
    cache = ensure_frame_cache(store_path, "train", Binning(T=4, dtype="uint8"), tmp_path, progress=False)
    lazy, ram = FrameDataset(cache.path), FrameDataset(cache.path, in_memory=True)
    x, y = ram[3]
    assert x.dtype == torch.float32 and x.shape == (4, 2, 128, 128) and torch.equal(x, lazy[3][0]) and y == lazy[3][1]
    loader = torch.utils.data.DataLoader(lazy, batch_size=5, num_workers=2)
    got = torch.cat([b[1] for b in loader])
    np.testing.assert_array_equal(got.numpy(), cache.labels)


def test_bin_and_show_stages(store_path, tmp_path, capsys):
    from pipeline import bin as bin_stage
    from pipeline import show

    assert bin_stage.main(["dvs_gesture", "--store", str(store_path), "--T", "2", "3", "--out-size", "16", "16",
                           "--set", f"paths.frames_root={tmp_path}", "--no-progress"]) == 0
    caches = sorted((tmp_path / "dvs_gesture").glob("*.zarr"))
    assert len(caches) == 6 and all("16x16" in c.name for c in caches)  # (train, val, test) x T 2, 3
    png = tmp_path / "show.png"
    assert show.main([str(caches[0]), "--index", "0", "1", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert show.main([str(store_path), "--out", str(tmp_path / "ev.png")]) == 0
    assert bin_stage.main(["dvs_gesture", "--store", str(tmp_path / "missing.zarr")]) == 2


def test_fast_shard_reader_matches_zarr_including_empty_samples(tmp_path):
    """FrameCache.sample reads Zarr shard files directly; every sample must equal zarr-python's read."""
    from pipeline.store import EventStoreWriter

    rng = np.random.default_rng(0)
    with EventStoreWriter(tmp_path / "s.zarr", chunk_events=64, shard_events=256) as w:
        s = w.split("train")
        for i in range(70):  # two shards of 64 samples; every 7th sample, and all of the last shard, is empty
            n = 0 if i % 7 == 0 or i >= 64 else int(rng.integers(1, 300))
            s.add(rng.integers(0, 16, n), rng.integers(0, 16, n), np.sort(rng.integers(0, 10**6, n)),
                  rng.integers(0, 2, n), label=i % 3, recording=0, start_us=0, end_us=10**6)
        w.finish_split("train", {})
        w.finish({"dataset": "t", "classes": ["a", "b", "c"], "sensor_size": [16, 16, 2], "store_id": "x"})
    store = open_event_store(tmp_path / "s.zarr")
    for dtype in ("uint8", "int16", "float32"):
        path = build_frame_cache(store["train"], store.attrs, Binning(T=3, dtype=dtype), tmp_path / f"{dtype}.zarr",
                                 progress=False)
        cache = open_frame_cache(path)
        assert cache._shards is not None
        for i in range(len(cache)):
            got = cache.sample(i)
            assert got.dtype == np.dtype(dtype) and np.array_equal(got, np.asarray(cache.frames[i])), (dtype, i)
        assert not cache.sample(0).any() and not cache.sample(-1).any()
        with pytest.raises(IndexError):
            cache.sample(70)
