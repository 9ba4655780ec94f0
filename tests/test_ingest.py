"""Ingestion end to end on test-written raw trees: exact round trips, reconciled counts, atomic failure."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import tonic.transforms
import zarr

from pipeline.config import IngestConfig
from pipeline.datasets import get_spec
from pipeline.datasets.cifar10_dvs import split_indices
from pipeline.datasets.dvs_gesture import write_recording
from pipeline.datasets.base import Window
from pipeline.ingest import ingest, main
from pipeline.io.errors import RawDataError
from pipeline.store import FORMAT_VERSION, EventStoreWriter, StoreError, open_event_store

from tests.conftest import make_gesture_tree

SMALL = dict(chunk_events=1024, shard_events=8192)  # several shards even for test-sized data


def _assert_matches(store, truth):
    for split, samples in truth.items():
        s = store[split]
        assert len(s) == len(samples)
        for i, (ev, label) in enumerate(samples):
            got, got_label = s[i]
            assert got_label == label
            for f in "xytp":
                np.testing.assert_array_equal(got[f], ev[f], err_msg=f"{split}[{i}].{f}")


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_gesture_round_trip_and_reconciliation(gesture_tree, tmp_path, fmt):
    out = tmp_path / f"ev.{'zarr' if fmt == 'zarr' else 'h5'}"
    attrs = ingest(get_spec("dvs_gesture"), gesture_tree.root, out, IngestConfig(format=fmt, **SMALL), progress=False)
    store = open_event_store(out)
    _assert_matches(store, gesture_tree.truth)
    c = attrs["counts"]
    assert c["events_read"] == gesture_tree.n_events_in_files
    assert c["stored"] + c["invalid_dropped"] + c["outside_windows"] + c["out_of_sensor"] - c["duplicated_by_overlap"] \
        == c["events_read"]
    assert c["train.samples"] == 11 and c["val.samples"] == 11 and c["test.samples"] == 11  # user 2 is val
    assert store.attrs["sensor_size"] == [128, 128, 2]
    assert {s["name"] for s in store.attrs["sources"]} >= {"user01_fluorescent_led.aedat",
                                                          "user01_fluorescent_led_labels.csv"}
    assert all(len(s["sha256"]) == 64 for s in store.attrs["sources"])
    # provenance: the format each header declared (the csv files have none)
    rec = next(s for s in store.attrs["sources"] if s["name"] == "user01_fluorescent_led.aedat")
    assert rec["format"] == "AEDAT 3.1" and rec["source"] == "DVS128"
    meta = store["train"].attrs["recordings"][0]
    assert meta == {"name": "user01_fluorescent_led.aedat", "user": 1, "lighting": "fluorescent_led"}


def test_a_preloaded_split_reads_the_same_samples(gesture_tree, tmp_path):
    out = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), gesture_tree.root, out, IngestConfig(**SMALL), progress=False)
    split = open_event_store(out)["test"]
    on_disk = [split[i] for i in range(len(split))]
    assert not split.preload(max_bytes=0)  # too large for the limit: stays on disk
    assert split.preload()
    for i, (ev, label) in enumerate(on_disk):
        got, got_label = split[i]
        assert got.tobytes() == ev.tobytes() and got_label == label
    _assert_matches(open_event_store(out), gesture_tree.truth)


def test_zarr_store_is_few_files_and_readable_with_plain_zarr(gesture_tree, tmp_path):
    out = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), gesture_tree.root, out, IngestConfig(**SMALL), progress=False)
    n_files = sum(1 for p in out.rglob("*") if p.is_file())
    n_events = sum(len(e) for e, _ in gesture_tree.truth["train"])
    # ~20 files per split (3 splits: train, val, test) plus shards, not one file per chunk
    assert n_files < 20 * 3 + 4 * (n_events // SMALL["shard_events"] + 1)
    g = zarr.open_group(out, mode="r")
    off = g["train/offsets"][:]
    ev, label = gesture_tree.truth["train"][3]
    np.testing.assert_array_equal(g["train/t"][off[3]:off[4]], ev["t"])
    assert g["train/label"][3] == label and g.attrs["format"] == "tssd-event-store"


def test_h5_store_readable_with_plain_h5py(gesture_tree, tmp_path):
    out = tmp_path / "ev.h5"
    ingest(get_spec("dvs_gesture"), gesture_tree.root, out, IngestConfig(format="h5", **SMALL), progress=False)
    with h5py.File(out, "r") as f:
        off = f["test/offsets"][:]
        ev, _ = gesture_tree.truth["test"][2]
        np.testing.assert_array_equal(f["test/x"][off[2]:off[3]], ev["x"])
        assert json.loads(f.attrs["dataset"]) == "dvs_gesture"


def test_cifar_round_trip_and_split_manifest(cifar_tree, tmp_path):
    out = tmp_path / "c.zarr"
    attrs = ingest(get_spec("cifar10_dvs"), cifar_tree.root, out, IngestConfig(**SMALL), progress=False)
    store = open_event_store(out)
    _assert_matches(store, cifar_tree.truth)
    assert attrs["split_scheme"] == "tet"
    names = [r["name"] for r in store["test"].attrs["recordings"]]
    assert names[0] == "airplane/cifar10_airplane_9.aedat" and len(names) == 10
    assert attrs["counts"]["stored"] == attrs["counts"]["events_read"]
    assert {s["format"] for s in attrs["sources"]} == {"AEDAT 2.0"}
    assert all(s["version_line"] for s in attrs["sources"])


def test_cifar_split_schemes():
    idx = list(range(1000))
    names = [f"cifar10_cat_{i}.aedat" for i in idx]
    tr, te = split_indices(idx, names, "tet")
    assert (len(tr), len(te)) == (900, 100) and max(tr) == 899 and min(te) == 900
    tr, te = split_indices(idx, names, "tebn")
    assert sorted(te) == list(range(100)) and len(tr) == 900
    tr, te = split_indices(idx, names, "spikingjelly")
    first = [names[k] for k in tr[:4]]
    assert first == ["cifar10_cat_0.aedat", "cifar10_cat_1.aedat", "cifar10_cat_10.aedat", "cifar10_cat_100.aedat"]
    assert len(tr) == 900 and {names[k] for k in te} == set(sorted(names)[900:]) and 999 in te and 100 in tr
    a, _ = split_indices(idx, names, "random:3")
    b, _ = split_indices(idx, names, "random:3")
    c, _ = split_indices(idx, names, "random:4")
    assert a == b and a != c and len(a) == 900
    with pytest.raises(ValueError, match="tet, tebn, spikingjelly"):
        split_indices(idx, names, "official")


def test_overlapping_windows_are_kept_and_reported(tmp_path):
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 1_000_000, 5000))
    x, y, p = rng.integers(0, 128, 5000), rng.integers(0, 128, 5000), rng.integers(0, 2, 5000)
    write_recording(root, "user22_led", x, y, t, p, [Window(0, 0, 600_000), Window(8, 500_000, 900_000)])
    (root / "trials_to_train.txt").write_text("user22_led.aedat\n")
    write_recording(root, "user23_led", x, y, t, p, [Window(0, 0, 600_000)])  # test must not repeat a train recording
    (root / "trials_to_test.txt").write_text("user23_led.aedat\n")
    attrs = ingest(get_spec("dvs_gesture"), root, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)
    c = attrs["counts"]
    assert c["train.overlapping_windows"] == 1 and attrs["overlaps"][0]["rows"] == [2, 3]
    assert c["train.duplicated_by_overlap"] == int(((t >= 500_000) & (t < 600_000)).sum())
    assert c["train.stored"] - c["train.duplicated_by_overlap"] + c["train.outside_windows"] == 5000


def _corrupt(root: Path, kind: str) -> str:
    rec = root / "user02_fluorescent_led.aedat"
    csv = root / "user02_fluorescent_led_labels.csv"
    if kind == "truncated":
        rec.write_bytes(rec.read_bytes()[:-3])
        return "truncated packet"
    if kind == "end-before-start":
        csv.write_text("class,startTime_usec,endTime_usec\r\n1,500,100\r\n")
        return "row 2"
    if kind == "unknown-class":
        csv.write_text("class,startTime_usec,endTime_usec\r\n1,0,100\r\n12,5,900\r\n")
        return "row 3: unknown class 12"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "end-before-start", "unknown-class"])
@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_bad_input_leaves_no_store(tmp_path, kind, fmt):
    tree = make_gesture_tree(tmp_path / "raw")
    match = _corrupt(tree.root, kind)
    out = tmp_path / f"ev.{'zarr' if fmt == 'zarr' else 'h5'}"
    with pytest.raises(RawDataError, match=match) as info:
        ingest(get_spec("dvs_gesture"), tree.root, out, IngestConfig(format=fmt, **SMALL), progress=False)
    assert "user02_fluorescent_led" in str(info.value)
    assert list(tmp_path.glob("ev.*")) == []  # neither the store nor a temporary


def test_out_of_sensor_error_or_counted_drop(tmp_path):
    root = tmp_path / "raw"
    x = np.array([1, 200, 3]); y = np.array([1, 2, 130]); t = np.array([10, 20, 30]); p = np.array([1, 0, 1])
    write_recording(root, "user01_lab", x, y, t, p, [Window(0, 0, 100)])
    (root / "trials_to_train.txt").write_text("user01_lab.aedat\n")
    (root / "trials_to_test.txt").write_text("")
    with pytest.raises(RawDataError, match=r"event 1 \(t=20 µs\) has x=200"):
        ingest(get_spec("dvs_gesture"), root, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)
    attrs = ingest(get_spec("dvs_gesture"), root, tmp_path / "s.zarr",
                   IngestConfig(out_of_sensor="drop", **SMALL), progress=False)
    assert attrs["counts"]["out_of_sensor"] == 2 and attrs["counts"]["stored"] == 1


def test_store_refuses_incomplete_and_other_versions(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        with EventStoreWriter(out, **SMALL) as w:
            w.split("train").add([1], [1], [1], [1], label=0, recording=0, start_us=0, end_us=2)
            raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="does not exist"):
        open_event_store(out)
    with EventStoreWriter(out, **SMALL) as w:
        w.split("train").add([1], [1], [1], [1], label=0, recording=0, start_us=0, end_us=2)
        w.finish_split("train", {})
        w.finish({"dataset": "x", "sensor_size": [128, 128, 2], "store_id": "abc"})
    assert len(open_event_store(out)["train"]) == 1
    g = zarr.open_group(out, mode="r+")
    g.attrs["format_version"] = 999
    with pytest.raises(StoreError, match="format version 999"):
        open_event_store(out)
    g.attrs["format_version"] = FORMAT_VERSION
    g.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        open_event_store(out)


def test_store_events_work_with_tonic_and_pickle(gesture_tree, tmp_path):
    out = tmp_path / "ev.zarr"
    ingest(get_spec("dvs_gesture"), gesture_tree.root, out, IngestConfig(**SMALL), progress=False)
    split = open_event_store(out)["train"]
    ev, _ = split[5]
    frames = tonic.transforms.ToFrame(sensor_size=(128, 128, 2), n_time_bins=4)(ev)
    assert frames.shape == (4, 2, 128, 128)
    clone = pickle.loads(pickle.dumps(split))  # DataLoader workers get a handle-free copy
    np.testing.assert_array_equal(clone[5][0], ev)
    with pytest.raises(IndexError):
        split[len(split)]


def test_cli_reports_and_missing_raw_says_what_to_download(gesture_tree, tmp_path, capsys):
    out = tmp_path / "ev.zarr"
    assert main(["dvs_gesture", "--raw", str(gesture_tree.root), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "invalid dropped" in text
    assert main(["cifar10_dvs", "--raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "c.zarr")]) == 2
    err = capsys.readouterr().err
    assert "figshare" in err and "airplane.zip" in err and not (tmp_path / "c.zarr").exists()


def test_tonic_gesture_tree_ingests_through_tonic(tmp_path):
    """tonic's DVSGesture npy tree (ms timestamps) goes through tonic's own class into the same store format."""
    root = tmp_path / "tonic"
    rng = np.random.default_rng(0)
    truth = {}
    for sub, users in (("ibmGestureTrain", (1, 2)), ("ibmGestureTest", (3,))):
        base = root / "DVSGesture"
        (base / f"{sub}.tar.gz").parent.mkdir(parents=True, exist_ok=True)
        (base / f"{sub}.tar.gz").write_bytes(b"")
        for u in users:
            folder = base / sub / f"user{u:02d}_led"
            folder.mkdir(parents=True)
            for label in range(11):
                for copy in range(5 if sub.endswith("Train") else 10):
                    n = 20
                    arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                                    np.sort(rng.integers(0, 6000, n))], 1).astype(np.int64)
                    name = f"{label}.npy" if copy == 0 else f"{label}_{copy}.npy"
                    np.save(folder / name, arr)
                    truth[str(folder / name)] = arr
    out = tmp_path / "t.zarr"
    assert main(["dvs_gesture", "--from-tonic", str(root), "--out", str(out), "--no-progress"]) == 0
    store = open_event_store(out)
    split = store["train"]
    rec = split.attrs["recordings"][0]
    arr = truth[str(root / rec["name"])]
    ev, label = split[0]
    np.testing.assert_array_equal(ev["t"], arr[:, 3] * 1000)
    np.testing.assert_array_equal(ev["x"], arr[:, 0])
    assert store.attrs["reader_version"].startswith("tonic") and len(store["test"]) == 110
    assert main(["dvs_gesture", "--from-tonic", str(tmp_path / "none"), "--out", str(tmp_path / "u.zarr")]) == 2
