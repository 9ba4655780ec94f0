"""Image augmentation on whole batches on the training device (``train.image_augment:``), seeded per sample.

    augment_batch(x uint8 [B, C, H, W], index int64 [B], seed=, epoch=, cfg=)  ->  float32 [B, C, h, w] in [0, 1]

In this order, each step optional (`ImageAugment`; all off = `to_float`):

1. geometry -- ``resized_crop`` (ImageNet): torchvision's RandomResizedCrop draw (scale range, aspect ratio 3/4..4/3
   log-uniform, 10 tries, then the centre crop), resized bilinearly to ``out_hw`` by `kornia.geometry.transform.
   crop_and_resize`; otherwise a random ``h x w`` window (``out_hw``, default the input size) of the image padded by
   ``crop_pad`` zero pixels on each side (torchvision's RandomCrop(size, padding)), one gather;
2. horizontal flip with probability ``flip_p``;
3. ``autoaugment: cifar10`` -- AutoAugment's CIFAR-10 policy (Cubuk et al. 2019): per sample one of the 25
   sub-policies, each of its two ops applied with its probability and its magnitude bin (`AUTOAUGMENT_POLICIES`);
4. Cutout (DeVries & Taylor 2017): a ``cutout_px`` square around a centre anywhere in the image (clipped at the
   border) set to ``fill`` (default 0; pass the store's mean to get DeVries's "zero after normalisation").

**Seeding.** Every random number is a counter-based hash (splitmix64) of ``(seed, epoch, index, k)`` -- ``index``
the sample's index in its split, ``k`` the draw's number -- computed in numpy on the host, so a sample's
augmentation is a pure function of (image, seed, epoch, index, cfg): the same in a batch of 1 or 128, at any
position, on any DDP rank and on CPU or CUDA, and the student and teacher views of a sample (one augmented image)
agree by construction. kornia's own random modules are not used for drawing: they draw from torch's global RNG per
batch, and kornia 0.8.1's ``AutoAugment`` picks one sub-policy per batch (``get_forward_sequence`` samples
``rand_selector.sample((1,))``), so a sample's draw would depend on its batch. The ops are kornia's functionals
(``kornia.enhance``, ``kornia.geometry.transform``), applied grouped by op, so a batch costs at most one call per
op kind and slot.

**AutoAugment's magnitudes** are torchvision's (v0.28 ``AutoAugment._augmentation_space`` with 10 bins: a fixed
value per bin, a random sign for the signed ops; nearest interpolation, zero fill), which is what the SNN
literature's CIFAR code runs; kornia 0.8.1's ``AutoAugment`` maps the bins differently (uniform within a signed bin,
so rotate bin 2 is -18..-12 degrees; ShearX/Y multiplied by 180 twice, giving shears of thousands of degrees) and is
not used for that reason. As PIL and torchvision do on uint8 images, the image is rounded to the 1/255 grid after
each op.
"""

from __future__ import annotations

import dataclasses
import math

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from kornia.augmentation.auto.autoaugment.autoaugment import cifar10_policy

from pipeline.config import ConfigError, check_choice

__all__ = ["ImageAugment", "augment_batch", "to_float", "AUTOAUGMENT_POLICIES", "draw_uniform"]

#: AutoAugment policies by name: 25 sub-policies of two ``(op, probability, magnitude bin 0..9 | None)``; the
#: CIFAR-10 one is kornia's table (kornia/augmentation/auto/autoaugment/autoaugment.py ``cifar10_policy``), checked
#: in tests/test_augment.py against the paper's appendix (Cubuk et al. 2019, "Policy found on reduced CIFAR-10").
AUTOAUGMENT_POLICIES: dict[str, tuple[tuple[tuple[str, float, int | None], ...], ...]] = {
    "cifar10": tuple(tuple((name, float(p), m) for name, p, m in sub) for sub in cifar10_policy),
}


