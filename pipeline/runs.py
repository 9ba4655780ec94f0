"""A run directory's checkpoint: save it atomically, load it (refusing a truncated file), rebuild its network.

    <runs_root>/<dataset>/<method>/checkpoint.pt    model (the last epoch's), optimizer, scheduler, scaler state,
                                                    config, model_args, epoch, selected_epoch, selected_model (the
                                                    selected epoch's weights; None: the last epoch's), history,
                                                    store_id / store_path, frames_root

Shared by `pipeline.train` (writes, resumes) and `pipeline.evaluate` (reads): stages never import each other.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from models.nets import SpikingNet, build_model
from pipeline.guards import nbytes_of, writing
from pipeline.store import atomic_output

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_run"]


class CheckpointError(ValueError):
    """A run's checkpoint is missing, truncated or corrupt."""


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save under a temporary name, then rename; a failed save (a full disk) leaves no temporary behind
    and is one DiskFullError line naming the checkpoint and its size."""
    with writing("checkpoint", path, nbytes_of(obj), "its tensors: model, optimizer state"):
        with atomic_output(path) as tmp:
            torch.save(obj, tmp)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """``torch.load`` of a run's checkpoint; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; train first (python -m pipeline.train)") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint, it is truncated or corrupt ({err}); "
                              "re-train without --resume, or restore the file") from None


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[SpikingNet, dict]:
    """The deployable network of a run (no weak heads) with the weights of its selected epoch (``train.select``,
    chosen on validation), and its checkpoint."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoint.pt", device)
    net = build_model(**ckpt["model_args"])  # the same call `pipeline.train` built the network with
    selected = ckpt.get("selected_model")
    net.load_state_dict(ckpt["model"] if selected is None else selected)
    return net.deploy().to(device), ckpt
