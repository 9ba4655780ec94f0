"""Process-wide runtime settings: the rules for the parallel Numba kernels (`pipeline.binning`,
`pipeline.io.aedat3`), and the CPU tuning a training process asks for (`configure_cpu`).

Every module with a ``parallel=True`` kernel imports this one, so the rule is visible where the kernels are:

* **Threading layer: workqueue**, Numba's own. GNU OpenMP is not fork-safe (DataLoader workers fork after the
  parent has binned) and its spin-waiting threads slowed short parallel calls 20x whenever other processes kept
  the cores busy ('forksafe' still resolved to OpenMP once torch was loaded). The layer is chosen when this
  module is imported, before any parallel kernel can run.
* **One parallel launch at a time.** The workqueue layer aborts the whole process when two Python threads launch
  parallel kernels at once. Hold `PARALLEL_LOCK` around every parallel launch: block on it (`with PARALLEL_LOCK`)
  or, where a serial kernel can do the job, try it (`acquire(blocking=False)`) and run serially when it is taken.
* **CPU tuning for training**, explicit: `configure_cpu` is called by the stage that trains on a CPU
  (`pipeline.train`) and by the benchmarks, never on import. It imports torch itself, so the stages that only
  import this module for the threading layer (ingest, bin) never load torch.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import NamedTuple

import numba

__all__ = ["THREADING_LAYER", "PARALLEL_LOCK", "CPUSettings", "configure_cpu"]

THREADING_LAYER = "workqueue"
numba.config.THREADING_LAYER = THREADING_LAYER

#: Held during every parallel kernel launch (see the module docstring).
PARALLEL_LOCK = threading.Lock()


class CPUSettings(NamedTuple):
    """What :func:`configure_cpu` managed to switch on."""

    flush_denormal: bool
    malloc_keeps_large_blocks: bool


def configure_cpu(*, malloc_threshold_bytes: int | None = 1 << 30) -> CPUSettings:
    """Process-wide CPU settings for training; call once where training (or a benchmark) starts.

    * Flush denormal floats to zero: decaying membranes (``v *= 1 - 1/tau`` with no input) walk
      into the denormal range, where x86 arithmetic is many times slower (4.5x slower training
      steps were seen).
    * glibc only: raise malloc's mmap and trim thresholds to ``malloc_threshold_bytes`` (None: leave
      them). By default glibc serves every block above 32 MiB with a fresh ``mmap`` and returns it on
      free, so each large activation (e.g. ``[T*B, 128, 64, 64]`` floats) is page-faulted in again on
      every step; with time folded into the batch this made the gesture net's step cost grow
      super-linearly in ``T*B`` (T=6 cost 3.7x T=2 instead of 3x). Keeping those blocks on the heap
      restores linear scaling; the price is that freed memory stays with the process.

    Returns which of the two took effect (``torch.set_flush_denormal``'s and ``mallopt``'s answers).
    """
    import torch  # here, not at the top: ingest and bin import this module and never need torch

    if malloc_threshold_bytes is not None and not 0 < malloc_threshold_bytes < 2**31:
        raise ValueError(f"malloc_threshold_bytes must be in (0, 2**31) (a C int), got {malloc_threshold_bytes}")
    flushed = bool(torch.set_flush_denormal(True))
    tuned = False
    if malloc_threshold_bytes is not None and sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
            mallopt = None
        if mallopt is not None:
            m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> parameter numbers
            tuned = bool(mallopt(m_mmap_threshold, int(malloc_threshold_bytes))) and bool(
                mallopt(m_trim_threshold, int(malloc_threshold_bytes))
            )
    return CPUSettings(flush_denormal=flushed, malloc_keeps_large_blocks=tuned)