@dataclasses.dataclass(frozen=True)
class ImageAugment:
    """Training augmentation of static images, the ``train.image_augment:`` section (all off by default).

    ``crop_pad`` zero pixels of padding per side before the random crop (CIFAR: 4); ``flip_p`` horizontal flip
    probability; ``autoaugment`` a key of `AUTOAUGMENT_POLICIES` or None; ``cutout_px`` side of the Cutout square
    (CIFAR-10: 16, 0 off); ``resized_crop`` ``[min_scale, max_scale]`` of RandomResizedCrop (ImageNet: [0.08, 1.0];
    replaces the padded crop); ``out_hw`` ``[h, w]`` of the output (the crop size; None: the input's size; needed
    with ``resized_crop``)."""

    crop_pad: int = 0
    flip_p: float = 0.0
    autoaugment: str | None = None
    cutout_px: int = 0
    resized_crop: list[float] | None = None
    out_hw: list[int] | None = None

    def __post_init__(self) -> None:
        name = "train.image_augment"
        if self.autoaugment is not None:
            check_choice(f"{name}.autoaugment", self.autoaugment, AUTOAUGMENT_POLICIES)
        if not 0.0 <= self.flip_p <= 1.0:
            raise ConfigError(f"{name}.flip_p = {self.flip_p} must be a probability in [0, 1]")
        if self.crop_pad < 0 or self.cutout_px < 0:
            raise ConfigError(f"{name}.crop_pad ({self.crop_pad}) and cutout_px ({self.cutout_px}) must be >= 0")
        if self.out_hw is not None and (len(self.out_hw) != 2 or min(self.out_hw) <= 0):
            raise ConfigError(f"{name}.out_hw = {list(self.out_hw)} must be [height, width], both >= 1")
        if self.resized_crop is not None:
            lo_hi = list(self.resized_crop)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ConfigError(f"{name}.resized_crop = {lo_hi} must be [min_scale, max_scale] with "
                                  "0 < min_scale <= max_scale <= 1 (ImageNet: [0.08, 1.0])")
            if self.out_hw is None:
                raise ConfigError(f"{name}.resized_crop needs {name}.out_hw (the size crops are resized to)")
            if self.crop_pad:
                raise ConfigError(f"{name}.resized_crop replaces the padded crop: set crop_pad to 0")

    @property
    def active(self) -> bool:
        """Does this config change anything beyond `to_float`?"""
        return bool(self.crop_pad or self.flip_p or self.autoaugment or self.cutout_px or self.resized_crop)


