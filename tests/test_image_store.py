"""The image store and the ingest_images stage, on releases written in their real formats.

CIFAR tarballs come from `tests.image_files` (the Python 2 cPickle stream of the release, built opcode by opcode),
and every image is compared with the bytes put into the tarball, read the way the CIFAR page describes them (R, G, B
planes); the ImageNet tree's JPEGs are checked against Pillow's own decode of the same files; digits_img against
scikit-learn's arrays. Stores are also opened with plain zarr / h5py.
"""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline.datasets.images import IMAGE_DATASETS, DigitsImgConfig, carve_per_class
from pipeline.image_store import FORMAT, ImageStoreWriter, StoreError, open_image_store
from pipeline.ingest_images import ingest_images, main
from pipeline.io.checksums import md5sum
from pipeline.io.errors import RawDataError
from tests.image_files import WNIDS, _planes_to_image, imagenet_tree, write_cifar10, write_cifar100

FORMATS = ["zarr", "h5"]


def _raw_truth(truth_split) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) and labels of a tarball split, as the tests' writer put them in, in release order."""
    rows = np.concatenate([d for d, _ in truth_split])
    labels = np.asarray(sum((list(lab) for _, lab in truth_split), []))
    return np.stack([_planes_to_image(r) for r in rows]), labels


