"""The validation split: carved from the training side at ingest (whole users / per-class recordings), recorded
in the store's manifest, disjoint from train and test; selection reads it, never test; no wall-clock in the
tracked outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError, IngestConfig
from pipeline.datasets import get_spec
from pipeline.datasets.base import Recording, carve_validation, check_plan_disjoint, val_size
from pipeline.datasets.cifar10_dvs import CLASSES as CIFAR_CLASSES
from pipeline.ingestion import ingest
from pipeline.io.errors import RawDataError
from pipeline.store import open_event_store

from tests.conftest import make_cifar_tree, make_gesture_tree

SMALL = {"chunk_events": 4096, "shard_events": 8192}


def _recs(users: list[int], per_user: int = 3) -> list[Recording]:
    return [Recording(Path(f"user{u:02d}_{k}.aedat"), f"user{u:02d}_{k}.aedat", {"user": u})
            for k in range(per_user) for u in users]


# ------------------------------------------------------------------------------------------ carve_validation
def test_whole_users_last_in_user_order_and_order_kept():
    train = _recs([3, 1, 10, 2, 23, 20])  # listing order is not user order (10 sorts after 3, as an int)
    kept, val = carve_validation(train, lambda r: r.meta["user"], n_groups=2)
    assert {r.meta["user"] for r in val} == {20, 23} and {r.meta["user"] for r in kept} == {1, 2, 3, 10}
    assert kept == [r for r in train if r in kept] and val == [r for r in train if r in val]  # order of train
    assert len(kept) + len(val) == len(train) and not set(map(id, kept)) & set(map(id, val))
    # deterministic: the same input gives the same split, whatever the listing order
    again = carve_validation(list(reversed(train)), lambda r: r.meta["user"], n_groups=2)[1]
    assert sorted(r.name for r in again) == sorted(r.name for r in val)


def test_fraction_rounds_up_and_never_takes_every_group():
    users = list(range(1, 24))  # DVS-Gesture's 23 official training users
    _, val = carve_validation(_recs(users), lambda r: r.meta["user"], **val_size(0.15))
    assert sorted({r.meta["user"] for r in val}) == [20, 21, 22, 23]  # ceil(0.15 * 23) = 4
    _, val = carve_validation(_recs(list(range(1, 25))), lambda r: r.meta["user"], **val_size(0.15))
    assert sorted({r.meta["user"] for r in val}) == [21, 22, 23, 24]  # digits_dvs: ceil(3.6) = 4 of 24
    kept, val = carve_validation(_recs([5]), lambda r: r.meta["user"], fraction=0.5)
    assert val == [] and len(kept) == 3  # a single group stays in train
    assert carve_validation(_recs([1, 2]), lambda r: r.meta["user"], n_groups=0)[1] == []


def test_too_many_groups_is_a_config_error():
    with pytest.raises(ConfigError, match="needs more than 2 training groups"):
        carve_validation(_recs([1, 2]), lambda r: r.meta["user"], n_groups=2)
    for bad in (-1, 1.5, True, float("nan")):
        with pytest.raises(ConfigError, match="ingest.val"):
            val_size(bad)
    with pytest.raises(ValueError, match="exactly one"):
        carve_validation(_recs([1, 2]), lambda r: r.meta["user"])


def test_per_class_takes_the_highest_indices_of_each_class():
    train = [Recording(Path(f"{c}/{i}"), f"{c}/cifar10_{c}_{i}.aedat", {"label": k, "index": i})
             for k, c in enumerate(CIFAR_CLASSES[:3]) for i in range(900)]
    kept, val = carve_validation(train, lambda r: (r.meta["label"], r.meta["index"]), fraction=0.1,
                                 per_class=lambda r: r.meta["label"])
    assert len(val) == 270 and len(kept) == 2430  # 90 per class: 0.1 * 900 is not rounded up to 91
    for k in range(3):
        assert sorted(r.meta["index"] for r in val if r.meta["label"] == k) == list(range(810, 900))
    with pytest.raises(ValueError, match="classes"):  # a group spanning two classes cannot be carved per class
        carve_validation(train, lambda r: r.meta["index"], fraction=0.1, per_class=lambda r: r.meta["label"])


def test_plan_disjointness_is_checked(tmp_path):
    a, b = _recs([1]), _recs([2])
    check_plan_disjoint({"train": a, "val": b, "test": []}, tmp_path)
    with pytest.raises(RawDataError, match="both the train and the val split"):
        check_plan_disjoint({"train": a, "val": a[:1], "test": b}, tmp_path)


# ------------------------------------------------------------------------------------------ in the store
def test_gesture_store_holds_whole_user_val_in_its_manifest(tmp_path):
    tree = make_gesture_tree(tmp_path / "raw", users=(1, 2, 3, 4, 5, 6, 7), n_events=2000, overflow=False)
    raw_before = {p.name: p.read_bytes() for p in tree.root.iterdir()}
    out = tmp_path / "g.zarr"
    ingest(get_spec("dvs_gesture"), tree.root, out, IngestConfig(val={"dvs_gesture": 2}, **SMALL), progress=False)
    store = open_event_store(out)
    assert store.splits == ["train", "val", "test"]
    users = {s: {r["user"] for r in store[s].attrs["recordings"]} for s in store.splits}
    assert users == {"train": {1, 2, 3, 4}, "val": {5, 6}, "test": {7}}
    v = store.attrs["validation"]
    assert v["size"] == 2 and v["users"] == [5, 6] and v["rule"].startswith("whole users")
    assert v["recordings"] == ["user05_fluorescent_led.aedat", "user06_fluorescent_led.aedat"]
    assert len(store["val"]) == 22 and len(store["train"]) == 44 and len(store["test"]) == 11
    # the raw files (trials lists included) are untouched: carving happens at ingest
    assert {p.name: p.read_bytes() for p in tree.root.iterdir()} == raw_before
    # another validation size is another store (its id hashes the carving)
    other = tmp_path / "g1.zarr"
    ingest(get_spec("dvs_gesture"), tree.root, other, IngestConfig(val={"dvs_gesture": 1}, **SMALL), progress=False)
    assert open_event_store(other).store_id != store.store_id
    none = tmp_path / "g0.zarr"
    ingest(get_spec("dvs_gesture"), tree.root, none, IngestConfig(val={"dvs_gesture": 0}, **SMALL), progress=False)
    assert open_event_store(none).splits == ["train", "test"] and len(open_event_store(none)["train"]) == 66


def test_cifar_val_is_per_class_from_the_training_side(tmp_path):
    tree = make_cifar_tree(tmp_path / "raw", per_class=20, n_events=20)
    out = tmp_path / "c.zarr"
    ingest(get_spec("cifar10_dvs"), tree.root, out, IngestConfig(**SMALL), progress=False)
    store = open_event_store(out)
    names = {s: [r["name"] for r in store[s].attrs["recordings"]] for s in store.splits}
    assert not (set(names["train"]) & set(names["val"]) or set(names["val"]) & set(names["test"])
                or set(names["train"]) & set(names["test"]))
    idx = {s: {(r["label"], r["index"]) for r in store[s].attrs["recordings"]} for s in store.splits}
    assert idx["val"] == {(k, 16) for k in range(10)} | {(k, 17) for k in range(10)}  # ceil(0.1 * 18) = 2
    assert idx["test"] == {(k, i) for k in range(10) for i in (18, 19)}  # tet: untouched by the carving
    assert np.bincount([r["label"] for r in store["val"].attrs["recordings"]], minlength=10).tolist() == [2] * 10
    assert store.attrs["validation"]["size"] == 0.1 and len(store.attrs["validation"]["recordings"]) == 20


def test_recordings_val_is_whole_recordings_per_folder_class(tmp_path):
    from pipeline.events import make_events

    raw = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for cls in ("clap", "wave"):
        (raw / cls).mkdir(parents=True)
        for k in range(5):
            n = 50
            ev = make_events(rng.integers(0, 16, n), rng.integers(0, 16, n), np.sort(rng.integers(0, 10_000, n)),
                             rng.integers(0, 2, n))
            np.save(raw / cls / f"rec{k}.npy", ev)
    spec = get_spec("recordings").configure(sensor_size=(16, 16)).for_raw(raw)
    plan = spec.recordings(raw, "random:0")
    assert {r.name for r in plan["val"]} <= {r.name for r in spec.recordings(raw, "random:0", 0)["train"]}
    check_plan_disjoint(plan, raw)
    # per class: the last ceil(0.2 n) training recordings of each class, in path order
    for cls in ("clap", "wave"):
        tr = sorted(r.name for r in plan["train"] + plan["val"] if r.name.startswith(cls))
        k = -(-len(tr) * 2 // 10)
        assert sorted(r.name for r in plan["val"] if r.name.startswith(cls)) == tr[len(tr) - k:]


def test_digits_dvs_val_is_the_last_training_users(tmp_path):
    from pipeline.datasets.digits_dvs import DigitsDVSConfig
    from pipeline.generate import run as generate

    cfg = DigitsDVSConfig(n_samples=60, users=6, test_users=1, sensor=16, digit_px=8, saccade_px=2.0,
                          saccade_us=20_000, gap_us=4000, dt_us=1000, refractory_us=500)
    generate(cfg, tmp_path / "raw", workers=1, progress=False)
    plan = get_spec("digits_dvs").recordings(tmp_path / "raw", "official", 0.4)  # ceil(0.4 * 5) = 2 users
    users = {s: sorted({r.meta["user"] for r in recs}) for s, recs in plan.items()}
    assert users == {"train": [1, 2, 3], "val": [4, 5], "test": [6]}
