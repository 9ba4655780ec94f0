"""File checksums of downloads (the official releases publish md5s)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["md5sum"]


def md5sum(path: str | Path, block: int = 1 << 22) -> str:
    """The hex md5 of a file, read in ``block``-byte pieces (constant memory for multi-GB archives)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
