"""The CIFAR-10/100 tarball reader, on tarballs built here from the published layout.

The batches are not written by the reader's twin: `_py2_pickle` emits, opcode by opcode, the protocol-2 stream that
Python 2's cPickle and numpy 1.x wrote for the release (a dict of byte-string keys; the array as
``numpy.core.multiarray._reconstruct`` + ``__setstate__`` with the raw bytes), following the pickle spec
(``pickletools``) and the CIFAR page's description of ``data`` (3072 bytes per image: the R plane, then G, then B,
each row-major). The stdlib unpickler must read the crafted bytes the same way (a check on the crafting), and a
batch written by Python 3's own pickler (bytes via ``_codecs.encode``) is read too.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.io.checksums import md5sum
from pipeline.io.cifar import read_cifar
from pipeline.io.errors import RawDataError
from tests.image_files import _images, _planes_to_image, _py2_pickle, _tar, write_cifar10, write_cifar100


# ---------------------------------------------------------------- tests
def test_crafted_py2_pickle_is_what_the_stdlib_reads():
    data = _images(3, 0)
    obj = pickle.loads(_py2_pickle({b"data": data, b"labels": [1, 2, 300]}), encoding="bytes")
    assert obj[b"labels"] == [1, 2, 300]
    np.testing.assert_array_equal(obj[b"data"], data)


@pytest.mark.parametrize("pickler", [_py2_pickle, lambda d: pickle.dumps(d, protocol=2)], ids=["py2", "py3"])
def test_cifar10_round_trip_image_by_image(tmp_path, pickler):
    truth = write_cifar10(tmp_path / "cifar-10-python.tar.gz", pickler=pickler)
    rel = read_cifar(tmp_path / "cifar-10-python.tar.gz", "cifar10", md5=None)
    assert rel.classes == tuple(f"class{i}" for i in range(10)) and rel.coarse_classes is None
    for split, got in (("train", rel.train), ("test", rel.test)):
        rows = np.concatenate([d for d, _ in truth[split]])
        labels = sum((lab for _, lab in truth[split]), [])
        assert got.images.shape == (len(rows), 3, 32, 32) and got.images.dtype == np.uint8
        for i in range(len(rows)):  # image by image, label by label
            np.testing.assert_array_equal(got.images[i], _planes_to_image(rows[i]))
        assert got.labels.tolist() == labels and got.coarse_labels is None
    assert len(rel.train.images) == 5 * 40 and rel.train.filenames[40] == "data_batch_2_0.png"  # batches in order


def test_cifar100_fine_and_coarse_labels(tmp_path):
    truth = write_cifar100(tmp_path / "cifar-100-python.tar.gz")
    rel = read_cifar(tmp_path / "cifar-100-python.tar.gz", "cifar100", md5=None)
    assert len(rel.classes) == 100 and len(rel.coarse_classes) == 20
    for split, got in (("train", rel.train), ("test", rel.test)):
        data, fine = truth[split]
        np.testing.assert_array_equal(got.images.reshape(len(data), 3072), data)
        assert got.labels.tolist() == fine and got.coarse_labels.tolist() == [f // 5 for f in fine]


def test_md5_checked_before_reading(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10(path, per_batch=2)
    read_cifar(path, "cifar10", md5=md5sum(path))
    with pytest.raises(RawDataError, match=r"cifar-10-python.tar.gz: md5 [0-9a-f]{32} differs from the official c58f"):
        read_cifar(path, "cifar10", md5="c58f30108f718f92721af3b95e74349a")


def test_missing_member_named(tmp_path):
    write_cifar10(tmp_path / "c.tar.gz", per_batch=2, drop="data_batch_3")
    with pytest.raises(RawDataError, match="has no member 'cifar-10-batches-py/data_batch_3'"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10", md5=None)


def test_cifar100_tarball_is_not_cifar10(tmp_path):
    write_cifar100(tmp_path / "c.tar.gz", 4, 4)
    with pytest.raises(RawDataError, match="has no member 'cifar-10-batches-py/"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10", md5=None)


def test_bad_label_named_with_member_and_index(tmp_path):
    root = "cifar-10-batches-py"
    good = _py2_pickle({b"labels": [0, 1], b"data": _images(2, 0)})
    members = {f"{root}/batches.meta": _py2_pickle({b"label_names": [b"x"] * 10})}
    members.update({f"{root}/data_batch_{i}": good for i in range(1, 6)})
    members[f"{root}/test_batch"] = _py2_pickle({b"labels": [0, 10], b"data": _images(2, 0)})
    _tar(tmp_path / "c.tar.gz", members)
    with pytest.raises(RawDataError, match=r"'cifar-10-batches-py/test_batch': labels\[1\] = 10 is outside 0..9"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10", md5=None)


def test_wrong_shape_and_truncated_pickle(tmp_path):
    root = "cifar-10-batches-py"
    members = {f"{root}/batches.meta": _py2_pickle({b"label_names": [b"x"] * 10})}
    members.update({f"{root}/data_batch_{i}": _py2_pickle({b"labels": [0], b"data": _images(1, 0)})
                    for i in range(1, 6)})
    members[f"{root}/test_batch"] = _py2_pickle({b"labels": [0], b"data": np.zeros((1, 1024), np.uint8)})
    _tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(RawDataError, match=r"test_batch': data must be uint8 \(N, 3072\), got shape \(1, 1024\)"):
        read_cifar(tmp_path / "a.tar.gz", "cifar10", md5=None)
    members[f"{root}/test_batch"] = _py2_pickle({b"labels": [0], b"data": _images(1, 0)})[:-40]
    _tar(tmp_path / "b.tar.gz", members)
    with pytest.raises(RawDataError, match="test_batch' is not a readable CIFAR pickle"):
        read_cifar(tmp_path / "b.tar.gz", "cifar10", md5=None)


def test_pickle_with_other_globals_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = "cifar-10-batches-py"
    members = {f"{root}/batches.meta": pickle.dumps({b"label_names": Evil()}, protocol=2)}
    _tar(tmp_path / "c.tar.gz", {**members, **{f"{root}/{m}": b"" for m in
                                             [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}})
    with pytest.raises(RawDataError, match=r"batches.meta' is not a readable CIFAR pickle: refusing to load global (__builtin__|builtins).print"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10", md5=None)


def test_not_a_tarball(tmp_path):
    (tmp_path / "c.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(RawDataError, match="not a readable tar archive"):
        read_cifar(tmp_path / "c.tar.gz", "cifar10", md5=None)
