"""Static image datasets: what each one's raw release is, how it is split, and how its images are read.

    digits_img   scikit-learn's 1797 real 8x8 handwritten digits (bundled in the package: no download), upsampled
                 to ``digits_img.size`` (16) px by pixel replication, 0..16 scaled to 0..255, 1 channel;
                 a seeded class-stratified test split (``digits_img.test_fraction``, 20 %)
    cifar10      the official ``cifar-10-python.tar.gz`` (md5-checked): data_batch_1..5 = train, test_batch = test
    cifar100     the official ``cifar-100-python.tar.gz``: train / test, fine labels + ``coarse_label`` (20 superclasses)
    imagenet     ILSVRC2012 in its standard layout (`pipeline.io.imagenet`): train/<wnid>/ = train, the official
                 val = test (the ILSVRC test labels are not public), decoded once at a reduced size (see below)

Every dataset's validation split is carved from its training side **per class** (`carve_validation` with the
image itself as the group and its class as ``per_class``: the last ``k`` training images of each class in the
release's order; ``ingest.val.<dataset>``: a fraction of each class, or N images per class). The test split is
never touched.

ImageNet is stored decoded, uint8 ``(3, S, S)``: each image's short side resized to ``S`` (libjpeg-turbo's DCT
scaling, then Pillow bilinear: `pipeline.io.imagenet.decode_reduced`) and center-cropped to ``S x S``. Why decoded
and not re-encoded JPEG bytes (FFCV): the store's contract is one uint8 array per split that a training run slices
batch by batch, augments on the device and never decodes again; decoding is the cost that dominates an ImageNet
epoch on CPU, paid once here. The price is size: ``1 281 167 x 3 x S x S`` bytes before compression -- 15.7 GB at
S = 64 (the "downsampled ImageNet 64x64" setting), 35.4 GB at 96, 63.0 GB at 128 (default), 193 GB at 224; zstd
saves ~5-15 % on natural images. Re-encoded JPEG at quality 90 and a 256 px short side (FFCV's setting) is ~40 GB
but costs a decode per image per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.config import ConfigError
from pipeline.datasets.base import Download, MissingRawDataError, carve_validation, val_size
from pipeline.io.errors import RawDataError

__all__ = ["DigitsImgConfig", "ImageSpec", "RawSplit", "RawImages", "IMAGE_DATASETS", "get_image_spec",
           "carve_per_class", "digits_images", "IMAGENET_DEFAULT_SIZE"]

IMAGENET_DEFAULT_SIZE = 128


@dataclasses.dataclass(frozen=True)
class DigitsImgConfig:
    """params.yaml ``digits_img:``: sklearn's digits as images."""

    seed: int = 0  # the stratified test split's permutation
    size: int = 16  # side in pixels: a multiple of 8 (each source pixel becomes a size/8 x size/8 block)
    test_fraction: float = 0.2  # of each class, rounded

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"digits_img.size = {self.size}: must be a multiple of 8 (pixel replication of the "
                              "8x8 digits)")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"digits_img.test_fraction = {self.test_fraction}: must be in (0, 1)")


@dataclass
class RawSplit:
    """One split as read from the raw release: ``labels`` int64 [N], ``source_index`` int64 [N] (index in the raw
    set ``source_set``), ``extras`` {name: int64 [N]}, and ``blocks(n)``: the N images in order, as uint8
    ``(k, C, H, W)`` arrays of at most ``n`` images."""

    labels: np.ndarray
    source_index: np.ndarray
    source_set: str
    blocks: Callable[[int], Iterator[np.ndarray]]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RawImages:
    """A dataset's raw release, read or listed: classes, image shape (C, H, W), the splits (train, val, test; val
    absent for a validation size of 0), provenance (``sources``), root attributes the dataset adds (``attrs``), the
    validation manifest, and ``late_attrs()``: attributes known only once every image was decoded (ImageNet's file
    hashes and decoder counts)."""

    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    splits: dict[str, RawSplit]
    sources: list[dict]
    validation: dict
    attrs: dict = field(default_factory=dict)
    late_attrs: Callable[[], dict] = lambda: {}


