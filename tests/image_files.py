"""Raw image datasets written in their real formats, for tests (shared by test_cifar_reader, test_imagenet_layout
and test_image_store).

CIFAR: `_py2_pickle` emits, opcode by opcode, the protocol-2 stream that Python 2's cPickle and numpy 1.x wrote for
the release (a dict of byte-string keys; the array as ``numpy.core.multiarray._reconstruct`` + ``__setstate__``
with the raw bytes), following the pickle spec (``pickletools``) and the CIFAR page's description of ``data``;
`write_cifar10` / `write_cifar100` pack the batches into the release's tarball layout. ImageNet: `imagenet_tree`
writes an ILSVRC2012 tree of Pillow-encoded JPEGs (plus scikit-learn's real photographs) and, for a flat val/, the
devkit's meta.mat (scipy.io, a MATLAB struct array with the devkit's fields) and ground-truth file.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


# ---------------------------------------------------------------- Python 2 cPickle, protocol 2, by hand
def _str(b: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING / BINSTRING
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int(v: int) -> bytes:  # BININT1 / BININT2 / BININT
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _ndarray_u1(a: np.ndarray) -> bytes:
    """numpy 1.x ``ndarray.__reduce__`` for a C-contiguous uint8 array, as Python 2 pickled it."""
    assert a.dtype == np.uint8 and a.ndim == 2
    shape = _int(a.shape[0]) + _int(a.shape[1]) + b"\x86"  # TUPLE2
    dtype = (b"cnumpy\ndtype\n" + _str(b"u1") + _int(0) + _int(1) + b"\x87R"  # dtype('u1', 0, 1)
             + b"(" + _int(3) + _str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _str(b"b") + b"\x87R"
            + b"(" + _int(1) + shape + dtype + b"\x89" + _str(a.tobytes()) + b"tb")


def _list(items: list[bytes]) -> bytes:
    return b"](" + b"".join(items) + b"e"


def _py2_pickle(d: dict[bytes, object]) -> bytes:
    body = b""
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            enc = _ndarray_u1(v)
        elif isinstance(v, bytes):
            enc = _str(v)
        elif isinstance(v, int):
            enc = _int(v)
        else:
            enc = _list([_int(x) if isinstance(x, int) else _str(x) for x in v])
        body += _str(k) + enc
    return b"\x80\x02}(" + body + b"u."


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_cifar10(path: Path, per_batch: int = 40, pickler=_py2_pickle, drop: str | None = None) -> dict:
    """A CIFAR-10 tarball with ``per_batch`` images in each of the six batches; returns what it holds."""
    root = "cifar-10-batches-py"
    truth = {"train": [], "test": []}
    members = {f"{root}/batches.meta": pickler({b"label_names": [f"class{i}".encode() for i in range(10)],
                                                b"num_cases_per_batch": per_batch, b"num_vis": 3072})}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = _images(per_batch, k)
        labels = [(3 * j + k) % 10 for j in range(per_batch)]
        members[f"{root}/{name}"] = pickler({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                             b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)]})
        truth["test" if name == "test_batch" else "train"].append((data, labels))
    if drop:
        members.pop(f"{root}/{drop}")
    _tar(path, members)
    return truth


def write_cifar100(path: Path, n_train: int = 120, n_test: int = 50) -> dict:
    root = "cifar-100-python"
    members = {f"{root}/meta": _py2_pickle({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})}
    truth = {}
    for k, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        data = _images(n, 10 + k)
        fine = [(7 * j + k) % 100 for j in range(n)]
        members[f"{root}/{name}"] = _py2_pickle({b"filenames": [f"{j}.png".encode() for j in range(n)],
                                                 b"batch_label": name.encode(), b"fine_labels": fine,
                                                 b"coarse_labels": [f // 5 for f in fine], b"data": data})
        truth[name] = (data, fine)
    _tar(path, members)
    return truth


def _planes_to_image(row: np.ndarray) -> np.ndarray:
    """The CIFAR page's description, read literally: R plane, G plane, B plane, each 32 rows of 32."""
    return np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)])


# ---------------------------------------------------------------- ImageNet (ILSVRC2012 layout)
WNIDS = ("n01440764", "n01443537", "n02102040")
SKLEARN_PHOTOS = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "images"


def _jpeg(path: Path, seed: int, size=(96, 64), mode="RGB") -> None:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)  # smooth, photo-like
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert("CMYK") if mode == "CMYK" else img).save(path, "JPEG", quality=90)


def _meta_mat(path: Path, wnids: tuple[str, ...]) -> list[int]:
    """A devkit meta.mat: synsets 1..n leaves (with our WNIDs in a shuffled ID order) plus one non-leaf."""
    from scipy.io import savemat

    ids = [3, 1, 2][: len(wnids)]
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(i, w, f"class {w}", 0) for i, w in zip(ids, wnids)] + [(len(wnids) + 1, "n00001740", "entity", 3)]
    synsets = np.array(rows, dtype=dt).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"synsets": synsets})
    return ids


def imagenet_tree(root: Path, flat_val: bool) -> list[int]:
    for c, w in enumerate(WNIDS):
        for k in range(2):
            _jpeg(root / "train" / w / f"{w}_{k}.JPEG", 10 * c + k)
    (root / "train" / WNIDS[0] / f"{WNIDS[0]}_9.JPEG").write_bytes((SKLEARN_PHOTOS / "china.jpg").read_bytes())
    val_labels = [2, 0, 1, 0]
    if not flat_val:
        for i, lab in enumerate(val_labels, start=1):
            _jpeg(root / "val" / WNIDS[lab] / f"ILSVRC2012_val_{i:08d}.JPEG", 100 + i)
        return val_labels
    ids = _meta_mat(root / "ILSVRC2012_devkit_t12/data/meta.mat", WNIDS)
    for i in range(1, len(val_labels) + 1):
        _jpeg(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", 100 + i)
    (root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[lab]}\n" for lab in val_labels))
    return val_labels
