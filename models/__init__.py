"""Spiking networks (Norse box LIF, time-first ``[T, B, ...]``) and the TSSD losses."""

from models.losses import kd_loss, task_loss, tssd_loss
from models.nets import ARCHITECTURES, Output, SpikingNet, build_model, count_parameters
from models.neurons import LIF, NeuronConfig

__all__ = [
    "ARCHITECTURES",
    "LIF",
    "NeuronConfig",
    "Output",
    "SpikingNet",
    "build_model",
    "count_parameters",
    "kd_loss",
    "task_loss",
    "tssd_loss",
]
