"""ImageNet layout listing and reduced-size decoding, on tiny trees in the ILSVRC2012 layout.

JPEGs are written by Pillow (an encoder the decoder path does not share) plus the real photographs scikit-learn
ships (china.jpg, flower.jpg); the devkit's meta.mat is written by scipy.io as a MATLAB struct array with the
devkit's fields. The reduced decode is compared with Pillow's full decode resized the same way.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.io.errors import RawDataError
from pipeline.io.imagenet import decode_reduced, list_imagenet
from tests.image_files import SKLEARN_PHOTOS, WNIDS, _jpeg, imagenet_tree as _tree


@pytest.mark.parametrize("flat", [False, True], ids=["val_class_folders", "val_flat_devkit"])
def test_listing_labels(tmp_path, flat):
    val_labels = _tree(tmp_path, flat)
    lst = list_imagenet(tmp_path)
    assert lst.classes == WNIDS and lst.val_form == ("flat+devkit" if flat else "class_folders")
    assert [lab for _, lab in lst.train] == [0, 0, 0, 1, 1, 2, 2]
    assert lst.train[2][0].name == f"{WNIDS[0]}_9.JPEG"
    got = sorted((p.name, lab) for p, lab in lst.val)
    assert got == [(f"ILSVRC2012_val_{i:08d}.JPEG", lab) for i, lab in enumerate(val_labels, start=1)]


def test_layout_errors_named(tmp_path):
    with pytest.raises(RawDataError, match=r"train: not found: expected the ILSVRC2012 layout"):
        list_imagenet(tmp_path)
    _tree(tmp_path, flat_val=True)
    (tmp_path / "train" / "cats").mkdir()
    with pytest.raises(RawDataError, match=r"train/cats: is not a WNID class folder"):
        list_imagenet(tmp_path)
    (tmp_path / "train" / "cats").rmdir()
    (tmp_path / "train" / "n09999999").mkdir()
    with pytest.raises(RawDataError, match=r"n09999999: holds no .JPEG images"):
        list_imagenet(tmp_path)
    (tmp_path / "train" / "n09999999").rmdir()
    gt = tmp_path / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("3\n1\n2\n")  # one line short
    with pytest.raises(RawDataError, match=r"has 3 lines, none for ILSVRC2012_val_00000004.JPEG"):
        list_imagenet(tmp_path)
    gt.write_text("3\n1\n4\n1\n")  # ID 4 is the non-leaf synset
    with pytest.raises(RawDataError, match=r"ground_truth.txt, row 3: '4' is not an ILSVRC2012_ID of a leaf synset"):
        list_imagenet(tmp_path)
    gt.unlink()
    with pytest.raises(RawDataError, match=r"ground_truth.txt: not found: a flat val/ folder is labelled by the devkit"):
        list_imagenet(tmp_path)


@pytest.mark.parametrize("source", ["china.jpg", "flower.jpg"])
def test_reduced_decode_matches_pillow_full_decode(source):
    data = (SKLEARN_PHOTOS / source).read_bytes()  # real photographs (427 x 640)
    out = decode_reduced(data, 96)
    assert out.pixels.dtype == np.uint8 and min(out.pixels.shape[:2]) == 96 and out.pixels.shape[2] == 3
    assert out.source_hw == (427, 640) and not out.fallback
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    ref = np.asarray(ref.resize(out.pixels.shape[1::-1], Image.Resampling.BILINEAR, reducing_gap=None), np.float32)
    assert np.abs(out.pixels.astype(np.float32) - ref).mean() < 6.0  # DCT-domain scaling vs full decode + resize


def test_cmyk_jpeg_and_png_named_jpeg(tmp_path):
    _jpeg(tmp_path / "cmyk.JPEG", 0, size=(64, 32), mode="CMYK")
    data = (tmp_path / "cmyk.JPEG").read_bytes()
    cmyk = decode_reduced(data, 32)  # already at the target size: no resize, so comparable pixel by pixel
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    assert not cmyk.fallback and cmyk.pixels.shape == (32, 64, 3)
    assert np.abs(cmyk.pixels - ref).mean() < 2.0  # libjpeg-turbo's CMYK -> RGB agrees with Pillow's
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(buf, "PNG")
    png = decode_reduced(buf.getvalue(), 20)
    assert png.fallback and png.pixels.shape == (20, 30, 3) and int(png.pixels.mean()) == 200
    with pytest.raises(RawDataError, match=r"x.JPEG: not a decodable image"):
        decode_reduced(b"\xff\xd8 broken", 32, where="x.JPEG")
