"""ImageNet-1k (ILSVRC2012) in its standard on-disk layout: listing the tree, and decoding its JPEGs at reduced size.

The layout (what the ILSVRC2012 train/val tarballs give once extracted; the val folder in either of its forms)::

    <root>/train/<wnid>/<wnid>_<k>.JPEG              one folder per class, e.g. train/n01440764/n01440764_10026.JPEG
    <root>/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG  val in class folders (the common "valprep.sh" form), or
    <root>/val/ILSVRC2012_val_<8 digits>.JPEG         val flat, labelled by the devkit:
    <root>/ILSVRC2012_devkit_t12/data/meta.mat                           synsets: ILSVRC2012_ID (1..1000) -> WNID
    <root>/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   line i: the ILSVRC2012_ID of image i

Class indices follow the sorted WNIDs (the order of the train folders, as every reference loader numbers them),
not the devkit's ILSVRC2012_IDs. The listing checks what can be checked before decoding anything: folder names are
WNIDs, no class folder is empty, val classes exist in train, every flat val file has exactly one ground-truth line.

Decoding: `decode_reduced` uses libjpeg-turbo through ``simplejpeg`` with DCT-domain scaling (1/2, 1/4, 1/8 decode
at a fraction of the full cost) to the smallest size whose short side is still >= the target, then Pillow resizes
to the target exactly. CMYK JPEGs (ILSVRC2012 train holds a few) are converted by libjpeg-turbo (tested against
Pillow); what it cannot read at all (ILSVRC2012 train holds a PNG named .JPEG) goes through Pillow and is counted
by the caller (``ReducedImage.fallback``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.io.errors import RawDataError

__all__ = ["ImageNetListing", "list_imagenet", "ReducedImage", "decode_reduced", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # case-insensitive; ILSVRC2012 writes .JPEG
_WNID = re.compile(r"^n\d{8}$")
_VAL = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)
DEVKIT = Path("ILSVRC2012_devkit_t12") / "data"


@dataclass(frozen=True)
class ImageNetListing:
    """``classes``: the sorted WNIDs (index = label); ``train`` / ``val``: (path, label) in a pinned order."""

    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    val: tuple[tuple[Path, int], ...]
    val_form: str  # "class_folders" | "flat+devkit"


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    out = {}
    for f in folders:
        if not _WNID.match(f.name):
            raise RawDataError(f, "is not a WNID class folder (expected n + 8 digits, e.g. n01440764)")
        files = _images_in(f)
        if not files:
            raise RawDataError(f, "holds no .JPEG images: an incomplete extraction")
        out[f.name] = files
    return out


def _synsets(meta_mat: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID of the 1000 leaf classes, from the devkit's meta.mat (a MATLAB struct array)."""
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy ships with scikit-learn, a core dependency
        raise ImportError(f"reading {meta_mat} needs scipy: {err}") from None
    try:
        synsets = loadmat(meta_mat, squeeze_me=True)["synsets"]
        ids = [int(s) for s in synsets["ILSVRC2012_ID"]]
        wnids = [str(s) for s in synsets["WNID"]]
        children = [int(s) for s in synsets["num_children"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RawDataError(meta_mat, f"not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, WNID, "
                                     f"num_children): {err}") from None
    return {i: w for i, w, c in zip(ids, wnids, children) if c == 0}


def _flat_val(root: Path, val_dir: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    gt_path, meta_path = root / DEVKIT / "ILSVRC2012_validation_ground_truth.txt", root / DEVKIT / "meta.mat"
    for p in (gt_path, meta_path):
        if not p.is_file():
            raise RawDataError(p, "not found: a flat val/ folder is labelled by the devkit (ILSVRC2012_devkit_t12.tar.gz, "
                                  "extracted under the root), or put val/ in class folders")
    synsets = _synsets(meta_path)
    lines = gt_path.read_text().split()
    files = _images_in(val_dir)
    out = []
    for path in files:
        m = _VAL.match(path.name)
        if not m:
            raise RawDataError(path, "not an ILSVRC2012_val_<8 digits>.JPEG name: cannot find its ground truth")
        k = int(m.group(1))
        if not 1 <= k <= len(lines):
            raise RawDataError(gt_path, f"has {len(lines)} lines, none for {path.name} (image {k})", row=None)
        try:
            wnid = synsets[int(lines[k - 1])]
        except (ValueError, KeyError):
            raise RawDataError(gt_path, f"{lines[k - 1]!r} is not an ILSVRC2012_ID of a leaf synset in {meta_path}",
                               row=k) from None
        if wnid not in index:
            raise RawDataError(gt_path, f"image {k} is labelled {wnid}, which has no train/ folder", row=k)
        out.append((path, index[wnid]))
    if len(out) != len(lines):
        raise RawDataError(gt_path, f"has {len(lines)} labels but {val_dir} holds {len(out)} images: an incomplete "
                                    "extraction")
    return out


def list_imagenet(root: str | Path) -> ImageNetListing:
    """List ``<root>/train`` and ``<root>/val`` (class folders, or flat with the devkit). Raises RawDataError
    naming the folder or file (and ground-truth row) that breaks the layout."""
    root = Path(root)
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise RawDataError(d, "not found: expected the ILSVRC2012 layout <root>/train/<wnid>/*.JPEG and "
                                  "<root>/val/ (class folders, or flat with the devkit)")
    train = _class_folders(train_dir)
    if not train:
        raise RawDataError(train_dir, "holds no class folders")
    classes = tuple(sorted(train))
    index = {w: i for i, w in enumerate(classes)}
    train_items = tuple((p, index[w]) for w in classes for p in train[w])
    if any(p.is_dir() for p in val_dir.iterdir()):
        val_folders = _class_folders(val_dir)
        if extra := sorted(set(val_folders) - set(index)):
            raise RawDataError(val_dir / extra[0], f"is a val class with no train/ folder ({len(extra)} such)")
        val_items = tuple((p, index[w]) for w in sorted(val_folders) for p in val_folders[w])
        form = "class_folders"
    else:
        val_items, form = tuple(_flat_val(root, val_dir, index)), "flat+devkit"
    return ImageNetListing(classes, train_items, val_items, form)


@dataclass(frozen=True)
class ReducedImage:
    pixels: np.ndarray  # uint8 (H, W, 3) RGB with min(H, W) == short_side
    source_hw: tuple[int, int]  # the file's full size
    fallback: bool  # decoded by Pillow (a PNG, what libjpeg-turbo refused), not simplejpeg


def _resize_short(img, short_side: int):
    w, h = img.size
    s = short_side / min(w, h)
    from PIL import Image

    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR, reducing_gap=None)


def decode_reduced(data: bytes, short_side: int, where: str | Path = "<bytes>") -> ReducedImage:
    """Decode one image file's bytes to RGB with its short side exactly ``short_side`` px (aspect kept).

    Upscales images smaller than the target (rare in ImageNet). Raises RawDataError naming ``where`` for bytes
    that neither decoder reads."""
    try:
        import simplejpeg
    except ImportError:
        raise ImportError("decoding ImageNet JPEGs needs simplejpeg: pip install -e '.[images]'") from None
    from PIL import Image

    try:
        h, w, _colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
        k = min(h, w) / short_side  # decode at the smallest DCT scale that stays >= the target
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=int(np.ceil(h / max(k, 1.0))),
                                     min_width=int(np.ceil(w / max(k, 1.0))))
        img, fallback = Image.fromarray(arr), False
    except ValueError:
        import io

        try:
            with Image.open(io.BytesIO(data)) as im:
                h, w = im.height, im.width
                im.draft("RGB", (max(1, w * short_side // min(h, w)), max(1, h * short_side // min(h, w))))
                img, fallback = im.convert("RGB"), True
        except (OSError, ValueError) as err:
            raise RawDataError(where, f"not a decodable image: {err}") from None
    if min(img.size) != short_side:
        img = _resize_short(img, short_side)
    return ReducedImage(np.asarray(img), (h, w), fallback)
