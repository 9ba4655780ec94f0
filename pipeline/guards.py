"""Checks every stage makes before and while it writes: a writable output folder, a full disk named by product.

Two failures used to end in a traceback after minutes of work, or never be seen at all:

* an output folder that cannot be written (a read-only cache directory or mount): `check_writable` refuses it
  before any work starts, naming the folder (`NotWritableError`);
* a full disk while a product is written (event store, frame cache, checkpoint, metrics): `writing` turns the
  ``OSError(ENOSPC)`` into one line naming the product, its path, the space it needs (an estimate) and the space
  free (`DiskFullError`). The product's own `pipeline.storage.atomic_output` has already removed its temporary by
  then, so nothing half-written is left.

Every stage's ``main`` is decorated with `exits_on_error`, the one place where refusals become ``error:
<message>`` on stderr and an exit code instead of a traceback: a `pipeline.config.ConfigError` (2), and every
`pipeline.errors.Refusal` with its class's exit code -- an `OutputError` (the base of both above: 2 for a
folder refused before work, 1 for a disk that filled during it), a `pipeline.storage.StoreError` (1), a
`pipeline.io.errors.RawDataError` (1), a `pipeline.runs.CheckpointError` (1); a stage may map one differently
(``exits_on_error(codes=..., notes=...)``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.config import ConfigError
from pipeline.errors import Refusal
from pipeline.storage import StoreError

__all__ = ["exits_on_error", "refused", "OutputError", "NotWritableError", "DiskFullError", "check_writable", "writing", "disk_full", "is_disk_full",
           "free_bytes", "human_bytes", "nbytes_of", "empty_samples", "check_splits", "frame_cache_bytes"]

#: Bytes per event in an event store before compression: x, y (u2), t (i8), p (u1).
EVENT_BYTES = 13
_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(Refusal, RuntimeError):
    """An output cannot be written (see the subclasses); the message names the folder or product."""

    exit_code = 1


class NotWritableError(OutputError):
    """An output folder is not writable (refused before any work starts)."""

    exit_code = 2


class DiskFullError(OutputError):
    """The disk filled while a product was written; its temporary has been removed."""

    exit_code = 1


def refused(err: Refusal | ConfigError, note: str = "", code: int | None = None) -> int:
    """Print ``err`` as one ``error: <message>`` line on stderr (then ``note``, on a line of its own, when given)
    and return its exit code: ``code`` when given, else 2 for a `ConfigError`, else ``err.exit_code``."""
    print(f"error: {err}" + (f"\n{note}" if note else ""), file=sys.stderr)
    if code is not None:
        return code
    return 2 if isinstance(err, ConfigError) else err.exit_code


def exits_on_error(main: Callable[..., int] | None = None, *, codes: dict[type, int] | None = None,
                   notes: dict[type, str] | None = None):
    """Decorate a stage's ``main`` (``@exits_on_error`` or ``@exits_on_error(codes=..., notes=...)``): a refusal
    becomes one ``error: ...`` line on stderr (`refused`) and an exit code instead of a traceback.

    Refusals: a `ConfigError` (params file, --set, a refused value; exit 2) and every `pipeline.errors.Refusal`,
    with its class's ``exit_code``: an `OutputError` (an unwritable folder, 2; a full disk, 1), a
    `pipeline.storage.StoreError` (1), a `pipeline.io.errors.RawDataError` (1), a
    `pipeline.runs.CheckpointError` (1). A stage where one of them means something else says so: ``codes``
    ``{class: exit code}`` (evaluate: an unreadable run is refused before work, 2) and ``notes``
    ``{class: line printed after the message}`` (the first matching class, in ``isinstance`` order, wins)."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except (ConfigError, Refusal) as err:
                code = next((c for cls, c in (codes or {}).items() if isinstance(err, cls)), None)
                note = next((n for cls, n in (notes or {}).items() if isinstance(err, cls)), "")
                return refused(err, note, code)

        return wrapper

    return decorate(main) if main is not None else decorate


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: str | Path, what: str) -> None:
    """Refuse, before any work, an output ``folder`` (or the folder that would be created for it) that this
    process cannot write: its nearest existing ancestor must be a writable, searchable directory.

    ``what`` names the product that would go there (``"event store"``, ``"frame caches"``...). Nothing is created.
    ``os.access`` answers for the real user and for read-only mounts (EROFS), and writes nothing.
    """
    folder = Path(folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise NotWritableError(f"{folder}: cannot hold the {what}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == Path(os.path.abspath(folder)) else f" (its existing parent {base})"
        raise NotWritableError(f"{folder}: cannot write the {what} there: the folder{where} is read-only for "
                               "this user; choose another folder (paths.* in params.yaml, --out, --set) or fix "
                               "its permissions")


def is_disk_full(err: BaseException) -> bool:
    """``OSError`` ENOSPC / EDQUOT, also as HDF5 reports it (``errno = 28`` inside the message)."""
    if not isinstance(err, OSError):
        return False
    text = str(err)
    return err.errno in _FULL or "No space left on device" in text or "errno = 28" in text


def free_bytes(path: str | Path) -> int:
    """Bytes free on the file system that holds ``path`` (or would hold it)."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def writing(product: str, path: str | Path, needed: int | None = None, how: str = "") -> Iterator[None]:
    """Around the write of one product: a full disk becomes `DiskFullError` naming ``product`` and ``path``,
    ``needed`` bytes (an estimate; ``how`` says how it was made) and the bytes free. Other errors pass unchanged.
    Place it outside the product's `atomic_output`, so the temporary is gone when the message is printed."""
    try:
        yield
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise disk_full(product, path, needed, how) from None


def disk_full(product: str, path: str | Path, needed: int | None = None, how: str = "") -> DiskFullError:
    """The `DiskFullError` for ``product`` at ``path`` (see `writing`)."""
    need = f"it needs about {human_bytes(needed)}{f' ({how})' if how else ''}, " if needed is not None else ""
    return DiskFullError(f"{path}: no space left on device while writing the {product}: {need}"
                         f"{human_bytes(free_bytes(path))} free there; nothing was written (its temporary was "
                         "removed) -- free some space or write it elsewhere")


def nbytes_of(obj) -> int:
    """Bytes of every tensor / array inside a nested checkpoint object (dicts, lists, tuples)."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(nbytes_of(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes_of(v) for v in obj)
    return 0


def empty_samples(offsets: np.ndarray) -> int:
    """Samples holding no event, from a split's ``offsets`` (``int64[n + 1]``); no event data is read."""
    offsets = np.asarray(offsets)
    return int(np.count_nonzero(offsets[1:] == offsets[:-1]))


def check_splits(store, splits: tuple[str, ...], warn: bool = True) -> None:
    """``store`` (a `pipeline.store.EventStore`): refuse a split (before any binning) whose samples are all empty; with ``warn``, one ``warning:`` line on
    stderr per split that holds some empty samples (legal: their frames are all zero). Counted from the
    split's offsets, no event data read."""
    for split in splits:
        s = store[split]
        n, empty = len(s), empty_samples(s.offsets)
        if n and empty == n:
            raise StoreError(f"{store.path}: every one of the {n} samples of the {split} split is empty (no event in "
                             "its window): its frames would be all zero; re-ingest from the right raw files")
        if warn and empty:
            print(f"warning: {store.attrs['dataset']}/{split}: {empty} of {n} samples are empty (no event in their "
                  "window): their frames are all zero", file=sys.stderr)


def frame_cache_bytes(n_samples: int, binning, sensor) -> tuple[int, str]:
    """A frame cache's size before compression, ``samples x T x P x H x W x itemsize`` (an upper bound: zstd
    usually shrinks it many times), and how it was computed; for `writing`. ``binning`` is a
    `pipeline.frames.Binning`, ``sensor`` the store's `SensorSize`."""
    fs = binning.frame_sensor(sensor)
    needed = n_samples * binning.T * fs.polarities * fs.height * fs.width * np.dtype(binning.dtype).itemsize
    return needed, (f"{n_samples} samples x {binning.T} x {fs.polarities} x {fs.height} x {fs.width} "
                    f"{binning.dtype}, before compression")
