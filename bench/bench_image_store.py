"""Image store: ingest speed and size for a CIFAR-10-sized release, and the one-time read of a split.

    .venv/bin/python bench/bench_image_store.py [--per-batch 10000] [--format zarr h5]

Writes a ``cifar-10-python.tar.gz`` in the release's layout (five data batches + test batch of ``--per-batch``
images each: 60 000 by default, as the real one) whose images are 32 x 32 crops of the real photographs
scikit-learn ships (china.jpg, flower.jpg) at random positions and 24 scales -- natural-image statistics, so the
store's compression is representative (random pixels would not compress at all) -- then times
`pipeline.ingest_images.ingest_images` (md5 + reading the tarball + writing the store), the store's size, and
``split.load()`` of the training split (what a training run does once).
"""

from __future__ import annotations

import argparse
import io
import pickle
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.images import IMAGE_DATASETS
from pipeline.image_store import open_image_store
from pipeline.ingest_images import ingest_images

PHOTOS = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "images"


def natural_crops(n: int, seed: int) -> np.ndarray:
    """``n`` images uint8 (n, 3072) in CIFAR's row layout (R, G, B planes): 32 x 32 windows of the two photographs
    shrunk by one of 24 factors (a window covers 32..160 px of the photo), at random positions."""
    rng = np.random.default_rng(seed)
    levels = []
    for f in ("china.jpg", "flower.jpg"):
        im = Image.open(PHOTOS / f).convert("RGB")
        for side in np.linspace(32, 160, 12).astype(int):
            s = 32 / side
            levels.append(np.asarray(im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BILINEAR)))
    out = np.empty((n, 3, 32, 32), np.uint8)
    for i in range(n):
        a = levels[int(rng.integers(len(levels)))]
        y, x = int(rng.integers(0, a.shape[0] - 31)), int(rng.integers(0, a.shape[1] - 31))
        out[i] = a[y : y + 32, x : x + 32].transpose(2, 0, 1)
    return out.reshape(n, 3072)


def write_release(path: Path, per_batch: int) -> None:
    root = "cifar-10-batches-py"
    members = {f"{root}/batches.meta": pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, 2)}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = natural_crops(per_batch, k)
        members[f"{root}/{name}"] = pickle.dumps({b"data": data, b"labels": [(j * 7 + k) % 10 for j in range(per_batch)],
                                                  b"filenames": [f"{j}.png".encode() for j in range(per_batch)]}, 2)
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:  # gzip -6, the gzip default
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-batch", type=int, default=10000)
    ap.add_argument("--format", nargs="+", default=["zarr", "h5"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_release(tmp / "cifar-10-python.tar.gz", args.per_batch)
        n = 6 * args.per_batch
        raw_bytes = n * 3072
        print(f"release: {n} images, tarball {(tmp / 'cifar-10-python.tar.gz').stat().st_size / 1e6:.1f} MB "
              f"(written in {time.perf_counter() - t0:.1f} s); pixels {raw_bytes / 1e6:.1f} MB")
        print(f"{'format':>6} {'ingest s':>9} {'images/s':>9} {'store MB':>9} {'ratio':>6} {'load(train) s':>14}")
        for fmt in args.format:
            out = tmp / f"cifar10.{fmt}"
            t0 = time.perf_counter()
            ingest_images(IMAGE_DATASETS["cifar10"], tmp, out, fmt, val=0.1, options={"check_md5": False},
                          progress=False)
            dt = time.perf_counter() - t0
            split = open_image_store(out)["train"]
            t1 = time.perf_counter()
            split.load()
            dl = time.perf_counter() - t1
            size = _size(out)
            print(f"{fmt:>6} {dt:9.2f} {n / dt:9.0f} {size / 1e6:9.1f} {size / raw_bytes:6.2f} {dl:14.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
