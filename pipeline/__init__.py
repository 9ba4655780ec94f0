"""Neuromorphic-data-first pipeline: raw DVS files -> event store -> frame caches -> TSSD training."""

from pipeline.events import EVENT_DTYPE, SensorSize, frame_shape, make_events

__all__ = ["EVENT_DTYPE", "SensorSize", "frame_shape", "make_events"]
