"""Neuromorphic-data-first pipeline: raw DVS files -> event store -> frame caches -> TSSD training."""

import numba

# Numba's parallel kernels (binning) use Numba's own workqueue threading layer: GNU OpenMP is not fork-safe
# (DataLoader workers fork after the parent has binned) and its spin-waiting threads slowed short parallel calls
# 20x whenever other processes kept the cores busy. ('forksafe' still resolved to OpenMP once torch was loaded.)
# Workqueue's one limit: two Python threads must not call a parallel kernel at the same time.
numba.config.THREADING_LAYER = "workqueue"

from pipeline.events import EVENT_DTYPE, SensorSize, frame_shape, make_events

__all__ = ["EVENT_DTYPE", "SensorSize", "frame_shape", "make_events"]
