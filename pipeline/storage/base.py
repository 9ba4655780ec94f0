"""What every stored product shares: its error type, its content key, its header and file-inventory checks, and
the pin that keeps a reader on the version it opened.

A product (event store, frame cache) carries root attributes ``format``, ``format_version`` and ``complete``
(the last one written), checked on open by `check_header`; a Zarr product also lists every file written
(`FILES_ATTR`, `list_files`), checked by `check_files` (zarr would read a missing chunk file as zeros).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import Refusal

__all__ = ["StoreError", "stable_hash", "FILES_ATTR", "list_files", "check_files", "check_header", "Pin"]


class StoreError(Refusal, ValueError):
    """A store (event store or frame cache) is missing, incomplete, or of another format/version/identity."""


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys): a content key for caches and stores."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_header(attrs: dict, path: Path, expected_format: str, version: int) -> None:
    """Refuse stores of another format, another version, or not marked complete."""
    if attrs.get("format") != expected_format:
        raise StoreError(f"{path} is not a {expected_format} (format attribute: {attrs.get('format')!r})")
    if attrs.get("format_version") != version:
        raise StoreError(
            f"{path} has format version {attrs.get('format_version')!r}, this code reads version {version}: "
            "rebuild it (e.g. dvc repro)"
        )
    if attrs.get("complete") is not True:
        raise StoreError(f"{path} is incomplete (an interrupted write); rebuild it")


#: Root attribute of a Zarr product (event store, frame cache): ``{relative path: size in bytes}`` of every file
#: written into it except the root ``zarr.json`` (which holds this list). Checked on open (`check_files`).
FILES_ATTR = "files"


def list_files(root: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file under the directory ``root`` except its own ``zarr.json`` (one walk
    and a stat per file: tens to a few thousand files, no data read)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel != "zarr.json":
                out[rel] = os.stat(full).st_size
    return dict(sorted(out.items()))


def check_files(path: Path, attrs: dict) -> dict[str, int] | None:
    """Refuse a Zarr product whose files are not exactly those written (attribute ``files``): a missing file
    (zarr would read it as the fill value, zeros), one of another size, or one that was not written. Returns the
    inventory. Every product of this format version has one; without it nothing could be checked, so it is refused."""
    expected = attrs.get(FILES_ATTR)
    if expected is None:
        raise StoreError(f"{path} has no file inventory (attrs['{FILES_ATTR}']), so a missing chunk file could not be "
                         "detected: rebuild it")
    found = list_files(path)
    problems = [f"{rel} is missing" for rel in expected if rel not in found]
    problems += [f"{rel} has {found[rel]} bytes, {size} when written" for rel, size in expected.items()
                 if rel in found and found[rel] != size]
    problems += [f"{rel} was not written with it" for rel in found if rel not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreError(f"{path} is damaged: " + "; ".join(problems[:3]) + more +
                         f" ({len(expected)} files were written); rebuild it")
    return expected


class Pin:
    """The version of a product a reader opened: the ``(st_dev, st_ino)`` of its path at open time, and an open
    descriptor on it (which keeps that inode, even once replaced and deleted, from being reused while the reader
    lives). Shard files are opened relative to the descriptor, so a reader never mixes two versions: after a
    re-ingest replaced the store, `check` (and every read of a file the replacement deleted) raises a StoreError
    saying the store changed. Pickling drops the descriptor; the copy reopens the path and refuses another inode."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"{path} does not exist") from None
        st = os.fstat(self._fd)
        self.ident = (st.st_dev, st.st_ino)

    def changed(self) -> StoreError:
        return StoreError(f"{self.path} changed while it was being read (replaced by another write, e.g. a "
                          "concurrent ingest): nothing read after the change was used; run again")

    def check(self) -> None:
        """Raise `changed` unless ``path`` is still the version opened."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self.changed() from None
        if (st.st_dev, st.st_ino) != self.ident:
            raise self.changed()

    def fd(self) -> int:
        if self._fd is None:  # a copy in another process: reopen, and refuse another version
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise self.changed() from None
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.ident:
                os.close(fd)
                raise self.changed()
            self._fd = fd
        return self._fd

    def open_file(self, rel: str) -> int:
        """A descriptor on file ``rel`` of the pinned version (caller closes it); FileNotFoundError if it is gone."""
        return os.open(rel, os.O_RDONLY, dir_fd=self.fd())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
