"""CIFAR training input path, store -> augmented, normalised batch of 128, on CPU: ours (`pipeline.augment`, whole
batches) vs a plain per-sample PIL + numpy pipeline (what torchvision's CIFAR10 class with RandomCrop(32, 4),
RandomHorizontalFlip, [AutoAugment(CIFAR10), ] ToTensor, Normalize[, Cutout] and default_collate does).

    .venv/bin/python bench/bench_image_input.py [--store data_cache/images/cifar10.zarr] [--rounds 5]
        [--batches 40] [--threads 1|2] [--quick]

The images come from the image store's train split (`_train_split`: ``--store``; without it a CIFAR-10-sized
store of natural 32 x 32 crops written to a temporary folder, with a printed note). Both pipelines draw a shuffled epoch
order and hand out (images float32 [128, 3, 32, 32] normalised, labels int64 [128]):

* ours: ``images[idx]`` (one numpy gather) -> `augment_batch` -> ``(x - mean) / std``, one torch thread (and
  ``--threads 2``: a second row with two);
* peer: per sample ``PIL.Image.fromarray`` (torchvision keeps CIFAR as N x 32 x 32 x 3), pad + random crop and
  flip in PIL with torchvision's per-sample torch draws, (AutoAugment's ops in PIL: ImageOps / ImageEnhance /
  Image.transform, torchvision's magnitudes,) ToTensor, Normalize, (DeVries's numpy Cutout mask,) then
  ``torch.stack`` -- one process, one thread (a DataLoader's workers would multiply it by at most their number).

Rows alternate round by round so that both see the same machine load; each row is the median over rounds, as
wall-clock images/s and as images per CPU-second of this process (time.process_time). Two
configurations, reported separately: crop pad 4 + flip (+ normalise), and the same + AutoAugment + Cutout 16.
Target: ours >= 5x the peer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from pipeline.augment import AUTOAUGMENT_POLICIES, ImageAugment, aa_magnitude, augment_batch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's train statistics, where a store records none
CIFAR_STD = (0.2470, 0.2435, 0.2616)
BATCH = 128


def _train_split(path: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N], mean, std) of the image store's train split at ``path``, read
    with ``open_image_store(path)["train"].load()``. Without that store: a CIFAR-10-sized one (50 000 images, 32 x 32
    crops of scikit-learn's photographs, `bench.bench_image_store.natural_crops`) written under ``tmp`` and read the
    same way; without `pipeline.image_store`, a random uint8 array. Either fallback prints a note."""
    try:
        from pipeline.image_store import ImageStoreWriter, open_image_store
    except ImportError:
        print("note: pipeline.image_store is not on this branch; benchmarking on a random uint8 [50000, 3, 32, 32] "
              "array")
        rng = np.random.default_rng(0)
        return (rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, 50000).astype(np.int64), CIFAR_MEAN, CIFAR_STD)
    if not Path(path).exists():
        from bench.bench_image_store import natural_crops

        print(f"note: {path} does not exist (python -m pipeline.ingest_images cifar10 writes it); benchmarking on "
              "a CIFAR-10-sized store of natural 32 x 32 crops written for the purpose")
        path = tmp / "cifar10_like.zarr"
        n = 50000
        with ImageStoreWriter(path, "cifar10_like", [f"c{i}" for i in range(10)], (3, 32, 32), "zarr") as w:
            s = w.split("train", np.arange(n) % 10, np.arange(n), attrs={"source_set": "train"})
            s.write(natural_crops(n, 0).reshape(n, 3, 32, 32))
            w.finish_split("train")
            w.finish({"sources": []})
    store = open_image_store(path)
    split = store["train"]
    images = split.load()
    mean, std = store.attrs.get("mean") or CIFAR_MEAN, store.attrs.get("std") or CIFAR_STD
    return images, np.asarray(split.labels, np.int64), tuple(mean), tuple(std)


# ------------------------------------------------------------------------------------------ ours
def ours_epoch(images: np.ndarray, labels: np.ndarray, order: np.ndarray, n_batches: int, cfg: ImageAugment,
               mean: torch.Tensor, std: torch.Tensor, epoch: int) -> int:
    n = 0
    for b in range(n_batches):
        idx = order[b * BATCH:(b + 1) * BATCH]
        x = torch.from_numpy(images[idx])
        y = torch.from_numpy(labels[idx])
        out = augment_batch(x, torch.from_numpy(idx), seed=0, epoch=epoch, cfg=cfg, fill=mean)
        out = (out - mean[:, None, None]) / std[:, None, None]
        n += out.shape[0] + 0 * y.shape[0]
    return n