def _expected_val(labels: np.ndarray, f: float) -> set[int]:
    """The rule, written out independently: per class, the last ceil(f * n_class) training indices."""
    out = set()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(int(np.ceil(round(f * len(idx), 9))), len(idx) - 1)
        out.update(idx[len(idx) - k:].tolist())
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_cifar10_round_trip_image_by_image(tmp_path, fmt):
    tar = tmp_path / "cifar-10-python.tar.gz"
    truth = write_cifar10(tar, per_batch=60)  # 300 train, 60 test
    out = tmp_path / f"cifar10.{fmt}"
    ingest_images(IMAGE_DATASETS["cifar10"], tmp_path, out, fmt, val=0.1, options={"check_md5": False},
                  progress=False)
    store = open_image_store(out)
    assert store.attrs["format"] == FORMAT and store.splits == ["train", "val", "test"]
    assert store.image_shape == (3, 32, 32) and store.classes == [f"class{i}" for i in range(10)]
    assert store.attrs["sources"][0]["md5"] == md5sum(tar) and store.attrs["sources"][0]["name"] == tar.name
    tr_img, tr_lab = _raw_truth(truth["train"])
    te_img, te_lab = _raw_truth(truth["test"])
    val = _expected_val(tr_lab, 0.1)
    seen = []
    for split, (img, lab) in {"train": (tr_img, tr_lab), "val": (tr_img, tr_lab), "test": (te_img, te_lab)}.items():
        s = store[split]
        src = s.source_index
        assert s.load().shape == (len(s), 3, 32, 32) and s.load().dtype == np.uint8 and s.load().flags.c_contiguous
        for j in range(len(s)):  # image by image, label by label
            np.testing.assert_array_equal(s.images(j, j + 1)[0], img[src[j]])
            assert s.labels[j] == lab[src[j]]
        np.testing.assert_array_equal(s.images(5, 17), s.load()[5:17])
        if split != "test":
            seen.append(set(src.tolist()))
            assert list(src) == sorted(src)  # release order kept
    assert seen[1] == val and seen[0] | seen[1] == set(range(300)) and not seen[0] & seen[1]
    assert sorted(store["test"].source_index) == list(range(60))
    counts = np.bincount(store["val"].labels, minlength=10)
    assert (counts == [3] * 10).all()  # 30 per class in train, ceil(0.1 * 30) = 3 per class in val
    # mean / std: the train split's, on the 0..1 scale, per channel
    train = tr_img[store["train"].source_index].astype(np.float64) / 255
    np.testing.assert_allclose(store.attrs["mean"], train.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(store.attrs["std"], train.std(axis=(0, 2, 3)), rtol=1e-9)


def test_cifar100_fine_and_coarse_labels_and_formats_agree(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python.tar.gz", n_train=400, n_test=60)
    ids = {}
    for fmt in FORMATS:
        out = tmp_path / f"c100.{fmt}"
        ingest_images(IMAGE_DATASETS["cifar100"], tmp_path, out, fmt, val=1, options={"check_md5": False},
                      progress=False)
        store = open_image_store(out)
        ids[fmt] = store.store_id
        assert len(store.classes) == 100 and len(store.attrs["coarse_classes"]) == 20
        for split in store.splits:
            s = store[split]
            assert s.attrs["extra_arrays"] == ["coarse_label"]
            np.testing.assert_array_equal(s.coarse_label, s.labels // 5)  # the writer's rule: coarse = fine // 5
            np.testing.assert_array_equal(s.extras["coarse_label"], s.coarse_label)
        # fine label f is every 7th index: each class has 4 train images, val takes one (the last) per class
        assert len(store["val"]) == 100 and np.bincount(store["val"].labels, minlength=100).tolist() == [1] * 100
    assert ids["zarr"] == ids["h5"]  # a content hash: the same images in either backend


def test_store_readable_with_plain_zarr_and_h5py(tmp_path):
    truth = write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=20)
    tr_img, _ = _raw_truth(truth["train"])
    for fmt in FORMATS:
        out = tmp_path / f"c.{fmt}"
        ingest_images(IMAGE_DATASETS["cifar10"], tmp_path, out, fmt, val=0, options={"check_md5": False},
                      progress=False)
        if fmt == "zarr":
            g = zarr.open_group(out, mode="r")
            attrs, imgs, lab, src = dict(g.attrs), g["train/images"][:], g["train/label"][:], g["train/source_index"][:]
        else:
            with h5py.File(out, "r") as f:
                attrs = {k: json.loads(v) for k, v in f.attrs.items()}
                imgs, lab, src = f["train/images"][:], f["train/label"][:], f["train/source_index"][:]
        assert attrs["splits"] == ["train", "test"] and attrs["complete"] is True  # val = 0: no val split
        assert imgs.dtype == np.uint8 and imgs.shape == (100, 3, 32, 32) and lab.dtype == np.int64
        np.testing.assert_array_equal(imgs, tr_img[src])


def test_md5_and_layout_errors_named(tmp_path, capsys):
    tar = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    tar.parent.mkdir()
    write_cifar10(tar, per_batch=4)
    out = tmp_path / "s.zarr"
    assert main(["cifar10", "--raw", str(tar.parent), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{tar}: md5 {md5sum(tar)} differs from the official c58f30108f718f92721af3b95e74349a" in err
    assert not out.exists()
    write_cifar10(tar, per_batch=4, drop="data_batch_2")
    assert main(["cifar10", "--raw", str(tar.parent), "--out", str(out), "--no-progress", "--no-md5"]) == 1
    assert f"{tar}: has no member 'cifar-10-batches-py/data_batch_2'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["cifar100", "--raw", str(tmp_path / "nowhere"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in err and "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in err


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_half_written_after_a_failure(tmp_path, fmt):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=40)
    out = tmp_path / f"c.{fmt}"
    spec = IMAGE_DATASETS["cifar10"]
    raw = spec.read(tmp_path, 0.1, {"check_md5": False})
    good = {k: s.blocks for k, s in raw.splits.items()}

    def dying(n):  # a reader that fails after the first block of the test split
        yield from good["test"](7)
        raise RawDataError(tmp_path / "x", "killed mid-write")

    raw.splits["test"].blocks = dying
    from pipeline.ingest_images import write_image_store

    with pytest.raises(RawDataError, match="killed mid-write"):
        write_image_store(spec, raw, out, fmt, progress=False)
    assert not out.exists() and list(tmp_path.glob(f"c.{fmt}*")) == []
    # an earlier complete store survives a failed rewrite
    raw.splits["test"].blocks = good["test"]
    write_image_store(spec, raw, out, fmt, progress=False)
    sid = open_image_store(out).store_id
    raw.splits["test"].blocks = dying
    with pytest.raises(RawDataError):
        write_image_store(spec, raw, out, fmt, progress=False)
    assert open_image_store(out).store_id == sid


def test_damage_refused_naming_path_split_array(tmp_path):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=40)
    out = tmp_path / "c.zarr"
    ingest_images(IMAGE_DATASETS["cifar10"], tmp_path, out, "zarr", val=0.1, options={"check_md5": False},
                  progress=False)
    shard = next((out / "train" / "images").rglob("c/*/0/0/0"))
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # same size: the inventory passes; the chunk does not decompress
    shard.write_bytes(bytes(data))
    s = open_image_store(out)["train"]
    with pytest.raises(StoreError, match=r"c.zarr split 'train' array 'images' rows 0:\d+ cannot be read"):
        s.load()
    shard.unlink()
    with pytest.raises(StoreError, match=r"c.zarr is damaged: train/images/c/0/0/0/0 is missing"):
        open_image_store(out)
    # an array that disagrees with the attributes
    out2 = tmp_path / "d.h5"
    with ImageStoreWriter(out2, "x", ["a", "b"], (1, 2, 2), "h5") as w:
        sw = w.split("train", np.array([0, 1]), np.array([0, 1]))
        sw.write(np.zeros((2, 1, 2, 2), np.uint8))
        w.finish_split("train")
        w.finish({})
    with h5py.File(out2, "r+") as f:
        del f["train/label"]
        f["train/label"] = np.array([0, 1, 1])
    with pytest.raises(StoreError, match=r"d.h5 split 'train' is inconsistent: array 'label' is int64 \(3,\)"):
        open_image_store(out2)["train"]
    with h5py.File(out2, "r+") as f:
        del f["train/source_index"]
    with pytest.raises(StoreError, match=r"d.h5 split 'train' has no array 'source_index'"):
        open_image_store(out2)["train"]


def test_writer_refuses_wrong_images_and_counts(tmp_path):
    with pytest.raises(ValueError, match="images must be uint8"):
        with ImageStoreWriter(tmp_path / "a.zarr", "x", ["a"], (1, 2, 2)) as w:
            w.split("train", np.zeros(2, int), np.arange(2)).write(np.zeros((2, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="1 images written, its labels say 2"):
        with ImageStoreWriter(tmp_path / "a.zarr", "x", ["a"], (1, 2, 2)) as w:
            w.split("train", np.zeros(2, int), np.arange(2)).write(np.zeros((1, 1, 2, 2), np.uint8))
            w.finish_split("train")
    with pytest.raises(StoreError, match="finish\\(\\) was not called"):
        with ImageStoreWriter(tmp_path / "a.zarr", "x", ["a"], (1, 2, 2)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_split_pickles_with_resident_images(tmp_path):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=10)
    out = tmp_path / "c.zarr"
    ingest_images(IMAGE_DATASETS["cifar10"], tmp_path, out, "zarr", val=0, options={"check_md5": False},
                  progress=False)
    s = open_image_store(out)["train"]
    copy = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(copy.images(3, 9), s.images(3, 9))
    s.load()
    assert s.loaded and np.shares_memory(s.images(2, 4), s.load())


def test_carve_per_class_rule():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 2, 2])
    tr, va = carve_per_class(np.arange(9), labels, 0.5, "ingest.val.x")
    # ceil(0.5 n) per class: class 0 the last 2 of 4, class 1 the last 2 of 3, class 2 the last 1 of 2
    assert va.tolist() == [3, 4, 5, 6, 8] and tr.tolist() == [0, 1, 2, 7]
    tr, va = carve_per_class(np.arange(9), labels, 1, "ingest.val.x")
    assert va.tolist() == [5, 6, 8]


@pytest.mark.parametrize("flat", [False, True], ids=["val_class_folders", "val_flat_devkit"])
def test_imagenet_tree_against_pillow(tmp_path, flat):
    val_labels = imagenet_tree(tmp_path / "raw", flat_val=flat)
    out = tmp_path / "in.zarr"
    attrs = ingest_images(IMAGE_DATASETS["imagenet"], tmp_path / "raw", out, "zarr", val=1,
                          options={"size": 24, "workers": 2}, progress=False)
    store = open_image_store(out)
    assert store.image_shape == (3, 24, 24) and store.classes == list(WNIDS)
    assert [s["name"] for s in attrs["sources"]] == ["train/", "val/"] and attrs["sources"][0]["files"] == 7
    train_files = sorted((tmp_path / "raw" / "train").glob("*/*.JPEG"))
    val_files = sorted((tmp_path / "raw" / "val").rglob("*.JPEG"), key=lambda p: p.name)
    if not flat:  # class folders: listed class by class
        val_files = sorted(val_files, key=lambda p: (p.parent.name, p.name))

    def pillow(path):  # the independent reference: Pillow's full decode, short side -> 24 bilinear, center crop
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = 24 / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR, reducing_gap=None)
        a = np.asarray(im)
        top, left = (a.shape[0] - 24) // 2, (a.shape[1] - 24) // 2
        return a[top:top + 24, left:left + 24].transpose(2, 0, 1).astype(np.float32)

    n = 0
    for split, files in (("train", train_files), ("val", train_files), ("test", val_files)):
        s = store[split]
        for j in range(len(s)):
            path = files[s.source_index[j]]
            assert s.labels[j] == WNIDS.index(path.parent.name if split != "test" or not flat else
                                              WNIDS[val_labels[int(path.stem[-8:]) - 1]])
            assert np.abs(s.images(j, j + 1)[0].astype(np.float32) - pillow(path)).mean() < 6.0
            n += 1
    assert n == 7 + 4 and len(store["val"]) == 3  # one per class carved from train
    assert store["val"].source_index.tolist() == [2, 4, 6]  # the last file of each class folder


def test_digits_img_against_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    out = tmp_path / "d.zarr"
    ingest_images(IMAGE_DATASETS["digits_img"], tmp_path, out, "zarr", val=0.15,
                  options={"digits_img": DigitsImgConfig()}, progress=False)
    store = open_image_store(out)
    assert store.image_shape == (1, 16, 16)
    seen = {}
    for split in store.splits:
        s = store[split]
        img = s.load()
        for j, i in enumerate(s.source_index):
            ref = d.images[i] * 255 / 16  # 0..16 -> 0..255
            np.testing.assert_allclose(img[j, 0, ::2, ::2], ref, atol=0.5)  # each source pixel a 2x2 block
            assert (img[j, 0, ::2, ::2] == img[j, 0, 1::2, 1::2]).all() and (img[j, 0, ::2] == img[j, 0, 1::2]).all()
        np.testing.assert_array_equal(s.labels, d.target[s.source_index])
        seen[split] = set(s.source_index.tolist())
    assert seen["train"] | seen["val"] | seen["test"] == set(range(1797))
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    test_per_class = np.bincount(store["test"].labels, minlength=10)
    assert (test_per_class == np.round(0.2 * np.bincount(d.target))).all()  # stratified 20 %
    assert store.attrs["sources"][0]["name"] == "sklearn/datasets/data/digits.csv.gz"
    # the seed moves the test split, nothing else
    ingest_images(IMAGE_DATASETS["digits_img"], tmp_path, tmp_path / "e.zarr", "zarr", val=0.15,
                  options={"digits_img": DigitsImgConfig(seed=1)}, progress=False)
    assert set(open_image_store(tmp_path / "e.zarr")["test"].source_index.tolist()) != seen["test"]


def test_cli_digits_img_default_paths(tmp_path, monkeypatch, capsys):
    import shutil
    from pathlib import Path

    shutil.copy(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["digits_img", "--no-progress"]) == 0
    assert "digits_img: 1797 images (1, 16, 16)" in capsys.readouterr().out
    store = open_image_store(tmp_path / "data_cache/images/digits_img.zarr")
    assert store.attrs["digits_img"] == {"seed": 0, "size": 16, "test_fraction": 0.2}
    assert main(["digits_img", "--no-progress", "--format", "h5", "--set", "digits_img.size=24"]) == 0
    assert open_image_store(tmp_path / "data_cache/images/digits_img.h5").image_shape == (1, 24, 24)


def test_download_offline_message_md5_and_check_params(tmp_path, monkeypatch, capsys):
    import urllib.error

    import yaml

    from pipeline import download as dl

    def offline(d, dest, timeout_s):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(dl, "_fetch", offline)
    raw = tmp_path / "raw"
    assert dl.main(["cifar10", "--raw", str(raw / "cifar10")]) == 2
    err = capsys.readouterr().err
    assert "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert f"{raw / 'cifar10' / 'cifar-10-python.tar.gz'}  (md5 c58f30108f718f92721af3b95e74349a)" in err
    (raw / "cifar100").mkdir(parents=True)
    write_cifar10(raw / "cifar100" / "cifar-100-python.tar.gz", per_batch=2)  # present, but not the official file
    assert dl.main(["cifar100", "--raw", str(raw / "cifar100")]) == 2
    assert "does not match the official eb9058c3a382ffc7106e4002c42a8d85" in capsys.readouterr().err
    assert dl.main(["imagenet", "--raw", str(raw / "imagenet")]) == 2
    assert "image-net.org" in capsys.readouterr().err and not (raw / "imagenet").exists()
    assert dl.main(["digits_img"]) == 0
    # --check-params demands only what params.yaml selects
    params = yaml.safe_load(open("params.yaml"))
    params["paths"]["raw_root"] = str(raw)
    for selected, code in (([], 0), (["digits_img"], 0), (["digits_img", "cifar10"], 2), (["cifar100"], 0)):
        params["image_datasets"] = selected
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
        assert dl.check_params(tmp_path / "p.yaml") == code, selected
    assert "cifar10: " in capsys.readouterr().err