@dataclass(frozen=True)
class ImageSpec:
    """A static image dataset: its name, the files of its release, its validation rule, and ``read``.

    ``read(raw_dir, val, options)`` -> `RawImages`; ``val`` is ``ingest.val.<name>`` (see `val_size`), ``options``
    what the dataset takes (``check_md5``, ``digits_img``'s config, ImageNet's ``size`` and ``workers``). Raises
    MissingRawDataError when the release is not where it should be, RawDataError naming the file (and member) when
    it is malformed, both before any image is written."""

    name: str
    channels: int
    downloads: tuple[Download, ...]
    default_val: float
    val_rule: str
    reader_version: str
    layout: str
    reader: Callable[["ImageSpec", Path, float, dict], RawImages]
    embedded: bool = False  # ships inside a package: nothing to download
    extract: bool = False  # pipeline.download leaves archives as they are (read straight from the .tar.gz)

    def raw_layout(self, raw_dir: Path) -> str:
        return self.layout.format(raw=raw_dir)

    def read(self, raw_dir: Path, val: float | None = None, options: dict | None = None) -> RawImages:
        return self.reader(self, Path(raw_dir), self.default_val if val is None else val, dict(options or {}))

    def instructions(self, raw_dir: Path) -> str:
        """What to download, from where, and where to put it (the offline message)."""
        if self.embedded:
            return f"{self.name} ships inside a package: nothing to download."
        if not self.downloads:
            return ("ImageNet-1k needs a login: download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (and "
                    "ILSVRC2012_devkit_t12.tar.gz for a flat val/) by hand from https://image-net.org/download-images.php "
                    f"and extract them as {self.raw_layout(raw_dir)} (the train tar holds one tar per class: extract "
                    "each into train/<wnid>/)")
        lines = [f"To ingest {self.name}, put the official file(s) in {raw_dir}:"]
        for d in self.downloads:
            lines.append(f"  - {d.url}  ->  {Path(raw_dir) / d.filename}  (md5 {d.md5})")
        lines.append(f"  `python -m pipeline.download {self.name}` fetches and checks it; on a machine without network "
                     "download it elsewhere and copy it there. It is read as it is (not extracted).")
        return "\n".join(lines)

    def check_raw(self, raw_dir: Path) -> None:
        """Raise MissingRawDataError (with download instructions) unless the release is in place; cheap (no read)."""
        if self.embedded:
            return
        if self.downloads:
            for d in self.downloads:
                if not (Path(raw_dir) / d.filename).is_file():
                    raise MissingRawDataError(_missing(self, raw_dir))
        elif not (Path(raw_dir) / "train").is_dir() or not (Path(raw_dir) / "val").is_dir():
            raise MissingRawDataError(_missing(self, raw_dir))


def _missing(spec: ImageSpec, raw_dir: Path) -> str:
    return f"{raw_dir}: the {spec.name} release is not there. {spec.instructions(Path(raw_dir))}"


