"""Neuromorphic-data-first pipeline: raw DVS files -> event store -> frame caches -> TSSD training."""

import numba

# Numba's parallel kernels (binning) must not use GNU OpenMP: it is not fork-safe, and DataLoader workers fork
# after the parent has binned. 'forksafe' picks TBB or a non-GNU OpenMP when present, else Numba's workqueue.
numba.config.THREADING_LAYER = "forksafe"

from pipeline.events import EVENT_DTYPE, SensorSize, frame_shape, make_events

__all__ = ["EVENT_DTYPE", "SensorSize", "frame_shape", "make_events"]
