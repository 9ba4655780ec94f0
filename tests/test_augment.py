"""pipeline.augment: batch augmentation seeded per (seed, epoch, index).

References we did not write: numpy (np.pad + slicing, [:, :, ::-1]) for the padded crop and the flip, PIL's
ImageOps / ImageEnhance for the AutoAugment colour ops, kornia's own functionals and its equalize, the AutoAugment
paper's CIFAR-10 policy table (typed in below from Cubuk et al. 2019, appendix), torchvision's magnitude bins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from pipeline.augment import (AUTOAUGMENT_POLICIES, ImageAugment, aa_draw, aa_magnitude, apply_aa_op,
                              augment_batch, draw_uniform, to_float)
from pipeline.config import ConfigError, build

FULL = ImageAugment(crop_pad=4, flip_p=0.5, autoaugment="cifar10", cutout_px=16)
CROP_FLIP = ImageAugment(crop_pad=4, flip_p=0.5)
RRC = ImageAugment(resized_crop=[0.08, 1.0], out_hw=[24, 24], flip_p=0.5)


def _images(n: int, c: int = 3, hw: int = 32, seed: int = 0, low: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(low, 256, (n, c, hw, hw), dtype=np.uint8))


def assert_views_share_image(student: torch.Tensor, teacher: torch.Tensor, image: torch.Tensor) -> None:
    """Test helper (for imgtrain's tests): direct-encoding views [T, B, C, H, W] of the student (T_s steps) and the
    teacher (T_t steps) both hold, at every step, the one augmented batch ``image`` [B, C, H, W]."""
    for view in (student, teacher):
        assert view.shape[1:] == image.shape
        for t in range(view.shape[0]):
            assert torch.equal(view[t], image)


# ------------------------------------------------------------------------------------------ seeding
@pytest.mark.parametrize("cfg", [CROP_FLIP, FULL, RRC], ids=["crop_flip", "full", "resized_crop"])
def test_a_sample_is_the_same_in_any_batch(cfg):
    """Same (seed, epoch, index): identical output alone, in a batch of 128 at any position, in a shuffled
    batch and in a batch of another size."""
    x = _images(128)
    index = torch.from_numpy(np.random.default_rng(1).choice(10**9, 128, replace=False))
    full = augment_batch(x, index, seed=3, epoch=5, cfg=cfg)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(augment_batch(x[perm], index[perm], seed=3, epoch=5, cfg=cfg), full[perm])
    assert torch.equal(augment_batch(x[10:47], index[10:47], seed=3, epoch=5, cfg=cfg), full[10:47])
    for i in range(0, 128, 9):
        assert torch.equal(augment_batch(x[i:i + 1], index[i:i + 1], seed=3, epoch=5, cfg=cfg), full[i:i + 1])
    # and again: no hidden state, and torch's global RNG is neither read nor advanced
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    assert torch.equal(augment_batch(x, index, seed=3, epoch=5, cfg=cfg), full)
    torch.random.set_rng_state(state)


def test_the_draw_changes_with_epoch_and_seed():
    x = _images(64)
    index = torch.arange(64)
    base = augment_batch(x, index, seed=0, epoch=0, cfg=FULL)
    for other in (dict(seed=0, epoch=1), dict(seed=1, epoch=0)):
        out = augment_batch(x, index, cfg=FULL, **other)
        differs = (out != base).flatten(1).any(1)
        assert differs.float().mean() > 0.9  # a sample can draw the same by chance; most must not
    # the same image at another index is another draw
    assert not torch.equal(augment_batch(x, index + 64, seed=0, epoch=0, cfg=FULL), base)


def test_draw_uniform_is_uniform_and_counter_based():
    u = draw_uniform(7, 2, np.arange(200_000), 0)
    assert u.min() >= 0.0 and u.max() < 1.0
    hist = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.abs(hist / 10_000 - 1).max() < 0.05
    assert len(np.unique(u)) == len(u)
    # neighbouring counters are uncorrelated
    v = draw_uniform(7, 2, np.arange(200_000), 1)
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    # a pure function of its arguments (the same numbers for an index alone or in an array)
    assert draw_uniform(7, 2, np.array([12345]), 0)[0] == u[12345]


# ------------------------------------------------------------------------------------------ semantics
def _numpy_crop_flip_candidates(img: np.ndarray, pad: int, h: int, w: int):
    """Every (top, left, flip) output of torchvision's RandomCrop(padding) + flip, written with numpy alone."""
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    for top in range(padded.shape[1] - h + 1):
        for left in range(padded.shape[2] - w + 1):
            win = padded[:, top:top + h, left:left + w]
            yield (top, left, False), win
            yield (top, left, True), win[:, :, ::-1]


@pytest.mark.parametrize("pad, out", [(4, 32), (0, 28), (2, 30)])
def test_crop_and_flip_match_numpy(pad, out):
    x = _images(96, seed=2)
    cfg = ImageAugment(crop_pad=pad, flip_p=0.5, out_hw=None if out == 32 else [out, out])
    y = augment_batch(x, torch.arange(96), seed=0, epoch=0, cfg=cfg)
    assert y.shape == (96, 3, out, out)
    found = []
    for img, got in zip(x.numpy(), (y * 255).round().to(torch.uint8).numpy()):
        matches = [key for key, win in _numpy_crop_flip_candidates(img, pad, out, out) if np.array_equal(win, got)]
        assert len(matches) == 1, "the output is not a padded crop (+ flip) of its image"
        found.append(matches[0])
    tops, lefts, flips = zip(*found)
    n_off = 32 + 2 * pad - out + 1
    assert set(tops) == set(range(n_off)) and set(lefts) == set(range(n_off))  # every offset drawn
    assert 0.3 < np.mean(flips) < 0.7


def test_flip_probability_and_identity():
    x = _images(2000, hw=8, seed=4)
    y = augment_batch(x, torch.arange(2000), seed=0, epoch=0, cfg=ImageAugment(flip_p=0.3))
    xf = to_float(x)
    flipped = (y == xf.flip(-1)).flatten(1).all(1) & ~(y == xf).flatten(1).all(1)
    same = (y == xf).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert abs(flipped.float().mean().item() - 0.3) < 0.04
    assert torch.equal(augment_batch(x, torch.arange(2000), seed=0, epoch=0, cfg=ImageAugment(flip_p=1.0)),
                       to_float(x).flip(-1))


def test_cutout_is_a_square_around_a_centre_anywhere():
    n, size = 400, 16
    x = _images(n, low=1, seed=5)  # no zero pixels: the zeros are the cutout
    y = augment_batch(x, torch.arange(n), seed=0, epoch=0, cfg=ImageAugment(cutout_px=size))
    zero = (y == 0)
    assert bool((zero == zero[:, :1]).all())  # the same square in every channel
    clipped = 0
    for z, img, out in zip(zero[:, 0].numpy(), x, y):
        rows, cols = np.flatnonzero(z.any(1)), np.flatnonzero(z.any(0))
        assert z.sum() == len(rows) * len(cols)  # a rectangle ...
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
        for r in (rows, cols):  # ... of side 16, shorter only where clipped by the border
            assert len(r) == size or (r[0] == 0 or r[-1] == 31) and size // 2 <= len(r) < size
        clipped += len(rows) < size or len(cols) < size
        assert torch.equal(out[:, ~torch.from_numpy(z)], to_float(img[None])[0][:, ~torch.from_numpy(z)])
    assert clipped > n // 4  # the centre falls near the border often (DeVries & Taylor: centre anywhere)
    fill = torch.tensor([0.25, 0.5, 0.75])
    y2 = augment_batch(x, torch.arange(n), seed=0, epoch=0, cfg=ImageAugment(cutout_px=size), fill=fill)
    assert torch.equal(y2[:, :, :, :][zero], fill[None, :, None, None].expand_as(y2)[zero])


def test_resized_crop_shapes_and_coverage():
    x = _images(64, hw=32, seed=6)
    y = augment_batch(x, torch.arange(64), seed=0, epoch=0, cfg=RRC)
    assert y.shape == (64, 3, 24, 24) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # a constant image stays constant whatever the crop (bilinear resizing of a flat region)
    flat = torch.full((4, 3, 32, 32), 77, dtype=torch.uint8)
    assert torch.allclose(augment_batch(flat, torch.arange(4), seed=0, epoch=0, cfg=RRC),
                          torch.full((4, 3, 24, 24), 77 / 255))
    # full scale, ratio 1 (a square image): the crop is the whole image, resized
    whole = augment_batch(x, torch.arange(64), seed=0, epoch=0,
                          cfg=ImageAugment(resized_crop=[1.0, 1.0], out_hw=[32, 32]))
    same = (whole - to_float(x)).abs().flatten(1).amax(1) < 1e-5
    assert same.float().mean() > 0.1  # log-ratio near 0 rounds to the full 32 x 32 crop for some samples


def test_all_off_is_to_float_and_uint8_range_is_kept():
    x = _images(16)
    assert torch.equal(augment_batch(x, torch.arange(16), seed=0, epoch=0, cfg=ImageAugment()), x.float() / 255)
    assert torch.equal(to_float(x, [24, 24]), x[:, :, 4:28, 4:28].float() / 255)
    y = augment_batch(x, torch.arange(16), seed=0, epoch=0, cfg=FULL)
    assert y.dtype == torch.float32 and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal((y * 255).round() / 255, y)  # on the uint8 grid (as PIL's ops on uint8 images)


def test_bad_input_and_config_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(2, 3, 8, 8), torch.arange(2), seed=0, epoch=0, cfg=FULL)
    with pytest.raises(ValueError, match="index"):
        augment_batch(_images(2), torch.arange(3), seed=0, epoch=0, cfg=FULL)
    for bad, msg in [({"autoaugment": "imagenet"}, "choose one of cifar10"), ({"flip_p": 1.5}, "probability"),
                     ({"crop_pad": -1}, ">= 0"), ({"resized_crop": [0.08, 1.0]}, "out_hw"),
                     ({"resized_crop": [0.5, 0.1], "out_hw": [8, 8]}, "min_scale"),
                     ({"out_hw": [8]}, "height, width"), ({"cut_out": 3}, "unknown key")]:
        with pytest.raises(ConfigError, match=msg):
            build(ImageAugment, bad, "train.image_augment")


