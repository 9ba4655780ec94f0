"""Dataset registry: one module per dataset (raw layout, classes, splits, sensor size, downloads)."""

from __future__ import annotations

from pipeline.config import ConfigError
from pipeline.datasets.base import DatasetSpec, Download, MissingRawDataError, Recording, Window

__all__ = ["get_spec", "DatasetSpec", "Download", "MissingRawDataError", "Recording", "Window"]


def _registry() -> dict[str, DatasetSpec]:
    from pipeline.datasets import cifar10_dvs, digits_dvs, dvs_gesture

    return {"dvs_gesture": dvs_gesture.SPEC, "cifar10_dvs": cifar10_dvs.SPEC, "digits_dvs": digits_dvs.SPEC}


def get_spec(name: str) -> DatasetSpec:
    """The dataset module for ``name``; the error (a ConfigError) lists the valid names."""
    specs = _registry()
    if name not in specs:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(specs))}")
    return specs[name]
