"""Stage: fetch the official raw files of a dataset (where the licence allows) and verify their checksums.

    python -m pipeline.download dvs_gesture|cifar10_dvs [--raw DIR]

DVS128-Gesture is distributed by IBM behind a licence page: it must be downloaded by hand; this command then
only verifies and extracts what you put in place. CIFAR10-DVS is fetched from figshare. Without network access
the command prints the URLs and where to put the files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.config import PathsConfig, load_section
from pipeline.datasets import DatasetSpec, Download, get_spec

__all__ = ["instructions", "download", "md5sum", "main"]


def instructions(spec: DatasetSpec, raw: Path) -> str:
    """Human instructions: what to download, from where, and where to put it."""
    lines = [f"To ingest {spec.name}, put the official files under {raw}:"]
    for d in spec.downloads:
        how = "download by hand (licence page)" if d.manual else "download"
        lines.append(f"  - {how}: {d.url}  ->  {raw / d.filename}" + (f"  (md5 {d.md5})" if d.md5 else ""))
    lines.append(f"  then extract them so that the layout is: {spec.raw_layout(raw)}")
    lines.append(f"  (`python -m pipeline.download {spec.name}` verifies and extracts archives already in {raw})")
    return "\n".join(lines)


def md5sum(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


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
    `instructions` when a file is missing and cannot be fetched, or when a checksum does not match."""
    raw.mkdir(parents=True, exist_ok=True)
    done = []
    for d in spec.downloads:
        dest = raw / d.filename
        if not dest.is_file():
            if d.manual:
                raise RuntimeError(f"{dest} is missing and must be downloaded by hand.\n{instructions(spec, raw)}")
            try:
                _fetch(d, dest, timeout_s)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise RuntimeError(f"could not download {d.url}: {err}\n{instructions(spec, raw)}") from err
        if d.md5 and (got := md5sum(dest)) != d.md5:
            raise RuntimeError(f"{dest}: md5 {got} does not match the official {d.md5}; delete it and retry")
        _extract(dest, raw)
        done.append(dest)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--raw", type=Path)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    spec = get_spec(args.dataset)
    raw = args.raw or Path(load_section("paths", PathsConfig, args.params).raw_root) / spec.name
    try:
        files = download(spec, raw)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{spec.name}: {len(files)} file(s) verified and extracted under {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
