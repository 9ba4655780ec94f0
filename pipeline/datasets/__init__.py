"""Dataset registry: one module per dataset (raw layout, classes, splits, sensor size, downloads)."""

from __future__ import annotations

from pipeline.datasets.base import DatasetSpec, Download, MissingRawDataError, Recording, Window

__all__ = ["get_spec", "DatasetSpec", "Download", "MissingRawDataError", "Recording", "Window"]


def _registry() -> dict[str, DatasetSpec]:
    from pipeline.datasets import cifar10_dvs, digits_dvs, dvs_gesture, recordings

    return {"dvs_gesture": dvs_gesture.SPEC, "cifar10_dvs": cifar10_dvs.SPEC, "digits_dvs": digits_dvs.SPEC,
            "recordings": recordings.SPEC}


def get_spec(name: str) -> DatasetSpec:
    """The dataset module for ``name``; the error lists the valid names."""
    specs = _registry()
    if name not in specs:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(specs))} (for your own "
                         f"recordings: python -m pipeline.ingest recordings --raw DIR --name {name})")
    return specs[name]
