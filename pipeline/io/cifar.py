"""Reader for the official CIFAR-10 and CIFAR-100 python tarballs, straight from the ``.tar.gz`` (no torchvision,
no extraction).

The release layout (https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 python version")::

    cifar-10-python.tar.gz
        cifar-10-batches-py/data_batch_1 .. data_batch_5    the training images, 10000 per batch, in this order
        cifar-10-batches-py/test_batch                      10000 test images
        cifar-10-batches-py/batches.meta                    {label_names: 10 names, num_cases_per_batch, num_vis}
    cifar-100-python.tar.gz
        cifar-100-python/train                              50000 images
        cifar-100-python/test                               10000 images
        cifar-100-python/meta                               {fine_label_names: 100, coarse_label_names: 20}

Every batch is a pickled dict written by Python 2's cPickle (keys are byte strings when read with
``encoding="bytes"``): ``data`` a uint8 array (N, 3072) -- each row one 32x32 image, the first 1024 bytes the red
plane, then green, then blue, each plane row-major -- and ``labels`` (CIFAR-10) or ``fine_labels`` and
``coarse_labels`` (CIFAR-100), N ints, plus ``filenames``.

Pickle can run arbitrary code, so batches are read with an unpickler that admits exactly the globals a numpy array
needs (``_reconstruct``, ``ndarray``, ``dtype``, and ``_codecs.encode`` for Python 3 pickles of bytes); anything
else is refused by name. The whole tarball's md5 is checked against the official one before any pickle is opened
(`read_cifar`'s ``md5``).

Images come back as ``(N, 3, 32, 32)`` uint8 (C, H, W: RGB planes), a view of the file's bytes, with int16
labels; the training split is the five batches concatenated in order (as every reference loader does).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io.checksums import md5sum
from pipeline.io.errors import RawDataError

__all__ = ["CifarSplit", "CifarRelease", "LAYOUTS", "read_cifar"]

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE  # 3072 bytes per image


@dataclass(frozen=True)
class _Layout:
    root: str  # the folder inside the tarball
    train: tuple[str, ...]  # members concatenated, in order
    test: tuple[str, ...]
    meta: str
    label_key: bytes  # b"labels" | b"fine_labels"
    names_key: bytes  # b"label_names" | b"fine_label_names"
    n_classes: int
    coarse: bool  # CIFAR-100's 20 superclasses


LAYOUTS: dict[str, _Layout] = {
    "cifar10": _Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                       "batches.meta", b"labels", b"label_names", 10, False),
    "cifar100": _Layout("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names", 100,
                        True),
}


@dataclass(frozen=True)
class CifarSplit:
    """One split: ``images`` uint8 (N, 3, 32, 32) RGB planes; ``labels`` int16 (N,); ``coarse_labels`` int16 (N,)
    for CIFAR-100 (else None); ``filenames`` the release's per-image names (provenance)."""

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None
    filenames: tuple[str, ...]


