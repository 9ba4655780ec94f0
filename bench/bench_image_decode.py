"""ImageNet decode throughput per core: `pipeline.io.imagenet.decode_reduced` (libjpeg-turbo via simplejpeg, DCT
scaling) against Pillow, on the real photographs scikit-learn ships (640 x 427 JPEGs, near ImageNet's mean size).

Run: ``.venv/bin/python bench/bench_image_decode.py [--short-side 160] [--repeat 50]``

One thread, one process, the same bytes for every decoder; each row is the median over ``--repeat`` decodes of
each photo, interleaved so that all decoders see the same machine load. The Pillow rows are what a plain
torchvision-style loader does: ``Image.open(...).convert("RGB")`` then a resize to the short side, without and
with Pillow's own DCT-scaling hint (``draft``).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

from PIL import Image

from pipeline.io.imagenet import decode_reduced

PHOTOS = Path(__import__("sklearn.datasets", fromlist=["x"]).__file__).parent / "images"


def _pillow(data: bytes, short: int, draft: bool):
    with Image.open(io.BytesIO(data)) as im:
        if draft:
            im.draft("RGB", (im.width * short // min(im.size), im.height * short // min(im.size)))
        img = im.convert("RGB")
    s = short / min(img.size)
    return img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.BILINEAR)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short-side", type=int, default=160)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    blobs = [(PHOTOS / n).read_bytes() for n in ("china.jpg", "flower.jpg")]
    decoders = {
        "simplejpeg, DCT-scaled (ours)": lambda d: decode_reduced(d, args.short_side),
        "Pillow, full decode + resize": lambda d: _pillow(d, args.short_side, draft=False),
        "Pillow, draft + resize": lambda d: _pillow(d, args.short_side, draft=True),
    }
    times: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(args.repeat):
        for data in blobs:
            for name, fn in decoders.items():
                t0 = time.perf_counter()
                fn(data)
                times[name].append(time.perf_counter() - t0)
    ours = statistics.median(times["simplejpeg, DCT-scaled (ours)"])
    print(f"decode 640x427 JPEG -> short side {args.short_side}, one thread, median of {2 * args.repeat}:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<32} {1 / med:8.0f} images/s per core   ({med / ours:4.2f}x ours' time)")


if __name__ == "__main__":
    main()
