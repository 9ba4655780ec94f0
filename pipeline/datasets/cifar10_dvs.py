"""CIFAR10-DVS (Li et al., 2017): 10 classes x 1000 AEDAT 2.0 recordings of CIFAR-10 images moved on a monitor.

Raw layout (the ten official zips from figshare, each extracted into ``data_cache/raw/cifar10_dvs/``)::

    data_cache/raw/cifar10_dvs/
        airplane/cifar10_airplane_0.aedat ... cifar10_airplane_999.aedat
        automobile/cifar10_automobile_0.aedat ...
        ... bird cat deer dog frog horse ship truck

One sample per recording (all its events). Orientation follows SpikingJelly (see pipeline.io.aedat2).

There is no official split; papers use at least four different "9:1" splits. The split schemes here are
pinned and the chosen manifest is stored in the event store:

* ``tet`` (default): per class, recordings with index 0..899 train, 900..999 test (TET, NDA).
* ``tebn``: per class, recordings 0..99 test, the rest train.
* ``spikingjelly``: per class, file names sorted as strings (cifar10_airplane_0, _1, _10, _100, ...), the first
  ceil(0.9 n) train -- what ``split_to_train_test_set(0.9, ..., random_split=False)`` gives.
* ``random:<seed>``: per class, a NumPy ``default_rng(seed)`` permutation of the indices, first ceil(0.9 n) train.

With fewer than 1000 recordings per class the fractions are kept (first ceil(0.9 n) / first ceil(0.1 n)).

Validation (``ingest.val.cifar10_dvs``, default 0.1): per class, the training recordings with the highest
indices, ``ceil(0.1 n)`` of the ``n`` training recordings of each class (`pipeline.datasets.base.carve_validation`;
under ``tet``: indices 810..899 of every class, 900 validation / 8100 train / 1000 test recordings). Whole
recordings, carved from the training side of the chosen scheme only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError
from pipeline.datasets.base import (Download, MissingRawDataError, Recording, Window, carve_validation, val_size,
                                    whole_recording)
from pipeline.events import DecodedEvents, SensorSize
from pipeline.io import aedat2
from pipeline.io.errors import RawDataError

__all__ = ["SPEC", "CIFAR10DVS", "CLASSES", "split_indices"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FIGSHARE = {
    "airplane": ("7712788", "0afd5c4bf9ae06af762a77b180354fdd"),
    "automobile": ("7712791", "8438dfeba3bc970c94962d995b1b9bdd"),
    "bird": ("7712794", "a9c207c91c55b9dc2002dc21c684d785"),
    "cat": ("7712812", "52c63c677c2b15fa5146a8daf4d56687"),
    "deer": ("7712815", "b6bf21f6c04d21ba4e23fc3e36c8a4a3"),
    "dog": ("7712818", "f379ebdf6703d16e0a690782e62639c3"),
    "frog": ("7712842", "cad6ed91214b1c7388a5f6ee56d08803"),
    "horse": ("7712851", "e7cbbf77bec584ffbf913f00e682782a"),
    "ship": ("7712836", "41c7bd7d6b251be82557c6cce9a7d5c9"),
    "truck": ("7712839", "89f3922fd147d9aeff89e76a2b0b70a7"),
}


def _ceil_frac(n: int, num: int, den: int) -> int:
    return -(-n * num // den)


def split_indices(indices: list[int], names: list[str], scheme: str) -> tuple[list[int], list[int]]:
    """Split one class's recordings (numeric ``indices`` and file ``names``, same order) into (train, test)
    positions. Raises ConfigError (a ValueError) for an unknown scheme."""
    n = len(indices)
    by_index = sorted(range(n), key=lambda k: indices[k])
    if scheme == "tet":
        cut = _ceil_frac(n, 9, 10)
        return by_index[:cut], by_index[cut:]
    if scheme == "tebn":
        cut = _ceil_frac(n, 1, 10)
        return by_index[cut:], by_index[:cut]
    if scheme == "spikingjelly":
        by_name = sorted(range(n), key=lambda k: names[k])
        cut = _ceil_frac(n, 9, 10)
        return by_name[:cut], by_name[cut:]
    if scheme.startswith("random:"):
        try:
            seed = int(scheme.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"split 'random:<seed>' needs an integer seed, got {scheme!r}") from None
        perm = np.random.default_rng(seed).permutation(n)
        order = [by_index[k] for k in perm]
        cut = _ceil_frac(n, 9, 10)
        return order[:cut], order[cut:]
    raise ConfigError(f"unknown cifar10_dvs split {scheme!r}; choose one of tet, tebn, spikingjelly, random:<seed>")


class CIFAR10DVS:
    name = "cifar10_dvs"
    classes = CLASSES
    sensor_size = SensorSize(128, 128, 2)
    default_split = "tet"
    split_schemes = ("tet", "tebn", "spikingjelly", "random:<seed>")
    default_val = 0.1
    val_rule = "per class: the training recordings with the highest indices (a fraction f: ceil(f * n) per class)"
    reader_version = aedat2.READER_VERSION
    downloads = tuple(
        Download(f"{c}.zip", f"https://ndownloader.figshare.com/files/{fid}", md5) for c, (fid, md5) in _FIGSHARE.items()
    )

    @staticmethod
    def decode(data: bytes, path: Path) -> DecodedEvents:
        return aedat2.decode_aedat20(data, path)

    def raw_layout(self, raw_dir: Path) -> str:
        return f"{raw_dir}/<class>/cifar10_<class>_<i>.aedat for the classes {', '.join(CLASSES)}"

    def recordings(self, raw_dir: Path, split: str = "tet", val: float | None = None) -> dict[str, list[Recording]]:
        raw_dir = Path(raw_dir)
        train: list[Recording] = []
        test: list[Recording] = []
        for label, cls in enumerate(CLASSES):
            folder = raw_dir / cls
            if not folder.is_dir():
                raise MissingRawDataError(f"{folder} not found. Expected {self.raw_layout(raw_dir)}.")
            pattern = re.compile(rf"^cifar10_{cls}_(\d+)\.aedat$")
            files = sorted(p.name for p in folder.iterdir() if p.suffix == ".aedat")
            if not files:
                raise MissingRawDataError(f"{folder} holds no .aedat recordings")
            indices = []
            for fname in files:
                m = pattern.match(fname)
                if not m:
                    raise RawDataError(folder / fname, f"not a 'cifar10_{cls}_<i>.aedat' name")
                indices.append(int(m.group(1)))
            tr, te = split_indices(indices, files, split)
            for pos_list, dest in ((tr, train), (te, test)):
                for k in sorted(pos_list, key=lambda k: indices[k]):
                    dest.append(
                        Recording(folder / files[k], f"{cls}/{files[k]}", {"class": cls, "label": label, "index": indices[k]})
                    )
        return carve_per_class(train, test, self.default_val if val is None else val, f"ingest.val.{self.name}")

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        return whole_recording(int(rec.meta["label"]), events)

    def label_files(self, rec: Recording) -> list[Path]:
        return []


SPEC = CIFAR10DVS()


def carve_per_class(train: list[Recording], test: list[Recording], val: float, where: str
                    ) -> dict[str, list[Recording]]:
    """``{"train", "val", "test"}``: per class (``meta["label"]``), the training recordings with the highest
    ``meta["index"]`` become validation (`carve_validation`, size `val_size(val)` per class)."""
    kept, held = carve_validation(train, lambda r: (r.meta["label"], r.meta["index"]), **val_size(val, where),
                                  per_class=lambda r: r.meta["label"])
    return {"train": kept, "val": held, "test": test}
