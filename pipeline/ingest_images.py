"""Stage: a static image dataset's official release -> one image store (`pipeline.image_store`).

    python -m pipeline.ingest_images digits_img|cifar10|cifar100|imagenet [--raw DIR] [--out PATH]
                                     [--format zarr|h5] [--size S] [--workers N] [--no-md5] [--no-progress]
                                     [--set section.key=value ...]

``--raw``: the release (default ``<paths.raw_root>/<dataset>``; CIFAR: the folder holding the tarball, or the
tarball itself); ``--out``: the store (default ``<paths.images_root>/<dataset>.zarr`` or ``.h5``). The
validation split is ``ingest.val.<dataset>`` of params.yaml (per class, carved from train); the format
``ingest.format``; digits_img reads params.yaml's ``digits_img:``. ImageNet only: ``--size S`` (short side resized
to S, center crop S x S; default 128) and ``--workers`` decode threads. ``--no-md5``: accept a CIFAR tarball that is
not the official download (one you re-packed); its md5 is recorded either way.

The raw release is read (CIFAR) or listed (ImageNet) and checked before anything is written; a malformed file
stops the stage with one line naming the file (and tarball member), and nothing is published (the store is
written under a temporary name and swapped in once complete).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import FORMATS, IngestConfig, PathsConfig, flag_overrides, load_params, load_section
from pipeline.datasets.base import MissingRawDataError
from pipeline.datasets.images import IMAGE_DATASETS, DigitsImgConfig, ImageSpec, RawImages, get_image_spec
from pipeline.guards import check_writable, exits_on_error, human_bytes, writing
from pipeline.image_store import FORMAT_VERSION, ImageStoreWriter

__all__ = ["main", "ingest_images", "write_image_store"]

#: Images per block handed from the reader to the writer (CIFAR: 12 MiB).
BLOCK_IMAGES = 4096


def write_image_store(spec: ImageSpec, raw: RawImages, out: Path, fmt: str | None = None, *,
                      progress: bool = True, block: int = BLOCK_IMAGES) -> dict:
    """Write ``raw`` (a read release) to the store ``out`` atomically; returns its root attributes."""
    total = sum(len(s) for s in raw.splits.values())
    needed = total * int(np.prod(raw.image_shape))
    with writing("image store", out, needed, f"{total} images x {' x '.join(map(str, raw.image_shape))} uint8, "
                                             "before compression"):
        with ImageStoreWriter(out, spec.name, raw.classes, raw.image_shape, fmt) as w:
            bar = tqdm(total=total, desc=f"ingest {spec.name}", unit="img", disable=not progress, file=sys.stderr)
            for name, s in raw.splits.items():
                sw = w.split(name, s.labels, s.source_index, s.extras, {"source_set": s.source_set})
                for b in s.blocks(block):
                    sw.write(b)
                    bar.update(len(b))
                w.finish_split(name)
            bar.close()
            attrs = {"sources": raw.sources, "validation": raw.validation, "reader_version": spec.reader_version,
                     **raw.attrs}
            attrs.update(raw.late_attrs())
            return w.finish(attrs)


def ingest_images(spec: ImageSpec, raw_dir: Path, out: Path, fmt: str | None = None, *, val: float | None = None,
                  options: dict | None = None, progress: bool = True) -> dict:
    """Read the release of ``spec`` under ``raw_dir`` and write its image store to ``out`` (the library half of the
    stage). Refused before any work: an unwritable output folder, a missing or malformed release."""
    out = Path(out)
    check_writable(out.parent, "image store")
    raw = spec.read(Path(raw_dir), val, options)
    return write_image_store(spec, raw, out, fmt, progress=progress)


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ingest_images", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help=" | ".join(IMAGE_DATASETS))
    ap.add_argument("--raw", type=Path, help="the release (default: <paths.raw_root>/<dataset>)")
    ap.add_argument("--out", type=Path, help="store path (default: <paths.images_root>/<dataset>.zarr|.h5)")
    ap.add_argument("--format", choices=FORMATS)
    ap.add_argument("--size", type=int, help="imagenet: short side and center crop, px (default 128)")
    ap.add_argument("--workers", type=int, help="imagenet: decode threads (default: CPUs, at most 8)")
    ap.add_argument("--no-md5", action="store_true", help="cifar: accept a tarball that is not the official file")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    spec = get_image_spec(args.dataset)
    if args.size is not None and spec.name != "imagenet":
        ap.error("--size is an option of imagenet")
    overrides = args.overrides + flag_overrides("ingest", format=args.format)
    params = load_params(args.params)
    cfg = load_section("ingest", IngestConfig, params, overrides)
    paths = load_section("paths", PathsConfig, params, overrides)
    options: dict = {"check_md5": not args.no_md5, "size": args.size, "workers": args.workers}
    if spec.name == "digits_img":
        options["digits_img"] = load_section("digits_img", DigitsImgConfig, params, overrides)
    raw = args.raw or Path(paths.raw_root) / spec.name
    out = args.out or paths.image_store_path(spec.name, cfg.format)
    t0 = time.perf_counter()
    try:
        attrs = ingest_images(spec, raw, out, cfg.format if args.out is None or args.format else None,
                              val=cfg.val.get(spec.name), options=options, progress=not args.no_progress)
    except MissingRawDataError as err:  # refused before any work: say what to download and where
        print(f"error: {err}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    n = sum(attrs["counts"].values())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.is_dir() else out.stat().st_size
    counts = ", ".join(f"{k} {v}" for k, v in attrs["counts"].items())
    print(f"{spec.name}: {n} images {tuple(attrs['image_shape'])} ({counts}) -> {out} "
          f"[{human_bytes(size)}, store_id {attrs['store_id'][:12]}, format v{FORMAT_VERSION}] in {dt:.1f} s "
          f"({n / max(dt, 1e-9):.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
