"""Process-wide runtime rules for the parallel Numba kernels (`pipeline.binning`, `pipeline.io.aedat3`).

Every module with a ``parallel=True`` kernel imports this one, so the rule is visible where the kernels are:

* **Threading layer: workqueue**, Numba's own. GNU OpenMP is not fork-safe (DataLoader workers fork after the
  parent has binned) and its spin-waiting threads slowed short parallel calls 20x whenever other processes kept
  the cores busy ('forksafe' still resolved to OpenMP once torch was loaded). The layer is chosen when this
  module is imported, before any parallel kernel can run.
* **One parallel launch at a time.** The workqueue layer aborts the whole process when two Python threads launch
  parallel kernels at once. Hold `PARALLEL_LOCK` around every parallel launch: block on it (`with PARALLEL_LOCK`)
  or, where a serial kernel can do the job, try it (`acquire(blocking=False)`) and run serially when it is taken.
"""

from __future__ import annotations

import threading

import numba

__all__ = ["THREADING_LAYER", "PARALLEL_LOCK"]

THREADING_LAYER = "workqueue"
numba.config.THREADING_LAYER = THREADING_LAYER

#: Held during every parallel kernel launch (see the module docstring).
PARALLEL_LOCK = threading.Lock()
