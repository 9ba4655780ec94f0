"""Ingest datasets already downloaded with tonic, through tonic's own dataset classes.

* ``tonic.datasets.DVSGesture(save_to)``: tonic's pre-cut copy (``<save_to>/DVSGesture/ibmGestureTrain|Test/
  userNN_<lighting>/<label>.npy``). Timestamps were rounded to milliseconds by tonic's preprocessing (stored
  here ×1000 as µs, as tonic returns them), and recordings were cut differently: 1341 samples instead of the
  official 1176 + 288, and no csv windows. Use the official AEDAT files for comparable numbers.
* ``tonic.datasets.CIFAR10DVS(save_to)``: an aedat4 conversion of the originals (needs the ``aedat`` package);
  its orientation is tonic's, not the SpikingJelly orientation `pipeline.io.aedat2` stores. Splits are applied
  by recording index exactly as for the originals.

Nothing is downloaded: when tonic's files are not all in place, a MissingRawDataError says so (tonic itself
would start a download).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipeline.datasets.base import (Download, MissingRawDataError, Recording, Window, require_aedat4_decoder,
                                    whole_recording)
from pipeline.datasets.cifar10_dvs import CIFAR10DVS, carve_per_class, split_indices
from pipeline.datasets.dvs_gesture import DVSGesture, carve_by_user
from pipeline.events import DecodedEvents

__all__ = ["TonicDVSGesture", "TonicCIFAR10DVS", "tonic_spec"]


def _to_decoded(events: np.ndarray) -> DecodedEvents:
    n = len(events)
    counts = {"events_read": n, "invalid_dropped": 0, "nonpolarity_skipped": 0}
    return DecodedEvents(events["x"].astype(np.uint16), events["y"].astype(np.uint16),
                         events["t"].astype(np.int64), events["p"].astype(np.uint8), counts)


class _TonicAdapter:
    """Enumerates a tonic dataset's files; `decode` returns the events of tonic's ``dataset[i]``."""

    tonic_name: str

    def __init__(self, base):
        self.__dict__.update({k: getattr(base, k) for k in ("name", "classes", "sensor_size", "default_split",
                                                                 "default_val", "val_rule")})
        self._index: dict[Path, tuple[object, int]] = {}

    def _open(self, raw_dir: Path, **kwargs):
        import tonic.datasets

        if not self._present(Path(raw_dir) / self.tonic_name, **kwargs):
            raise MissingRawDataError(
                f"tonic's {self.tonic_name} files are not complete: expected {self.raw_layout(Path(raw_dir))} "
                "(tonic would download them; we do not)")
        return getattr(tonic.datasets, self.tonic_name)(str(raw_dir), **kwargs)

    def label_files(self, rec: Recording) -> list[Path]:
        return []

    def decode(self, data: bytes, path: Path) -> DecodedEvents:
        ds, i = self._index[Path(path)]
        events, _ = ds[i]
        return _to_decoded(events)


class TonicDVSGesture(_TonicAdapter):
    tonic_name = "DVSGesture"
    reader_version = "tonic-1.7.0-DVSGesture/1"
    split_schemes = ("official",)

    def __init__(self):
        super().__init__(DVSGesture())
        from tonic.datasets import DVSGesture as T

        self.downloads = (Download(T.train_filename, T.train_url, T.train_md5),
                          Download(T.test_filename, T.test_url, T.test_md5))

    @staticmethod
    def _present(root: Path, train: bool) -> bool:
        """tonic's own completeness check: the archive file plus at least 100 extracted .npy files."""
        sub = "ibmGestureTrain" if train else "ibmGestureTest"
        return (root / f"{sub}.tar.gz").is_file() and len(list((root / sub).rglob("*.npy"))) >= 100

    def raw_layout(self, raw_dir: Path) -> str:
        return f"{raw_dir}/DVSGesture/ibmGestureTrain|ibmGestureTest/userNN_<lighting>/<label>.npy (tonic's tree)"

    def recordings(self, raw_dir: Path, split: str = "official", val: float | None = None
                   ) -> dict[str, list[Recording]]:
        out = {}
        for split_name, train in (("train", True), ("test", False)):
            ds = self._open(raw_dir, train=train)
            recs = []
            for i, (path, label) in enumerate(zip(ds.data, ds.targets)):
                p = Path(path)
                self._index[p] = (ds, i)
                name = str(p.relative_to(Path(raw_dir)))
                recs.append(Recording(p, name, {"user": ds.users[i], "lighting": ds.lighting[i], "label": int(label)}))
            out[split_name] = recs
        return carve_by_user(out, self.default_val if val is None else val, f"ingest.val.{self.name}")

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        return whole_recording(int(rec.meta["label"]), events)


class TonicCIFAR10DVS(_TonicAdapter):
    tonic_name = "CIFAR10DVS"
    reader_version = "tonic-1.7.0-CIFAR10DVS/1"
    split_schemes = CIFAR10DVS.split_schemes

    def __init__(self):
        super().__init__(CIFAR10DVS())
        from tonic.datasets import CIFAR10DVS as T

        self.downloads = (Download(T.filename, T.url, T.file_md5),)

    @staticmethod
    def _present(root: Path) -> bool:
        """tonic's own completeness check (``CIFAR10DVS._check_exists``): the archive ``CIFAR10DVS.zip`` plus at
        least 1000 extracted .aedat4 files; without either, tonic's constructor would start a download."""
        return (root / "CIFAR10DVS.zip").is_file() and len(list(root.rglob("*.aedat4"))) >= 1000

    def raw_layout(self, raw_dir: Path) -> str:
        return f"{raw_dir}/CIFAR10DVS/CIFAR10DVS.zip and <class>/<file>.aedat4 (tonic's tree, >= 1000 files)"

    def recordings(self, raw_dir: Path, split: str = "tet", val: float | None = None) -> dict[str, list[Recording]]:
        ds = self._open(raw_dir)
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(ds.targets):
            by_class.setdefault(int(label), []).append(i)
        out: dict[str, list[Recording]] = {"train": [], "test": []}
        for label in sorted(by_class):
            items = by_class[label]
            names = [Path(ds.data[i]).name for i in items]
            numbers = [int(m.group(1)) if (m := re.search(r"(\d+)\.aedat4$", n)) else k for k, n in enumerate(names)]
            tr, te = split_indices(numbers, names, split)
            for split_name, pos in (("train", tr), ("test", te)):
                for k in sorted(pos, key=lambda k: numbers[k]):
                    i = items[k]
                    p = Path(ds.data[i])
                    self._index[p] = (ds, i)
                    out[split_name].append(Recording(p, str(p.relative_to(Path(raw_dir))),
                                                     {"label": label, "index": numbers[k]}))
        require_aedat4_decoder([r.path for recs in out.values() for r in recs])  # tonic reads them with `aedat`
        return carve_per_class(out["train"], out["test"], self.default_val if val is None else val,
                               f"ingest.val.{self.name}")

    def windows(self, rec: Recording, events: DecodedEvents) -> list[Window]:
        return whole_recording(int(rec.meta["label"]), events)


def tonic_spec(dataset: str):
    """The tonic-tree adapter for ``dataset``; the error lists the datasets that have one."""
    adapters = {"dvs_gesture": TonicDVSGesture, "cifar10_dvs": TonicCIFAR10DVS}
    if dataset not in adapters:
        raise ValueError(f"no tonic adapter for {dataset!r}; choose one of {', '.join(adapters)}")
    return adapters[dataset]()
