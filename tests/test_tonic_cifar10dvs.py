"""`--from-tonic cifar10_dvs`: a tonic CIFAR10DVS tree of dv-processing-written .aedat4 files, ingested through
tonic's own dataset class and compared with ``tonic.datasets.CIFAR10DVS(save_to)[i]`` event by event.

tonic 1.7's tree (``CIFAR10DVS._check_exists``): ``<save_to>/CIFAR10DVS/CIFAR10DVS.zip`` (existence only) and at
least 1000 ``*.aedat4`` files below it; labels come from each file's folder name. Fewer files and tonic's
constructor would start a download, so the tree really holds 1000 small files (10 classes x 100, ~3 ms each).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import IngestConfig
from pipeline.datasets.cifar10_dvs import CLASSES
from pipeline.ingest import ingest, main
from pipeline.datasets.tonic_trees import tonic_spec
from pipeline.store import open_event_store
from tests.dv_files import write_dv

pytest.importorskip("aedat")
pytest.importorskip("dv_processing")
PER_CLASS = 100


@pytest.fixture(scope="module")
def tonic_tree(tmp_path_factory):
    save_to = tmp_path_factory.mktemp("tonic")
    root = save_to / "CIFAR10DVS"
    rng = np.random.default_rng(7)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            n = int(rng.integers(5, 30))
            t = np.sort(rng.integers(0, 1_000_000, n)).astype(np.int64)
            write_dv(root / cls / f"cifar10_{cls}_{i}.aedat4", rng.integers(0, 128, n), rng.integers(0, 128, n), t,
                     rng.integers(0, 2, n), camera="DVS128", resolution=(128, 128))
    (root / "CIFAR10DVS.zip").write_bytes(b"")  # tonic checks that the archive exists, not its content
    return save_to


def test_from_tonic_cifar10_dvs_matches_tonic_item_by_item(tonic_tree, tmp_path):
    import tonic.datasets

    out = tmp_path / "c.zarr"
    attrs = ingest(tonic_spec("cifar10_dvs"), tonic_tree, out, IngestConfig(chunk_events=1024, shard_events=4096),
                   progress=False)
    ref = tonic.datasets.CIFAR10DVS(str(tonic_tree))
    by_file = {p: i for i, p in enumerate(ref.data)}
    store = open_event_store(out)
    n = {"train": 0, "val": 0, "test": 0}
    for split in ("train", "val", "test"):
        s = store[split]
        recs = s.attrs["recordings"]
        cols = s.event_slice(0, int(s.offsets[-1]))  # one read (a zarr read per sample costs ~10 ms)
        for k in range(len(s)):
            a, b = s.offsets[k], s.offsets[k + 1]
            ev, label = {f: v[a:b] for f, v in cols.items()}, int(s.labels[k])
            rec = recs[int(s.recording[k])]
            events, target = ref[by_file[str(tonic_tree / rec["name"])]]
            assert label == target == CLASSES.index(rec["name"].split("/")[1])
            np.testing.assert_array_equal(ev["t"], events["t"].astype(np.int64))
            np.testing.assert_array_equal(ev["x"], events["x"])
            np.testing.assert_array_equal(ev["y"], events["y"])
            np.testing.assert_array_equal(ev["p"], events["p"].astype(np.uint8))
            n[split] += 1
    # the 'tet' split: per class, indices 0..89 train side, 90..99 test; validation (0.1 per class): 81..89
    assert n == {"train": 810, "val": 90, "test": 100}
    assert {r["index"] for r in store["val"].attrs["recordings"]} == set(range(81, 90))
    assert attrs["counts"]["events_read"] == attrs["counts"]["stored"]


def test_from_tonic_cli_refuses_an_incomplete_tree(tonic_tree, tmp_path, capsys):
    zip_ = tonic_tree / "CIFAR10DVS" / "CIFAR10DVS.zip"
    zip_.rename(zip_.with_suffix(".moved"))
    try:
        code = main(["cifar10_dvs", "--from-tonic", str(tonic_tree), "--out", str(tmp_path / "x.zarr"),
                     "--no-progress"])
    finally:
        zip_.with_suffix(".moved").rename(zip_)
    assert code == 2
    assert "tonic's CIFAR10DVS files are not complete" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
