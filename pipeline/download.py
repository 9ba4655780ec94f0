"""Stage: fetch the official raw files of a dataset (where the licence allows) and verify their checksums.

    python -m pipeline.download dvs_gesture|cifar10_dvs|cifar10|cifar100|imagenet [--raw DIR]

DVS128-Gesture is distributed by IBM behind a licence page: it must be downloaded by hand; this command then
only verifies and extracts what you put in place. CIFAR10-DVS is fetched from figshare. CIFAR-10/100: the official
python tarballs from www.cs.toronto.edu, md5-checked and kept as they are (the ingest reads the .tar.gz). ImageNet
needs a login: the command says what to fetch by hand and how to lay it out. Without network access the command
prints the URLs and where to put the files.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.config import PathsConfig, load_section
from pipeline.datasets import DatasetSpec, Download, MissingRawDataError, get_spec
from pipeline.datasets.base import download_instructions
from pipeline.datasets.images import IMAGE_DATASETS, ImageSpec
from pipeline.guards import exits_on_error
from pipeline.io.checksums import md5sum
from pipeline.io.errors import RawDataError

__all__ = ["download", "download_images", "main"]


def _fetch(d: Download, dest: Path, timeout_s: float) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(d.url, timeout=timeout_s) as resp, open(tmp, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=d.filename, file=sys.stderr) as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)


def _extract(archive: Path, raw: Path) -> None:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(raw)
    elif archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            t.extractall(raw, filter="data")


def download(spec: DatasetSpec, raw: Path, timeout_s: float = 30.0) -> list[Path]:
    """Fetch (unless present), verify md5 and extract every official file. Raises RuntimeError with
    `download_instructions` when a file is missing and cannot be fetched, or when a checksum does not match."""
    raw.mkdir(parents=True, exist_ok=True)
    done = []
    for d in spec.downloads:
        dest = raw / d.filename
        if not dest.is_file():
            if d.manual:
                raise RuntimeError(f"{dest} is missing and must be downloaded by hand.\n{download_instructions(spec, raw)}")
            try:
                _fetch(d, dest, timeout_s)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise RuntimeError(f"could not download {d.url}: {err}\n{download_instructions(spec, raw)}") from err
        if d.md5 and (got := md5sum(dest)) != d.md5:
            raise RuntimeError(f"{dest}: md5 {got} does not match the official {d.md5}; delete it and retry")
        _extract(dest, raw)
        done.append(dest)
    return done


def download_images(spec: ImageSpec, raw: Path, timeout_s: float = 30.0) -> list[Path]:
    """A static image dataset's release: fetch each file (unless present) and verify its md5; archives are kept as
    they are. RuntimeError with `ImageSpec.instructions` where a file is missing and cannot be fetched (ImageNet
    always: a login is needed), or a checksum does not match."""
    if spec.embedded:
        return []
    if not spec.downloads:
        try:
            spec.check_raw(raw)
        except MissingRawDataError:
            raise RuntimeError(f"{raw}: {spec.name} must be downloaded by hand.\n{spec.instructions(raw)}") from None
        return [raw / "train", raw / "val"]
    raw.mkdir(parents=True, exist_ok=True)
    done = []
    for d in spec.downloads:
        dest = raw / d.filename
        if not dest.is_file():
            try:
                _fetch(d, dest, timeout_s)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise RuntimeError(f"could not download {d.url}: {err}\n{spec.instructions(raw)}") from err
        if d.md5 and (got := md5sum(dest)) != d.md5:
            raise RuntimeError(f"{dest}: md5 {got} does not match the official {d.md5}; delete it and retry")
        done.append(dest)
    return done


def check_params(params: Path) -> int:
    """For every dataset in params.yaml ``datasets:`` that is not generated here, check that its raw files are in
    place; print what to download and where for each one that is not. Returns 0 when all are there, else 2."""
    from pipeline.config import load_params

    p = load_params(params)
    raw_root = Path(load_section("paths", PathsConfig, p).raw_root)
    missing = 0
    for name in p.get("datasets") or []:
        spec = get_spec(name)
        if not spec.downloads:  # generated by a pipeline stage (digits_dvs)
            continue
        try:
            spec.recordings(raw_root / name, p.get("ingest", {}).get("splits", {}).get(name, spec.default_split))
        except MissingRawDataError as err:
            missing += 1
            print(f"error: {name}: {err}\n{download_instructions(spec, raw_root / name)}\n", file=sys.stderr)
        except RawDataError as err:  # present but malformed (a trials list naming a recording twice, ...)
            missing += 1
            print(f"error: {name}: {err}", file=sys.stderr)
    for name in p.get("image_datasets") or []:  # static image sets: only those params.yaml selects
        if name not in IMAGE_DATASETS:
            missing += 1
            print(f"error: image_datasets: unknown image dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}",
                  file=sys.stderr)
            continue
        try:
            IMAGE_DATASETS[name].check_raw(raw_root / name)
        except MissingRawDataError as err:
            missing += 1
            print(f"error: {name}: {err}\n", file=sys.stderr)
    return 2 if missing else 0


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?")
    ap.add_argument("--raw", type=Path)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--check-params", type=Path, metavar="PARAMS",
                    help="only check that the raw files of every dataset listed in PARAMS are in place")
    args = ap.parse_args(argv)
    if args.check_params:
        return check_params(args.check_params)
    if not args.dataset:
        ap.error("a dataset (or --check-params) is required")
    image = args.dataset in IMAGE_DATASETS
    spec = IMAGE_DATASETS[args.dataset] if image else get_spec(args.dataset)
    raw = args.raw or Path(load_section("paths", PathsConfig, args.params).raw_root) / spec.name
    try:
        files = download_images(spec, raw) if image else download(spec, raw)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if image:
        what = "ships inside scikit-learn: nothing to download" if spec.embedded else \
            f"{len(files)} file(s) in place and verified under {raw}"
        print(f"{spec.name}: {what} (next: python -m pipeline.ingest_images {spec.name})")
        return 0
    print(f"{spec.name}: {len(files)} file(s) verified and extracted under {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