@dataclass(frozen=True)
class CifarRelease:
    name: str  # "cifar10" | "cifar100"
    classes: tuple[str, ...]
    coarse_classes: tuple[str, ...] | None
    train: CifarSplit
    test: CifarSplit


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the globals that pickled numpy arrays and Python 3 bytes need; refuses everything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def __init__(self, file):
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (a CIFAR batch "
                                         "holds only numpy arrays, lists, ints and byte strings)")
        if module.startswith("numpy") and module.endswith("multiarray"):
            return np._core.multiarray._reconstruct  # numpy.core is numpy 1's name for numpy._core
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the ``wanted`` members, in one pass over the (gzip) stream; a leading ``./`` is ignored."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = info.name[2:] if info.name.startswith("./") else info.name
                if name in wanted and info.isfile():
                    found[name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise RawDataError(path, f"not a readable tar archive: {err}") from None
    if missing := sorted(wanted - set(found)):
        raise RawDataError(path, f"has no member {missing[0]!r} ({len(missing)} of the release's {len(wanted)} "
                                 "members missing): not the official layout")
    return found


def _unpickle(raw: bytes, path: Path, member: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise RawDataError(path, f"member {member!r} is not a readable CIFAR pickle: {err}") from None
    if not isinstance(obj, dict):
        raise RawDataError(path, f"member {member!r} holds a {type(obj).__name__}, not the release's dict")
    return obj


def _labels(obj: dict, key: bytes, n: int, n_classes: int, path: Path, member: str) -> np.ndarray:
    if key not in obj:
        raise RawDataError(path, f"member {member!r} has no {key.decode()!r} (keys: {sorted(k.decode() for k in obj)})")
    labels = np.asarray(obj[key])
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise RawDataError(path, f"member {member!r}: {key.decode()} must be {n} ints (one per image), got "
                                 f"shape {labels.shape} dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise RawDataError(path, f"member {member!r}: {key.decode()}[{bad[0]}] = {labels[bad[0]]} is outside "
                                 f"0..{n_classes - 1} ({bad.size} such labels)")
    return labels.astype(np.int16)


def _split(raw: dict[str, bytes], path: Path, lay: _Layout, members: tuple[str, ...]) -> CifarSplit:
    images, labels, coarse, names = [], [], [], []
    for m in members:
        member = f"{lay.root}/{m}"
        obj = _unpickle(raw.pop(member), path, member)  # popped: the compressed bytes are freed batch by batch
        data = obj.get(b"data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
            got = f"shape {data.shape} dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
            raise RawDataError(path, f"member {member!r}: data must be uint8 (N, {_PIXELS}), got {got}")
        n = data.shape[0]
        images.append(data.reshape(n, 3, _SIDE, _SIDE))
        labels.append(_labels(obj, lay.label_key, n, lay.n_classes, path, member))
        if lay.coarse:
            coarse.append(_labels(obj, b"coarse_labels", n, 20, path, member))
        files = obj.get(b"filenames", [b""] * n)
        if len(files) != n:
            raise RawDataError(path, f"member {member!r}: {len(files)} filenames for {n} images")
        names.extend(f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in files)
    return CifarSplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                      np.concatenate(coarse) if lay.coarse else None, tuple(names))


def _names(meta: dict, key: bytes, n: int, path: Path, member: str) -> tuple[str, ...]:
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != n:
        raise RawDataError(path, f"member {member!r}: {key.decode()} must list {n} class names")
    return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in names)


def read_cifar(path: str | Path, name: str, *, md5: str | None) -> CifarRelease:
    """Read ``cifar-10-python.tar.gz`` (``name="cifar10"``) or ``cifar-100-python.tar.gz`` (``"cifar100"``).

    ``md5``: the expected checksum of the whole tarball (the official one, from the dataset spec), checked before
    anything is unpickled; ``None`` skips the check (files written by tests). Raises RawDataError naming the
    tarball and the member for a wrong checksum, a missing member, a malformed batch or a label out of range.
    """
    path = Path(path)
    if name not in LAYOUTS:
        raise ValueError(f"unknown CIFAR release {name!r}; choose one of {', '.join(LAYOUTS)}")
    lay = LAYOUTS[name]
    if md5 is not None and (got := md5sum(path)) != md5:
        raise RawDataError(path, f"md5 {got} differs from the official {md5}: a truncated or different download "
                                 "(delete it and download again)")
    raw = _read_members(path, {f"{lay.root}/{m}" for m in (lay.meta, *lay.train, *lay.test)})
    meta_member = f"{lay.root}/{lay.meta}"
    meta = _unpickle(raw.pop(meta_member), path, meta_member)
    classes = _names(meta, lay.names_key, lay.n_classes, path, meta_member)
    coarse = _names(meta, b"coarse_label_names", 20, path, meta_member) if lay.coarse else None
    return CifarRelease(name, classes, coarse, _split(raw, path, lay, lay.train), _split(raw, path, lay, lay.test))
