"""Atomic output: a product (a directory tree or a file) appears complete under its path, or not at all.

`atomic_output` yields a temporary sibling ``<path>.tmp-<pid>`` to write into and publishes it on success: a file
by ``os.replace``, a directory by one ``renameat2(RENAME_EXCHANGE)`` with the old one (Linux), so the path never
lacks a complete product; writers of one folder take turns under an ``flock`` on it. A killed writer leaves only
its temporary, which the next writer of that product clears. Every product uses it: event stores, frame caches,
checkpoints, metrics and reports (`write_atomic`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["atomic_output", "write_atomic", "remove_path"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_libc_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux ``renameat2(..., RENAME_EXCHANGE)``): at every
    instant each name holds one complete tree. False where the OS or the filesystem cannot exchange."""
    global _libc_renameat2
    if _libc_renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _libc_renameat2 = fn
        except (AttributeError, OSError):  # not Linux, or a libc without renameat2 (glibc < 2.28)
            _libc_renameat2 = False
    if _libc_renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _libc_renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # kernel / filesystem cannot
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive ``flock`` on the folder itself, held by the writers of products in it (not by readers) across
    the swap and the clean-up of temporaries: concurrent writers of one product publish one after the other. No
    lock file is created (a DVC output folder stays exactly the products)."""
    if fcntl is None:  # pragma: no cover - Windows: no flock; the swap still never leaves a partial product
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _after_swap_hook() -> None:
    """Called between the steps of a two-step (non-exchange) swap; tests replace it to simulate a kill there."""


class atomic_output:
    """Context manager yielding a temporary sibling path ``<path>.tmp-<pid>``; on success it replaces ``path``
    (file or directory), on failure it is removed.

    Publishing never leaves a moment without a complete product: a file is ``os.replace``d; a directory is
    exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)`` step (Linux), then the old one, now under the
    temporary name, is deleted. Where the exchange is not available the swap takes two renames (old ->
    ``<path>.old-<pid>``, new -> ``path``). Writers of products in one folder hold an ``flock`` on that folder
    across the swap and the clean-up, so concurrent writers of the same product each publish in turn and the last
    one's complete product stays. On entry (under that lock), leftovers of dead processes are cleared:
    ``.tmp-<pid>`` is removed; ``.old-<pid>`` (a kill between the two renames) is renamed back to ``path`` when
    ``path`` is missing, removed otherwise. Temporaries of live processes are left alone."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")

    def _clear_stale(self) -> None:
        for kind in ("old", "tmp"):  # old first: a stranded previous product is restored before temporaries go
            for stale in sorted(self.path.parent.glob(f"{glob.escape(self.path.name)}.{kind}-*")):
                pid = stale.name.rsplit("-", 1)[-1]
                if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                    continue
                if kind == "old" and not os.path.lexists(self.path):
                    os.replace(stale, self.path)
                else:
                    remove_path(stale)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.parent):
            self._clear_stale()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            remove_path(self.tmp)
            return
        with _locked(self.path.parent):
            self._publish()
        remove_path(self.tmp)  # the replaced product, if there was one (outside the lock: it may be large)

    def _publish(self) -> None:
        if not self.tmp.is_dir() or not os.path.lexists(self.path):
            os.replace(self.tmp, self.path)  # a file, or a directory onto nothing: one atomic step
            return
        if _exchange(self.tmp, self.path):
            return
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        os.replace(self.path, old)
        _after_swap_hook()
        os.replace(self.tmp, self.path)
        os.replace(old, self.tmp)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (metrics, CSV) so that readers see the old or the new content, never a part."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def remove_path(p: Path) -> None:
    """Delete a file or a directory tree (a store, a cache, a temporary)."""
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