# ------------------------------------------------------------------------------------------ counter-based draws
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea & Flood 2014) on uint64 arrays: a bijective avalanche hash."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def draw_uniform(seed: int, epoch: int, index: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) for each sample: a hash of ``(seed, epoch, index, k)`` (index int64 [B], k the
    draw's number, broadcast against index). The same numbers on every machine and device."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(seed % 2**64, dtype=np.uint64))
        h = _splitmix64(h ^ np.asarray(epoch % 2**64, dtype=np.uint64))
        h = _splitmix64(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))
        h = _splitmix64(h ^ np.asarray(k, dtype=np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


#: The draw numbers ``k`` of each random choice (fixed: changing one changes every augmented image).
_K_CROP_Y, _K_CROP_X, _K_FLIP, _K_CUT_Y, _K_CUT_X, _K_AA_SUB = 0, 1, 2, 3, 4, 5
_K_AA_APPLY, _K_AA_SIGN = 6, 8  # + slot (0, 1)
_K_RRC = 16  # + 4 * attempt + (0 scale, 1 log-ratio, 2 top, 3 left), attempts 0..9


def _randint(u: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """floor(u * n): an integer uniform in [0, n) from a uniform u in [0, 1)."""
    return np.minimum(np.floor(u * n).astype(np.int64), np.asarray(n, dtype=np.int64) - 1)


# ------------------------------------------------------------------------------------------ the batch function
def to_float(x: torch.Tensor, out_hw: list[int] | tuple[int, int] | None = None) -> torch.Tensor:
    """Evaluation input: uint8 [B, C, H, W] -> float32 [B, C, h, w] = x / 255, centre-cropped to ``out_hw`` when
    given (the crop starts at ``(H - h) // 2``, ``(W - w) // 2``)."""
    _check_images(x)
    if out_hw is not None:
        h, w = int(out_hw[0]), int(out_hw[1])
        H, W = x.shape[-2:]
        if h > H or w > W:
            raise ValueError(f"out_hw = {[h, w]} is larger than the images ({H} x {W})")
        top, left = (H - h) // 2, (W - w) // 2
        x = x[..., top:top + h, left:left + w]
    return x.float().div_(255.0)


def augment_batch(x: torch.Tensor, index: torch.Tensor, *, seed: int, epoch: int, cfg: ImageAugment,
                  fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Augment a batch of training images: uint8 [B, C, H, W] (any device), ``index`` int64 [B] (each sample's
    index in its split) -> float32 [B, C, h, w] in [0, 1] on x's device (``h, w`` = ``cfg.out_hw`` or H, W).

    A pure function of (image, seed, epoch, index, cfg) -- see the module docstring. ``fill`` is the Cutout value
    (a float, or float [C] in [0, 1], e.g. the store's mean so that the square is zero after normalisation)."""
    _check_images(x)
    if index.shape != x.shape[:1]:
        raise ValueError(f"index has shape {tuple(index.shape)}; expected ({x.shape[0]},), one per image")
    if not cfg.active:
        return to_float(x, cfg.out_hw)
    idx = index.detach().to("cpu", torch.int64).numpy()
    B, C, H, W = x.shape
    h, w = (H, W) if cfg.out_hw is None else (int(cfg.out_hw[0]), int(cfg.out_hw[1]))
    flip = draw_uniform(seed, epoch, idx, _K_FLIP) < cfg.flip_p
    if cfg.resized_crop is not None:
        out = _resized_crop(x, idx, seed, epoch, cfg.resized_crop, (h, w))
        if flip.any():
            out = torch.where(torch.as_tensor(flip, device=x.device)[:, None, None, None], out.flip(-1), out)
    else:
        out = _crop_flip(x, idx, seed, epoch, cfg.crop_pad, (h, w), flip).float().div_(255.0)
    if cfg.autoaugment is not None:
        out = _autoaugment(out, idx, seed, epoch, AUTOAUGMENT_POLICIES[cfg.autoaugment])
    if cfg.cutout_px:
        out = _cutout(out, idx, seed, epoch, cfg.cutout_px, fill)
    return out


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a uint8 tensor [B, C, H, W]; got {got}")


# ------------------------------------------------------------------------------------------ the steps
def _crop_flip(x: torch.Tensor, idx: np.ndarray, seed: int, epoch: int, pad: int, hw: tuple[int, int],
               flip: np.ndarray) -> torch.Tensor:
    """The random ``h x w`` window of x zero-padded by ``pad``, mirrored where ``flip``: uint8 [B, C, h, w]."""
    B, C, H, W = x.shape
    h, w = hw
    if h > H + 2 * pad or w > W + 2 * pad:
        raise ValueError(f"out_hw = {[h, w]} is larger than the padded images ({H + 2 * pad} x {W + 2 * pad})")
    top = _randint(draw_uniform(seed, epoch, idx, _K_CROP_Y), H + 2 * pad - h + 1)
    left = _randint(draw_uniform(seed, epoch, idx, _K_CROP_X), W + 2 * pad - w + 1)
    rows = top[:, None] + np.arange(h)
    cols = np.where(flip[:, None], left[:, None] + (w - 1 - np.arange(w)), left[:, None] + np.arange(w))
    if not pad and not flip.any() and (h, w) == (H, W):
        return x
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    Hp, Wp = H + 2 * pad, W + 2 * pad
    flat = torch.as_tensor((rows[:, :, None] * Wp + cols[:, None, :]).reshape(B, 1, h * w), device=x.device)
    # one gather over the flattened padded plane (torch's advanced indexing of [b, rows, cols] is ~100x slower)
    return xp.reshape(B, C, Hp * Wp).gather(2, flat.expand(B, C, h * w)).reshape(B, C, h, w)


def _resized_crop(x: torch.Tensor, idx: np.ndarray, seed: int, epoch: int, scale: list[float],
                  hw: tuple[int, int]) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params drawn per sample (area fraction uniform in ``scale``, aspect
    ratio log-uniform in [3/4, 4/3], the first of 10 tries that fits, else the centre crop of the clamped ratio),
    resized bilinearly to ``hw`` by kornia: float32 [B, C, h, w] in [0, 1]."""
    B, C, H, W = x.shape
    area = H * W
    lo_r, hi_r = math.log(3 / 4), math.log(4 / 3)
    ch, cw, top, left = (np.zeros(B, np.int64) for _ in range(4))
    done = np.zeros(B, bool)
    for attempt in range(10):
        k = _K_RRC + 4 * attempt
        target = area * (scale[0] + (scale[1] - scale[0]) * draw_uniform(seed, epoch, idx, k))
        ratio = np.exp(lo_r + (hi_r - lo_r) * draw_uniform(seed, epoch, idx, k + 1))
        cw_a = np.rint(np.sqrt(target * ratio)).astype(np.int64)
        ch_a = np.rint(np.sqrt(target / ratio)).astype(np.int64)
        ok = ~done & (cw_a > 0) & (cw_a <= W) & (ch_a > 0) & (ch_a <= H)
        top_a = _randint(draw_uniform(seed, epoch, idx, k + 2), np.maximum(H - ch_a + 1, 1))
        left_a = _randint(draw_uniform(seed, epoch, idx, k + 3), np.maximum(W - cw_a + 1, 1))
        for arr, new in ((ch, ch_a), (cw, cw_a), (top, top_a), (left, left_a)):
            arr[ok] = new[ok]
        done |= ok
    if not done.all():  # torchvision's fallback: the whole image at the ratio clamped to [3/4, 4/3]
        in_ratio = W / H
        fw, fh = (W, int(round(W / (4 / 3)))) if in_ratio > 4 / 3 else (
            (int(round(H * 3 / 4)), H) if in_ratio < 3 / 4 else (W, H))
        ch[~done], cw[~done] = fh, fw
        top[~done], left[~done] = (H - fh) // 2, (W - fw) // 2
    x0, y0 = left.astype(np.float32), top.astype(np.float32)
    x1, y1 = x0 + cw - 1, y0 + ch - 1
    boxes = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1),
                      np.stack([x0, y1], -1)], 1)  # [B, 4, (x, y)]: tl, tr, br, bl, inclusive pixel corners
    xf = x.float().div_(255.0)
    out = kornia.geometry.transform.crop_and_resize(xf, torch.as_tensor(boxes, device=x.device), hw,
                                                    mode="bilinear", align_corners=True)
    return out.clamp_(0.0, 1.0)


def _cutout(x: torch.Tensor, idx: np.ndarray, seed: int, epoch: int, size: int,
            fill: torch.Tensor | float) -> torch.Tensor:
    """DeVries & Taylor's Cutout: centre (cy, cx) uniform over the image, the square rows cy - size//2 .. +size
    (clipped at the border) set to ``fill``; always applied."""
    B, C, h, w = x.shape
    cy = _randint(draw_uniform(seed, epoch, idx, _K_CUT_Y), h) - size // 2
    cx = _randint(draw_uniform(seed, epoch, idx, _K_CUT_X), w) - size // 2
    dev = x.device
    ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
    cy_t, cx_t = torch.as_tensor(cy, device=dev)[:, None], torch.as_tensor(cx, device=dev)[:, None]
    in_rows = (ar_h >= cy_t) & (ar_h < cy_t + size)  # [B, h]
    in_cols = (ar_w >= cx_t) & (ar_w < cx_t + size)  # [B, w]
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, h, w]
    value = torch.as_tensor(fill, dtype=x.dtype, device=dev).reshape(1, -1, 1, 1)
    return torch.where(mask, value, x)


# ------------------------------------------------------------------------------------------ AutoAugment
#: op -> (magnitude of bins 0..9 as torchvision's AutoAugment._augmentation_space(10, ...) defines them, signed);
#: translate magnitudes are fractions of the image side (torchvision: 150/331 of it at bin 9, cast to int pixels).
_BINS = np.arange(10)
_MAGNITUDES: dict[str, tuple[np.ndarray, bool]] = {
    "shear_x": (np.linspace(0.0, 0.3, 10), True),
    "shear_y": (np.linspace(0.0, 0.3, 10), True),
    "translate_x": (np.linspace(0.0, 150.0 / 331.0, 10), True),
    "translate_y": (np.linspace(0.0, 150.0 / 331.0, 10), True),
    "rotate": (np.linspace(0.0, 30.0, 10), True),
    "brightness": (np.linspace(0.0, 0.9, 10), True),
    "color": (np.linspace(0.0, 0.9, 10), True),
    "contrast": (np.linspace(0.0, 0.9, 10), True),
    "sharpness": (np.linspace(0.0, 0.9, 10), True),
    "posterize": (8 - np.round(_BINS / ((10 - 1) / 4)), False),
    "solarize": (np.linspace(255.0, 0.0, 10) / 255.0, False),
    "auto_contrast": (np.zeros(10), False),
    "equalize": (np.zeros(10), False),
    "invert": (np.zeros(10), False),
}


def aa_magnitude(op: str, bin_: int | None, sign: float | np.ndarray = 1.0) -> np.ndarray:
    """The magnitude an AutoAugment op runs with at bin ``bin_`` (None: an op without one), times ``sign`` for
    the signed ops (torchvision's table; see `_MAGNITUDES`)."""
    values, signed = _MAGNITUDES[op]
    m = values[bin_ or 0]
    return m * np.asarray(sign) if signed else m * np.ones_like(np.asarray(sign, dtype=np.float64))


def _gray_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the grayscale image (ITU-R 601-2 luma, as PIL and torchvision): [B, 1, 1, 1]."""
    g = kornia.color.rgb_to_grayscale(x) if x.shape[1] == 3 else x.mean(1, keepdim=True)
    return g.mean((-3, -2, -1), keepdim=True)


def _auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """torchvision's autocontrast: each channel stretched to [0, 1] by its min and max (a flat channel kept)."""
    lo = x.amin((-2, -1), keepdim=True)
    hi = x.amax((-2, -1), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0.0, 1.0)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` [n] high bits of each 8-bit value (PIL's ImageOps.posterize). Not kornia's: its
    ``posterize`` truncates ``x * 255`` in float32 (k / 255 * 255 can fall just below k) and loops per sample."""
    mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8).to(x.device)[:, None, None, None]
    return (x.mul(255.0).round_().to(torch.uint8) & mask).to(x.dtype).div_(255.0)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per image and channel (the algorithm of kornia's and torchvision's ``equalize``:
    lut = (cumsum(hist) + step // 2) // step shifted by one bin, step = (N - count of the top value) // 255; a
    channel with step 0 kept), vectorised over the batch: kornia's loops over images and channels in Python."""
    n, C, H, W = x.shape
    v = x.mul(255.0).round_().to(torch.int64).reshape(n * C, H * W)
    hist = torch.zeros(n * C, 256, dtype=torch.int64, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    step = (H * W - hist.gather(1, v.amax(1, keepdim=True))) // 255  # [nC, 1]
    lut = (hist.cumsum(1) + step // 2) // step.clamp_min(1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = torch.where(step == 0, v, lut.gather(1, v))
    return out.reshape(n, C, H, W).to(x.dtype).div_(255.0)


def apply_aa_op(x: torch.Tensor, op: str, magnitude: torch.Tensor) -> torch.Tensor:
    """One AutoAugment op on float images [n, C, H, W] in [0, 1] with one magnitude per image (float [n]), by
    kornia's functionals (nearest interpolation, zero fill for the geometric ops); rounded to the 1/255 grid."""
    n, C, H, W = x.shape
    m = magnitude.to(x.device, x.dtype)
    T = kornia.geometry.transform
    E = kornia.enhance
    if op in ("shear_x", "shear_y"):  # (1, m, 0, 0, 1, 0) about the origin: the official AutoAugment's shear
        zero = torch.zeros_like(m)
        sh = torch.stack([m, zero] if op == "shear_x" else [zero, m], -1)
        y = T.shear(x, sh, mode="nearest", padding_mode="zeros", align_corners=True)
    elif op in ("translate_x", "translate_y"):
        px = torch.trunc(m * (W if op == "translate_x" else H))  # torchvision: int(magnitude) pixels
        zero = torch.zeros_like(px)
        y = T.translate(x, torch.stack([px, zero] if op == "translate_x" else [zero, px], -1),
                        mode="nearest", padding_mode="zeros", align_corners=True)
    elif op == "rotate":
        y = T.rotate(x, m, mode="nearest", padding_mode="zeros", align_corners=True)
    elif op == "brightness":  # PIL's Brightness: blend with black (kornia's adjust_brightness adds instead)
        y = x * (1.0 + m)[:, None, None, None]
    elif op == "color":  # PIL's Color: blend with the grayscale image; a 1-channel image has no colour
        y = E.adjust_saturation_with_gray_subtraction(x, 1.0 + m) if C == 3 else x
    elif op == "contrast":  # PIL's Contrast: blend with the image's mean gray (per image, also for C != 3)
        f = (1.0 + m)[:, None, None, None]
        y = x * f + _gray_mean(x) * (1.0 - f)
    elif op == "sharpness":
        y = E.sharpness(x, 1.0 + m)
    elif op == "posterize":
        y = _posterize(x, m.round().to(torch.int64))
    elif op == "solarize":
        y = E.solarize(x, m)
    elif op == "auto_contrast":
        y = _auto_contrast(x)
    elif op == "equalize":
        y = _equalize(x)
    elif op == "invert":
        y = E.invert(x)
    else:  # pragma: no cover - the tables above are the only source of op names
        raise KeyError(op)
    return y.clamp(0.0, 1.0).mul_(255.0).round_().div_(255.0)


def aa_draw(idx: np.ndarray, seed: int, epoch: int, policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample's AutoAugment draw: sub-policy int64 [B], applied bool [B, 2], sign float64 [B, 2] (+-1)."""
    sub = _randint(draw_uniform(seed, epoch, idx, _K_AA_SUB), len(policy))
    probs = np.array([[p for _, p, _ in s] for s in policy])[sub]  # [B, 2]
    u = np.stack([draw_uniform(seed, epoch, idx, _K_AA_APPLY + j) for j in (0, 1)], 1)
    sign = np.where(np.stack([draw_uniform(seed, epoch, idx, _K_AA_SIGN + j) for j in (0, 1)], 1) < 0.5, -1.0, 1.0)
    return sub, u < probs, sign  # torchvision applies when U <= p; U < p differs on a set of measure zero


def _autoaugment(x: torch.Tensor, idx: np.ndarray, seed: int, epoch: int, policy) -> torch.Tensor:
    """Per sample one sub-policy, its two ops in order; one kornia call per (slot, op kind) present."""
    sub, applied, sign = aa_draw(idx, seed, epoch, policy)
    x = x.clone()
    for slot in (0, 1):
        names = np.array([policy[s][slot][0] for s in sub])
        bins = np.array([policy[s][slot][2] or 0 for s in sub])
        for op in sorted(set(names[applied[:, slot]])):
            rows = np.flatnonzero(applied[:, slot] & (names == op))
            mag = np.array([aa_magnitude(op, bins[r], sign[r, slot]) for r in rows], dtype=np.float32)
            sel = torch.as_tensor(rows, device=x.device)
            x[sel] = apply_aa_op(x[sel], op, torch.as_tensor(mag))
    return x
