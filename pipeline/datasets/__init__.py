"""Dataset registry: one module per dataset (raw layout, classes, splits, sensor size, downloads)."""

from __future__ import annotations

import importlib

from pipeline.config import ConfigError
from pipeline.datasets.base import DatasetSpec, Download, MissingRawDataError, Recording, Window

__all__ = ["get_spec", "DatasetSpec", "Download", "MissingRawDataError", "Recording", "Window"]


#: Dataset name -> the module holding its SPEC; only the requested one is imported (so a stage's import closure,
#: its DVC deps, holds only the dataset it reads).
MODULES = {
    "dvs_gesture": "pipeline.datasets.dvs_gesture",
    "cifar10_dvs": "pipeline.datasets.cifar10_dvs",
    "digits_dvs": "pipeline.datasets.digits_dvs",
    "orbit_digits": "pipeline.datasets.orbit_digits",
    "recordings": "pipeline.datasets.recordings",
}


def get_spec(name: str) -> DatasetSpec:
    """The dataset module for ``name``; the error (a ConfigError) lists the valid names."""
    if name not in MODULES:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(MODULES))} (for your own "
                         f"recordings: python -m pipeline.ingest recordings --raw DIR --name {name})")
    return importlib.import_module(MODULES[name]).SPEC