# ------------------------------------------------------------------------------------------ the peer
def _pil_aa_op(img: Image.Image, op: str, mag: float) -> Image.Image:
    """torchvision's _apply_op on a PIL image (nearest, zero fill), written with PIL alone."""
    if op == "shear_x":
        return img.transform(img.size, Image.Transform.AFFINE, (1, mag, 0, 0, 1, 0), Image.Resampling.NEAREST,
                             fillcolor=0)
    if op == "shear_y":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, mag, 1, 0), Image.Resampling.NEAREST,
                             fillcolor=0)
    if op == "translate_x":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, -int(mag * img.size[0]), 0, 1, 0),
                             Image.Resampling.NEAREST, fillcolor=0)
    if op == "translate_y":
        return img.transform(img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -int(mag * img.size[1])),
                             Image.Resampling.NEAREST, fillcolor=0)
    if op == "rotate":
        return img.rotate(mag, Image.Resampling.NEAREST, fillcolor=0)
    enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
               "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}
    if op in enhance:
        return enhance[op](img).enhance(1.0 + mag)
    if op == "posterize":
        return ImageOps.posterize(img, int(mag))
    if op == "solarize":
        return ImageOps.solarize(img, mag * 255.0)
    return {"auto_contrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[op](img)


def _peer_sample(hwc: np.ndarray, autoaugment: bool, cutout: int, mean: torch.Tensor, std: torch.Tensor):
    img = Image.fromarray(hwc)
    # RandomCrop(32, padding=4): pad, then torch draws of the offsets, crop
    padded = ImageOps.expand(img, border=4, fill=0)
    top = int(torch.randint(0, 9, (1,)).item())
    left = int(torch.randint(0, 9, (1,)).item())
    img = padded.crop((left, top, left + 32, top + 32))
    if torch.rand(1) < 0.5:  # RandomHorizontalFlip
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if autoaugment:  # torchvision's AutoAugment.forward draws: sub-policy, two probabilities, two signs
        policy = AUTOAUGMENT_POLICIES["cifar10"]
        sub = int(torch.randint(len(policy), (1,)).item())
        probs, signs = torch.rand((2,)), torch.randint(2, (2,))
        for i, (op, p, bin_) in enumerate(policy[sub]):
            if probs[i] <= p:
                img = _pil_aa_op(img, op, float(aa_magnitude(op, bin_, -1.0 if signs[i] == 0 else 1.0)))
    # ToTensor + Normalize
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
    t = (t - mean[:, None, None]) / std[:, None, None]
    if cutout:  # DeVries & Taylor's Cutout on the normalised tensor (numpy mask, np.random centre)
        mask = np.ones((32, 32), np.float32)
        y, x = np.random.randint(32), np.random.randint(32)
        mask[np.clip(y - cutout // 2, 0, 32):np.clip(y + cutout // 2, 0, 32),
             np.clip(x - cutout // 2, 0, 32):np.clip(x + cutout // 2, 0, 32)] = 0.0
        t = t * torch.from_numpy(mask)
    return t


def peer_epoch(data_hwc: np.ndarray, labels: np.ndarray, order: np.ndarray, n_batches: int, autoaugment: bool,
               cutout: int, mean: torch.Tensor, std: torch.Tensor) -> int:
    n = 0
    for b in range(n_batches):
        idx = order[b * BATCH:(b + 1) * BATCH]
        xs = [_peer_sample(data_hwc[i], autoaugment, cutout, mean, std) for i in idx]
        ys = [int(labels[i]) for i in idx]
        out, y = torch.stack(xs), torch.tensor(ys)  # default_collate
        n += out.shape[0] + 0 * y.shape[0]
    return n


# ------------------------------------------------------------------------------------------ the table
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("data_cache/images/cifar10.zarr"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=40, help="batches of 128 per round and row")
    ap.add_argument("--threads", type=int, choices=(1, 2), default=1, help="2: also a row of ours on two threads")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 8 batches (a CI-sized check)")
    args = ap.parse_args(argv)
    rounds, n_batches = (3, 8) if args.quick else (args.rounds, args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        images, labels, mean_t, std_t = _train_split(args.store, Path(tmp))
    data_hwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # torchvision's CIFAR10.data layout
    mean, std = torch.tensor(mean_t, dtype=torch.float32), torch.tensor(std_t, dtype=torch.float32)
    configs = {
        "crop 4 + flip": (ImageAugment(crop_pad=4, flip_p=0.5), False, 0),
        "crop 4 + flip + AutoAugment + Cutout 16": (ImageAugment(crop_pad=4, flip_p=0.5, autoaugment="cifar10",
                                                                 cutout_px=16), True, 16),
    }
    threads0 = torch.get_num_threads()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for name, (cfg, aa, cut) in configs.items():
            rows = ["ours, 1 thread"] + (["ours, 2 threads"] if args.threads == 2 else []) + ["PIL + numpy per sample"]
            times: dict[str, list[tuple[float, float]]] = {row: [] for row in rows}
            for r in range(rounds):
                order = np.random.default_rng(r).permutation(len(images))
                for row in times:
                    torch.set_num_threads(2 if "2 threads" in row else 1)
                    t0, c0 = time.perf_counter(), time.process_time()
                    if row.startswith("ours"):
                        n = ours_epoch(images, labels, order, n_batches, cfg, mean, std, epoch=r)
                    else:
                        n = peer_epoch(data_hwc, labels, order, n_batches, aa, cut, mean, std)
                    times[row].append((n / (time.perf_counter() - t0), n / (time.process_time() - c0)))
            results[name] = {row: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                             for row, v in times.items()}
    finally:
        torch.set_num_threads(threads0)
    print(f"CIFAR train input, store -> normalised batch of {BATCH} on CPU; median of {rounds} rounds of "
          f"{n_batches} batches ({len(images)} images in the split)")
    print(f"    {'':<26} {'images/s (wall)':>16} {'images/CPU-s':>13}   (ratios to the peer)")
    for name, rows in results.items():
        peer_w, peer_c = rows["PIL + numpy per sample"]
        print(f"  {name}:")
        for row, (w, c) in rows.items():
            print(f"    {row:<26} {w:>9.0f} {w / peer_w:5.1f}x {c:>9.0f} {c / peer_c:5.1f}x")
    print("  target: ours >= 5x the per-sample PIL + numpy pipeline. images/CPU-s (process time) is the robust "
          "column on a shared machine: both single-threaded rows then count only their own work")
    return results


if __name__ == "__main__":
    main()
