"""`recordings`: a folder of one's own recordings (AEDAT 4 / 3.1 / 2.0, .npy, .h5) -> event store -> bin -> train."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline import bin as bin_stage
from pipeline import ingest as ingest_stage
from pipeline import train as train_stage
from pipeline.config import IngestConfig
from pipeline.datasets import get_spec
from pipeline.datasets.recordings import _random_split, sniff_format
from pipeline.ingest import ingest
from pipeline.io import aedat2
from pipeline.io.aedat3 import write_aedat31
from pipeline.io.arrays import write_npy
from pipeline.io.errors import RawDataError
from pipeline.store import open_event_store
from tests.dv_files import write_dv

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"chunk_events": 1024, "shard_events": 4096}


def stream(rng, n, size=128, t0=0, span=2_000_000):
    t = np.sort(rng.integers(t0, t0 + span, n)).astype(np.int64)
    return rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n)


def write_h5(path, x, y, t, p, sensor=(128, 128), group="events"):
    with h5py.File(path, "w") as f:
        g = f.create_group(group) if group else f
        for k, v in (("x", x), ("y", y), ("t", t), ("p", p)):
            g.create_dataset(k, data=np.asarray(v))
        if sensor:
            g.attrs["sensor_size"] = list(sensor)


@pytest.fixture
def folder(tmp_path):
    """Five recordings, every format, 128x128: four labelled by folder, one by a csv with two rows."""
    pytest.importorskip("aedat")
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for d in ("clap", "wave"):
        (raw / d).mkdir(parents=True)
    truth = {}
    ev = stream(rng, 3000, t0=1_700_000_000_000_000)
    write_dv(raw / "clap" / "a.aedat4", *ev, camera="DVS128_0001", resolution=(128, 128), packet=1000)
    truth["clap/a.aedat4"] = ev
    ev = stream(rng, 2000)
    write_aedat31(raw / "clap" / "b.aedat", *ev)  # '#Source 1: DVS128' -> 128x128
    truth["clap/b.aedat"] = ev
    ev = stream(rng, 1500)
    write_npy(raw / "wave" / "c.npy", *ev)
    truth["wave/c.npy"] = ev
    ev = stream(rng, 1200)
    write_h5(raw / "wave" / "d.h5", *ev)
    truth["wave/d.h5"] = ev
    ev = stream(rng, 1000)
    aedat2.write_aedat20(raw / "wave" / "e.aedat", *ev)  # takes (and reads back) the stored orientation
    truth["wave/e.aedat"] = ev
    ev = stream(rng, 4000, span=3_000_000)
    write_dv(raw / "session.aedat4", *ev, camera="DVS128_0001", resolution=(128, 128), packet=1000)
    (raw / "session_labels.csv").write_text("class,start_us,end_us\nwave,100000,900000\nclap,1000000,2500000\n")
    truth["session.aedat4"] = ev
    return raw, truth


def _samples(store_path):
    store = open_event_store(store_path)
    out = {}
    for split in store.splits:  # train, val, test
        s = store[split]
        recs = s.attrs["recordings"]
        for k in range(len(s)):
            ev, label = s[k]
            w = tuple(int(v) for v in s.window_us[k])
            out.setdefault(recs[int(s.recording[k])]["name"], []).append((ev, label, w, split))
    return store, out


def test_every_format_one_store(folder, tmp_path):
    raw, truth = folder
    out = tmp_path / "s.zarr"
    spec = get_spec("recordings").configure(name="mycam")
    attrs = ingest(spec, raw, out, IngestConfig(**SMALL), progress=False)
    store, got = _samples(out)
    assert store.attrs["dataset"] == "mycam" and store.attrs["classes"] == ["clap", "wave"]
    assert store.attrs["sensor_size"] == [128, 128, 2]
    assert store.attrs["split_scheme"] == "random:0"
    assert sorted(got) == sorted(truth)
    for name, (x, y, t, p) in truth.items():
        if name == "session.aedat4":
            (ev0, l0, w0, _), (ev1, l1, w1, _) = got[name]
            assert (l0, w0, l1, w1) == (1, (100000, 900000), 0, (1000000, 2500000))
            sel = (t >= 100000) & (t < 900000)
            np.testing.assert_array_equal(ev0["t"], t[sel])
            np.testing.assert_array_equal(ev0["x"], x[sel])
            continue
        [(ev, label, _, _)] = got[name]
        assert label == ["clap", "wave"].index(name.split("/")[0])
        np.testing.assert_array_equal(ev["t"], t)
        np.testing.assert_array_equal(ev["x"], x)
        np.testing.assert_array_equal(ev["y"], y)
        np.testing.assert_array_equal(ev["p"], p)
    formats = {s["name"]: s.get("format") for s in attrs["sources"] if "format" in s}
    assert formats == {"clap/a.aedat4": "AEDAT 4.0", "clap/b.aedat": "AEDAT 3.1", "wave/c.npy": "npy",
                       "wave/d.h5": "HDF5", "wave/e.aedat": "AEDAT 2.0", "session.aedat4": "AEDAT 4.0"}
    assert "session_labels.csv" in {s["name"] for s in attrs["sources"]}
    # the documented random:0 rule: sorted paths, default_rng(0) permutation, round(0.2 * 6) = 1 held out
    test = {n for n, v in got.items() if v[0][3] == "test"}
    assert test == set(_random_split(sorted(truth), "random:0")["test"]) and len(test) == 1
    # validation: the csv-labelled session.aedat4 is on the training side, so no per-class carving: ceil(0.2 * 5)
    # = 1 recording, the last training one in path order
    assert test == {"wave/c.npy"}
    assert {n for n, v in got.items() if v[0][3] == "val"} == {"wave/e.aedat"}
    assert store.attrs["validation"]["recordings"] == ["wave/e.aedat"]


def test_trials_lists_and_their_errors(folder, tmp_path):
    raw, truth = folder
    names = sorted(truth)
    (raw / "trials_to_train.txt").write_text("\n".join(names[:4]) + "\n")
    (raw / "trials_to_test.txt").write_text("# held out\n" + "\n".join(names[4:]) + "\n")
    attrs = ingest(get_spec("recordings"), raw, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)
    assert attrs["split_scheme"] == "trials"
    store, got = _samples(tmp_path / "s.zarr")
    assert {n for n, v in got.items() if v[0][3] == "test"} == set(names[4:])
    (raw / "trials_to_test.txt").write_text(names[4] + "\n")  # names[5] is now in neither list
    with pytest.raises(RawDataError, match=rf"{names[5]}: recording is in neither"):
        ingest(get_spec("recordings"), raw, tmp_path / "t.zarr", IngestConfig(**SMALL), progress=False)
    (raw / "trials_to_test.txt").write_text(f"{names[4]}\n{names[5]}\nwave/nothere.npy\n")
    with pytest.raises(RawDataError, match=r"trials_to_test.txt, row 3: 'wave/nothere.npy' is not a recording"):
        ingest(get_spec("recordings"), raw, tmp_path / "t.zarr", IngestConfig(**SMALL), progress=False)
    (raw / "trials_to_test.txt").write_text(f"{names[4]}\n{names[5]}\n{names[0]}\n")
    with pytest.raises(RawDataError, match=r"row 3: .* listed twice"):
        ingest(get_spec("recordings"), raw, tmp_path / "t.zarr", IngestConfig(**SMALL), progress=False)
    assert not (tmp_path / "t.zarr").exists()


def test_bad_input_names_file_and_row(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    write_aedat31(raw / "a" / "r1.aedat", *stream(rng, 100))
    write_aedat31(raw / "a" / "r2.aedat", *stream(rng, 100))
    spec = get_spec("recordings")
    run = lambda s=spec: ingest(s, raw, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)  # noqa: E731
    (raw / "a" / "junk.npy").write_bytes(b"PK\x03\x04 not events")
    with pytest.raises(RawDataError, match=r"junk\.npy at byte 0: unknown format"):
        run()
    (raw / "a" / "junk.npy").unlink()
    write_aedat31(raw / "a" / "big.aedat", *stream(rng, 100, size=300),
                  header_lines=("#Format: RAW", "#Source 1: DAVIS346B"))
    with pytest.raises(RawDataError, match=r"(r1|big)\.aedat: mixed sensor sizes"):
        run()
    (raw / "a" / "big.aedat").unlink()
    with pytest.raises(RawDataError, match=r"r1\.aedat: its header says a 128x128 sensor, --sensor-size says 64x64"):
        run(spec.configure(sensor_size=(64, 64)))
    (raw / "a" / "r1_labels.csv").write_text("class,start_us,end_us\nclap,10,20\nclap,30,abc\n")
    with pytest.raises(RawDataError, match=r"r1_labels\.csv, row 3: start_us and end_us must be integers"):
        run()
    (raw / "a" / "r1_labels.csv").write_text("clap,50,20\n")
    with pytest.raises(RawDataError, match=r"r1_labels\.csv, row 1: window end 20 is not after its start 50"):
        run()
    (raw / "a" / "r1_labels.csv").unlink()
    (raw / "a" / "r9_labels.csv").write_text("clap,1,2\n")
    with pytest.raises(RawDataError, match=r"r9_labels\.csv: label csv of no recording"):
        run()
    (raw / "a" / "r9_labels.csv").unlink()
    (raw / "recordings.json").write_text(json.dumps({"classes": ["b"]}))
    with pytest.raises(RawDataError, match=r"r1\.aedat: no label csv, and its folder label 'a' is not in"):
        run()
    (raw / "recordings.json").write_text(json.dumps({"clases": ["a"]}))
    with pytest.raises(RawDataError, match=r"recordings\.json: unknown key\(s\) \['clases'\]"):
        run()
    (raw / "recordings.json").unlink()
    assert not (tmp_path / "s.zarr").exists()


def test_npy_needs_a_sensor_size_and_p_must_be_binary(tmp_path):
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        write_npy(raw / f"r{k}.npy", *stream(rng, 50, size=40))
    spec = get_spec("recordings")
    with pytest.raises(RawDataError, match=r"r0\.npy: its format \(npy\) does not record the sensor size"):
        ingest(spec, raw, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)
    attrs = ingest(spec.configure(sensor_size=(40, 40)), raw, tmp_path / "s.zarr", IngestConfig(**SMALL),
                   progress=False)
    assert attrs["sensor_size"] == [40, 40, 2] and attrs["classes"] == ["unlabeled"]
    x, y, t, p = stream(rng, 50, size=40)
    p[7] = -1
    write_npy(raw / "r0.npy", x, y, t, p, dtype=np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "i1"), ("t", "<i8")]))
    with pytest.raises(RawDataError, match=r"r0\.npy: event 7: p=-1 is outside \[0, 1\]"):
        ingest(spec.configure(sensor_size=(40, 40)), raw, tmp_path / "t.zarr", IngestConfig(**SMALL), progress=False)


def test_a_dvs_gesture_folder_read_as_recordings_equals_the_dvs_gesture_reader(tmp_path):
    """The official layout (trials lists, 1-based numeric classes, csv header) is a valid recordings folder."""
    from tests.conftest import make_gesture_tree

    tree = make_gesture_tree(tmp_path / "raw")
    a = ingest(get_spec("dvs_gesture"), tree.root, tmp_path / "g.zarr", IngestConfig(**SMALL), progress=False)
    b = ingest(get_spec("recordings"), tree.root, tmp_path / "r.zarr", IngestConfig(**SMALL), progress=False)
    assert b["split_scheme"] == "trials" and b["classes"] == [str(c) for c in range(1, 12)]
    assert a["counts"] == b["counts"]
    ga, gb = open_event_store(tmp_path / "g.zarr"), open_event_store(tmp_path / "r.zarr")
    for split in ("train", "test"):
        sa, sb = ga[split], gb[split]
        np.testing.assert_array_equal(sa.labels, sb.labels)
        np.testing.assert_array_equal(sa.offsets, sb.offsets)
        np.testing.assert_array_equal(sa.window_us, sb.window_us)
        n = int(sa.offsets[-1])
        for k, v in sa.event_slice(0, n).items():
            np.testing.assert_array_equal(v, sb.event_slice(0, n)[k])


def test_one_recording_needs_trials_lists(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_aedat31(raw / "only.aedat", *stream(np.random.default_rng(3), 100))
    with pytest.raises(RawDataError, match=r"needs at least 2"):
        ingest(get_spec("recordings"), raw, tmp_path / "s.zarr", IngestConfig(**SMALL), progress=False)


def test_sniffing_is_by_bytes():
    assert sniff_format(b"#!AER-DAT4.0\r\n....", "f.npy") == "AEDAT 4.0"
    assert sniff_format(b"\x93NUMPY\x01\x00", "f.aedat") == "npy"
    assert sniff_format(b"# jAER comment\r\n", "f.aedat") == "AEDAT 2.0"
    with pytest.raises(RawDataError, match=r"AEDAT version 1.0 is not supported"):
        sniff_format(b"#!AER-DAT1.0\r\n", "f.aedat")


def test_cli_ingest_bin_train(folder, tmp_path, monkeypatch):
    """The same CLI as the built-in datasets: the user's --name finds the store, caches and recipes."""
    raw, _ = folder
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(tmp_path / v.split("/", 1)[1]) for k, v in params["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    q = ["--no-progress"]
    assert ingest_stage.main(["recordings", "--raw", str(raw), "--name", "mycam", *q]) == 0
    store = tmp_path / "events" / "mycam.zarr"
    assert open_event_store(store).attrs["dataset"] == "mycam"
    assert bin_stage.main(["mycam", "--T", "4", "--out-size", "16", "16", *q]) == 0
    assert len(list((tmp_path / "frames" / "mycam").iterdir())) == 3  # train, val, test
    assert train_stage.main(["mycam", "--epochs", "1", "--set", "bin.out_size=[16,16]", "--set", "train.T_s=2",
                             "--set", "train.batch_size=4", *q]) == 0
    assert (tmp_path / "runs" / "mycam" / "tssd" / "checkpoint.pt").is_file()


def test_cli_rejects_name_for_other_datasets(capsys):
    with pytest.raises(SystemExit):
        ingest_stage.main(["dvs_gesture", "--name", "x"])
    assert "--name and --sensor-size are options of `recordings`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ingest_stage.main(["recordings", "--name", "dvs_gesture"])