# ------------------------------------------------------------------------------------------ splits
def carve_per_class(train_index: np.ndarray, labels: np.ndarray, val: float,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions from ``train_index`` (raw indices of the training side, ascending) with their
    ``labels``: `carve_validation` per class, each image its own group, so val holds the **last** ``k`` training
    images of every class (``k = ceil(f * n_class)`` for a fraction ``f``, or N per class). Both keep the order."""
    if not val:
        return np.asarray(train_index, np.int64), np.zeros(0, np.int64)
    lab = dict(zip(np.asarray(train_index).tolist(), np.asarray(labels).tolist()))
    tr, va = carve_validation(list(lab), group=lambda i: i, per_class=lambda i: lab[i], **val_size(val, where))
    return np.asarray(tr, np.int64), np.asarray(va, np.int64)


def _in_memory(images: np.ndarray, index: np.ndarray) -> Callable[[int], Iterator[np.ndarray]]:
    def blocks(n: int) -> Iterator[np.ndarray]:
        for a in range(0, len(index), n):
            yield np.ascontiguousarray(images[index[a : a + n]])
    return blocks


def _validation(spec: ImageSpec, val: float, splits: dict[str, RawSplit], classes) -> dict:
    per = np.bincount(splits["val"].labels, minlength=len(classes)).tolist() if "val" in splits else []
    return {"size": val, "rule": spec.val_rule, "n": len(splits["val"]) if "val" in splits else 0,
            "per_class": per, "source_index": "val images are these indices of the raw training set (split array)"}


def _split_from(images: np.ndarray, labels: np.ndarray, index: np.ndarray, source_set: str,
                extras: dict[str, np.ndarray] | None = None) -> RawSplit:
    index = np.asarray(index, np.int64)
    return RawSplit(np.asarray(labels[index], np.int64), index, source_set, _in_memory(images, index),
                    {k: np.asarray(v[index], np.int64) for k, v in (extras or {}).items()})


def _three_splits(spec: ImageSpec, val: float, train_images, train_labels, test_images, test_labels, *,
                  train_extras=None, test_extras=None, train_index=None, test_index=None,
                  train_set="train", test_set="test") -> dict[str, RawSplit]:
    train_index = np.arange(len(train_labels)) if train_index is None else train_index
    test_index = np.arange(len(test_labels)) if test_index is None else test_index
    tr, va = carve_per_class(train_index, train_labels[train_index], val, f"ingest.val.{spec.name}")
    out = {"train": _split_from(train_images, train_labels, tr, train_set, train_extras)}
    if len(va):
        out["val"] = _split_from(train_images, train_labels, va, train_set, train_extras)
    out["test"] = _split_from(test_images, test_labels, test_index, test_set, test_extras)
    return out


def _file_source(path: Path, name: str, **extra) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {"name": name, "size": path.stat().st_size, "sha256": h.hexdigest(), **extra}


# ------------------------------------------------------------------------------------------ digits_img
def digits_images(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1797 digits as uint8 ``(1797, 1, size, size)`` (each pixel replicated into a ``size/8`` square,
    0..16 scaled to 0..255 and rounded) and their int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rep = size // 8
    img = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    img = img.repeat(rep, axis=1).repeat(rep, axis=2)
    return np.ascontiguousarray(img[:, None]), d.target.astype(np.int64)


def _read_digits(spec: ImageSpec, raw_dir: Path, val: float, options: dict) -> RawImages:
    import sklearn
    from sklearn import datasets as skd

    cfg = options.get("digits_img") or DigitsImgConfig()
    images, labels = digits_images(cfg.size)
    rng = np.random.default_rng(cfg.seed)
    test = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test.extend(rng.permutation(idx)[: int(round(cfg.test_fraction * len(idx)))].tolist())
    test = np.sort(np.asarray(test, np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    splits = _three_splits(spec, val, images, labels, images, labels, train_index=train, test_index=test,
                           train_set="digits", test_set="digits")
    src = Path(skd.__file__).parent / "data" / "digits.csv.gz"
    return RawImages(tuple(str(c) for c in range(10)), images.shape[1:], splits,
                     [_file_source(src, f"sklearn/datasets/data/{src.name}", package=f"scikit-learn=={sklearn.__version__}")],
                     _validation(spec, val, splits, range(10)),
                     {"digits_img": dataclasses.asdict(cfg),
                      "upsampling": f"pixel replication x{cfg.size // 8} (each 8x8 pixel a {cfg.size // 8}x{cfg.size // 8} block)",
                      "test_rule": f"per class, a seeded (seed {cfg.seed}) permutation's first round({cfg.test_fraction} "
                                   "x n_class) images"})


# ------------------------------------------------------------------------------------------ CIFAR
def _read_cifar(spec: ImageSpec, raw_dir: Path, val: float, options: dict) -> RawImages:
    from pipeline.io.checksums import md5sum
    from pipeline.io.cifar import read_cifar

    (d,) = spec.downloads
    path = raw_dir / d.filename if raw_dir.is_dir() or not raw_dir.exists() else raw_dir
    if not path.is_file():
        raise MissingRawDataError(_missing(spec, raw_dir))
    got = md5sum(path)
    if options.get("check_md5", True) and got != d.md5:
        raise RawDataError(path, f"md5 {got} differs from the official {d.md5}: a truncated or different download "
                                 "(delete it and download again: python -m pipeline.download "
                                 f"{spec.name})")
    rel = read_cifar(path, spec.name, md5=None)  # checked just above, once
    tr, te = rel.train, rel.test
    extras_tr = {"coarse_label": tr.coarse_labels} if tr.coarse_labels is not None else None
    extras_te = {"coarse_label": te.coarse_labels} if te.coarse_labels is not None else None
    splits = _three_splits(spec, val, tr.images, tr.labels.astype(np.int64), te.images, te.labels.astype(np.int64),
                           train_extras=extras_tr, test_extras=extras_te)
    attrs = {"coarse_classes": list(rel.coarse_classes)} if rel.coarse_classes is not None else {}
    return RawImages(rel.classes, (3, 32, 32), splits,
                     [{"name": path.name, "size": path.stat().st_size, "md5": got,
                       "md5_official": d.md5, "md5_checked": bool(options.get("check_md5", True))}],
                     _validation(spec, val, splits, rel.classes), attrs)


# ------------------------------------------------------------------------------------------ ImageNet
def _center_crop_chw(pixels: np.ndarray, s: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    top, left = (h - s) // 2, (w - s) // 2
    return pixels[top : top + s, left : left + s].transpose(2, 0, 1)


class _Decoded:
    """Per raw set: every file's sha256 in listing order, bytes read, decoder fallbacks."""

    def __init__(self):
        self.hashes: dict[int, str] = {}
        self.bytes = 0
        self.fallback = 0


def _read_imagenet(spec: ImageSpec, raw_dir: Path, val: float, options: dict) -> RawImages:
    from pipeline.io.imagenet import decode_reduced, list_imagenet

    size = int(options.get("size") or IMAGENET_DEFAULT_SIZE)
    if size < 8:
        raise ConfigError(f"imagenet --size {size}: too small")
    workers = int(options.get("workers") or min(8, len(os.sched_getaffinity(0))))
    if not (raw_dir / "train").is_dir():
        raise MissingRawDataError(_missing(spec, raw_dir))
    lst = list_imagenet(raw_dir)  # the whole layout checked before any decode
    sets = {"train": [p for p, _ in lst.train], "val": [p for p, _ in lst.val]}
    labels = {"train": np.asarray([c for _, c in lst.train], np.int64),
              "val": np.asarray([c for _, c in lst.val], np.int64)}
    stats = {k: _Decoded() for k in sets}

    def decode(raw_set: str, i: int) -> tuple[np.ndarray, str, int, bool]:
        p = sets[raw_set][i]
        try:
            data = p.read_bytes()
        except OSError as err:
            raise RawDataError(p, f"cannot be read: {err}") from None
        img = decode_reduced(data, size, where=p)
        return _center_crop_chw(img.pixels, size), hashlib.sha256(data).hexdigest(), len(data), img.fallback

    def lazy(raw_set: str, index: np.ndarray) -> Callable[[int], Iterator[np.ndarray]]:
        def blocks(n: int) -> Iterator[np.ndarray]:
            st = stats[raw_set]
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
                for a in range(0, len(index), n):
                    out = np.empty((min(n, len(index) - a), 3, size, size), np.uint8)
                    for k, (img, digest, nbytes, fb) in enumerate(
                            pool.map(decode, [raw_set] * len(out), index[a : a + len(out)].tolist())):
                        out[k] = img
                        st.hashes[int(index[a + k])] = digest
                        st.bytes += nbytes
                        st.fallback += fb
                    yield out
        return blocks

    tr, va = carve_per_class(np.arange(len(labels["train"])), labels["train"], val, f"ingest.val.{spec.name}")
    splits = {"train": RawSplit(labels["train"][tr], tr, "train", lazy("train", tr))}
    if len(va):
        splits["val"] = RawSplit(labels["train"][va], va, "train", lazy("train", va))
    te = np.arange(len(labels["val"]), dtype=np.int64)
    splits["test"] = RawSplit(labels["val"][te], te, "val", lazy("val", te))
    files = {k: [str(p.relative_to(raw_dir)) for p in v] for k, v in sets.items()}

    def late() -> dict:
        sources = []
        for k in ("train", "val"):
            st = stats[k]
            h = hashlib.sha256()
            for i, name in enumerate(files[k]):
                h.update(f"{name}\0{st.hashes[i]}\n".encode())
            sources.append({"name": f"{k}/", "files": len(files[k]), "size": st.bytes, "sha256": h.hexdigest(),
                            "sha256_rule": "sha256 over '<relative path>\\0<file sha256>\\n' of every file, sorted"})
        return {"sources": sources,
                "decode_counts": {k: {"images": len(files[k]), "pillow_fallback": stats[k].fallback} for k in stats}}

    return RawImages(lst.classes, (3, size, size), splits, [], _validation(spec, val, splits, lst.classes),
                     {"val_form": lst.val_form, "source_sets": {"train": "train/ (sorted WNID folders, sorted files)",
                                                               "val": f"val/ ({lst.val_form}) = the test split"},
                      "decode": {"short_side": size, "crop": [size, size], "resize": "bilinear",
                                 "decoder": "simplejpeg (libjpeg-turbo, DCT scaling) + Pillow"}}, late)


# ------------------------------------------------------------------------------------------ the registry
_CIFAR_LAYOUT = "{raw}/{file}   (the official tarball, as downloaded: it is read without extracting)"

IMAGE_DATASETS: dict[str, ImageSpec] = {
    "digits_img": ImageSpec(
        "digits_img", 1, (), 0.15, "per class: the last ceil(f x n_class) training images (sklearn's order)",
        "sklearn-digits-1", "(embedded in scikit-learn: nothing to put in {raw})", _read_digits, embedded=True),
    "cifar10": ImageSpec(
        "cifar10", 3,
        (Download("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                  "c58f30108f718f92721af3b95e74349a"),),
        0.1, "per class: the last ceil(f x n_class) images of data_batch_1..5 in release order (0.1: 500 per class)",
        "cifar-python-1", _CIFAR_LAYOUT.replace("{file}", "cifar-10-python.tar.gz"), _read_cifar),
    "cifar100": ImageSpec(
        "cifar100", 3,
        (Download("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "eb9058c3a382ffc7106e4002c42a8d85"),),
        0.1, "per fine class: the last ceil(f x n_class) images of train in release order (0.1: 50 per class)",
        "cifar-python-1", _CIFAR_LAYOUT.replace("{file}", "cifar-100-python.tar.gz"), _read_cifar),
    "imagenet": ImageSpec(
        "imagenet", 3, (), 10, "per class: the last N train images (sorted file names) of each WNID folder (10: 10 000)",
        "ilsvrc2012-reduced-1", "{raw}/train/<wnid>/*.JPEG and {raw}/val/<wnid>/*.JPEG (or val/ flat with "
        "{raw}/ILSVRC2012_devkit_t12/data/)", _read_imagenet),
}


def get_image_spec(name: str) -> ImageSpec:
    if name not in IMAGE_DATASETS:
        raise ConfigError(f"unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")
    return IMAGE_DATASETS[name]