def test_views_share_the_augmented_image():
    """One augment_batch call per batch; the student and teacher views (contract 3: the image expanded over T,
    stride 0) are that image at every step."""
    x = _images(8)
    img = augment_batch(x, torch.arange(8), seed=0, epoch=2, cfg=FULL)
    student, teacher = img.unsqueeze(0).expand(2, *img.shape), img.unsqueeze(0).expand(6, *img.shape)
    assert_views_share_image(student, teacher, img)
    assert torch.equal(img, augment_batch(x, torch.arange(8), seed=0, epoch=2, cfg=FULL))


# ------------------------------------------------------------------------------------------ AutoAugment
#: Cubuk et al. 2019 (AutoAugment, CVPR), appendix table "Policy found on reduced CIFAR-10": (op, p, magnitude)
PAPER_CIFAR10 = [
    [("Invert", 0.1, None), ("Contrast", 0.2, 6)], [("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)],
    [("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)], [("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.5, None), ("Equalize", 0.9, None)], [("ShearY", 0.2, 7), ("Posterize", 0.3, 7)],
    [("Color", 0.4, 3), ("Brightness", 0.6, 7)], [("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)],
    [("Equalize", 0.6, None), ("Equalize", 0.5, None)], [("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)],
    [("Color", 0.7, 7), ("TranslateX", 0.5, 8)], [("Equalize", 0.3, None), ("AutoContrast", 0.4, None)],
    [("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)], [("Brightness", 0.9, 6), ("Color", 0.2, 8)],
    [("Solarize", 0.5, 2), ("Invert", 0.0, None)], [("Equalize", 0.2, None), ("AutoContrast", 0.6, None)],
    [("Equalize", 0.2, None), ("Equalize", 0.6, None)], [("Color", 0.9, 9), ("Equalize", 0.6, None)],
    [("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)], [("Brightness", 0.1, 3), ("Color", 0.7, 0)],
    [("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)], [("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)],
    [("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)], [("Equalize", 0.8, None), ("Invert", 0.1, None)],
    [("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)],
]
_SNAKE = {"AutoContrast": "auto_contrast", "ShearX": "shear_x", "ShearY": "shear_y", "TranslateX": "translate_x",
          "TranslateY": "translate_y"}


def test_cifar10_policy_is_the_papers():
    ours = AUTOAUGMENT_POLICIES["cifar10"]
    paper = [[(_SNAKE.get(n, n.lower()), p, m) for n, p, m in sub] for sub in PAPER_CIFAR10]
    assert [list(s) for s in ours] == paper


def test_magnitude_bins_are_torchvisions():
    """torchvision 0.28 AutoAugment._augmentation_space(10, (32, 32)), typed in (torchvision is never imported)."""
    assert aa_magnitude("rotate", 9) == pytest.approx(30.0) and aa_magnitude("rotate", 2, -1.0) == pytest.approx(-20 / 3)
    assert aa_magnitude("shear_y", 8) == pytest.approx(0.3 * 8 / 9)
    assert int(aa_magnitude("translate_x", 9) * 32) == 14  # 150/331 * 32 = 14.5 -> int 14 pixels
    assert [int(aa_magnitude("posterize", b)) for b in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert aa_magnitude("solarize", 0) == 1.0 and aa_magnitude("solarize", 9) == 0.0
    assert 1 + aa_magnitude("brightness", 9) == pytest.approx(1.9) and 1 + aa_magnitude("color", 0) == 1.0


def test_subpolicy_is_drawn_per_sample():
    policy = AUTOAUGMENT_POLICIES["cifar10"]
    sub, applied, sign = aa_draw(np.arange(25_000), 0, 0, policy)
    counts = np.bincount(sub, minlength=25)
    assert counts.min() > 850 and counts.max() < 1150  # ~1000 each; kornia's AutoAugment: one per batch
    probs = np.array([[p for _, p, _ in s] for s in policy])[sub]
    assert np.abs(applied.mean(0) - probs.mean(0)).max() < 0.02
    assert abs((sign > 0).mean() - 0.5) < 0.02
    assert len(set(sub[:128])) > 15  # one batch of 128 holds many sub-policies


def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _from_pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im).transpose(2, 0, 1).astype(int)


def _levels(y: torch.Tensor) -> np.ndarray:
    return (y * 255).round().numpy().astype(int)


@pytest.mark.parametrize("op, pil_fn, magnitude, tol", [
    ("invert", ImageOps.invert, 0.0, 0),
    ("posterize", lambda im: ImageOps.posterize(im, 5), 5.0, 0),
    ("solarize", lambda im: ImageOps.solarize(im, 128), 128 / 255, 0),
    ("equalize", ImageOps.equalize, 0.0, 0),
    ("auto_contrast", ImageOps.autocontrast, 0.0, 1),
    ("brightness", lambda im: ImageEnhance.Brightness(im).enhance(1.6), 0.6, 1),
    ("color", lambda im: ImageEnhance.Color(im).enhance(0.3), -0.7, 1),
    ("contrast", lambda im: ImageEnhance.Contrast(im).enhance(1.5), 0.5, 2),
    ("sharpness", lambda im: ImageEnhance.Sharpness(im).enhance(1.8), 0.8, 1),
])
def test_colour_ops_match_pil(op, pil_fn, magnitude, tol):
    """The colour ops against PIL's own on uint8 images (the ops AutoAugment was defined with). ``tol``: PIL
    rounds its blends in 8-bit integer steps, contrast uses its integer mean of the grayscale image."""
    x = _images(6, hw=16, seed=7)
    x[0, 1] = 200  # a flat channel
    got = _levels(apply_aa_op(x.float() / 255, op, torch.full((6,), magnitude)))
    want = np.stack([_from_pil(pil_fn(_pil(img))) for img in x])
    assert np.abs(got - want).max() <= tol


def test_translate_is_an_integer_shift_with_zero_fill():
    x = _images(4, hw=16, seed=8)
    y = _levels(apply_aa_op(x.float() / 255, "translate_x", torch.tensor([0.25, -0.25, 0.0, 0.1])))
    xn = x.numpy().astype(int)
    assert np.array_equal(y[0][:, :, 4:], xn[0][:, :, :-4]) and not y[0][:, :, :4].any()
    assert np.array_equal(y[1][:, :, :-4], xn[1][:, :, 4:]) and not y[1][:, :, -4:].any()
    assert np.array_equal(y[2], xn[2])
    assert np.array_equal(y[3][:, :, 1:], xn[3][:, :, :-1])  # int(0.1 * 16) = 1 pixel


def test_autoaugment_equals_kornia_on_each_image_alone():
    """The grouped batch call equals, per sample, that sample's sub-policy applied alone, op by op, with the same
    magnitudes (kornia's functionals on the single image)."""
    policy = AUTOAUGMENT_POLICIES["cifar10"]
    x = _images(96, seed=9)
    index = torch.arange(1000, 1096)
    cfg = ImageAugment(autoaugment="cifar10")
    y = augment_batch(x, index, seed=4, epoch=1, cfg=cfg)
    sub, applied, sign = aa_draw(index.numpy(), 4, 1, policy)
    assert len(set(sub)) > 15
    for i in range(96):
        ref = x[i:i + 1].float() / 255
        for slot in (0, 1):
            name, _, bin_ = policy[sub[i]][slot]
            if applied[i, slot]:
                m = float(aa_magnitude(name, bin_, sign[i, slot]))
                ref = apply_aa_op(ref, name, torch.tensor([m]))
        assert torch.equal(y[i:i + 1], ref), (i, policy[sub[i]], applied[i])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cfg", [CROP_FLIP, FULL, RRC], ids=["crop_flip", "full", "resized_crop"])
def test_cuda_draws_the_same_as_cpu(cfg):
    x = _images(128)
    index = torch.arange(128)
    cpu = augment_batch(x, index, seed=1, epoch=3, cfg=cfg)
    gpu = augment_batch(x.cuda(), index.cuda(), seed=1, epoch=3, cfg=cfg)
    assert gpu.device.type == "cuda"
    if cfg is CROP_FLIP:
        assert torch.equal(gpu.cpu(), cpu)
    else:  # the same parameters; float kernels may round a pixel to the neighbouring 1/255 level
        diff = (gpu.cpu() - cpu).abs()
        assert float(diff.max()) <= 1.5 / 255 + 1e-6 and float((diff > 0).float().mean()) < 1e-3
