"""A training run: its parameters (`TrainConfig`, the ``train:`` section) and its run directory's checkpoint --
save it atomically, load it (refusing a truncated file), rebuild its network.

    <runs_root>/<dataset>/<method>/checkpoint.pt    model (the last epoch's), optimizer, scheduler, scaler state,
                                                    config, model_args, epoch, selected_epoch, selected_model (the
                                                    selected epoch's weights; None: the last epoch's), history,
                                                    store_id / store_path, frames_root

The checkpoint keeps ``config`` as plain dicts (``dataclasses.asdict``); `saved_train_config` reads one back,
filling in the defaults of keys added since it was written. Shared by `pipeline.train` (writes, resumes) and
`pipeline.evaluate` (reads): stages never import each other.
"""

from __future__ import annotations

import dataclasses
import pickle
import typing
from pathlib import Path

import torch

from models.losses import KD_ON, METHODS, SSD_TARGETS, TASK_LOSSES
from models.nets import BN_STATS, WEAK_HEADS, SpikingNet, build_model
from models.neurons import NeuronConfig
from pipeline.config import ConfigError, build, check_choice
from pipeline.data import TEACHER_INPUTS, Augment
from pipeline.errors import Refusal
from pipeline.frames import Timesteps
from pipeline.guards import nbytes_of, writing
from pipeline.store import atomic_output

__all__ = ["TrainConfig", "saved_train_config", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "load_run"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Timesteps):
    """`pipeline.train` (per-dataset values come from ``recipes.<name>.train``). The defaults are params.yaml's
    (tested), so code that builds a config without the file gets what `make repro` runs.

    ``T_s``, ``T_t`` and ``teacher_T`` come from `pipeline.frames.Timesteps`. The choices are those of the code
    that implements them: ``method`` a key of `models.losses.METHODS`, ``task_loss`` of
    `models.losses.TASK_LOSSES`, ``neuron`` a `models.neurons.NeuronConfig`, ``augment`` a
    `pipeline.data.Augment`; ``arch`` and ``weak_stages`` are checked by `models.nets.build_model` against the
    input size before any work (`pipeline.train`)."""

    method: str = "tssd"  # baseline | multi_T | tsd | ssd | tssd
    arch: str = "small"  # small | gesture_net | vggsnn
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant | step
    step_every: int = 30  # schedule step: the lr is multiplied by step_gamma every step_every epochs
    step_gamma: float = 0.1
    seed: int = 0
    alpha: float = 1.0  # weight of the temporal self-distillation term
    beta: float = 1.0  # weight of the spatial self-distillation term
    teacher_ce: float = 1.0  # weight of the teacher run's own task loss (0: the paper's formula as written)
    weak_ce: float = 0.0  # weight of the weak classifier's own task loss (was `gamma`)
    tau_kd: float = 2.0  # distillation temperature
    kd_on: str = "mean"  # mean (time-averaged logits) | per_step (each student step vs the teacher steps it spans)
    bn_stats: str = "student"  # student (teacher pass: batch stats, running stats untouched) | shared | per_T
    teacher_input: str = "rebin"  # rebin (the events in T_t bins) | repeat (each T_s frame held T_t/T_s steps)
    weak_head: str = "bottleneck"  # bottleneck (BYOT conv-BN-LIF x2, GAP, linear) | gap_linear
    ssd_target: str = "student"  # student | teacher: whose final output the weak classifier is distilled to
    task_loss: str = "ce"  # ce (on time-averaged logits) | tet (per-timestep, TET)
    tet_lambda: float = 0.0
    teacher_grad: bool = False  # does the temporal KD term's gradient reach the teacher run?
    weak_stages: list[str] | None = None  # null = the architecture's middle stage
    neuron: NeuronConfig = dataclasses.field(default_factory=lambda: NeuronConfig(alpha=1.0))
    augment: Augment = dataclasses.field(default_factory=Augment)
    in_memory: bool = True  # load frame caches into RAM
    num_workers: int = 0
    amp: bool = True  # autocast on CUDA (bf16 where supported)
    channels_last: bool = True  # on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the network in place (bench/bench_train_step.py measures it)
    select: str = "last"  # the deployed epoch: last (fixed budget) | best_val (highest val accuracy at T_s)

    #: keys that were renamed: a params file that still uses one gets an error naming the new key
    RENAMED: typing.ClassVar[dict[str, str]] = {"gamma": "weak_ce"}
    #: the methods a recipe's per-method layer (``recipes.<dataset>.by_method``) may name
    BY_METHOD: typing.ClassVar[tuple[str, ...]] = tuple(METHODS)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("train.method", self.method, METHODS)
        check_choice("train.kd_on", self.kd_on, KD_ON)
        check_choice("train.bn_stats", self.bn_stats, BN_STATS)
        check_choice("train.teacher_input", self.teacher_input, TEACHER_INPUTS)
        check_choice("train.weak_head", self.weak_head, WEAK_HEADS)
        check_choice("train.ssd_target", self.ssd_target, SSD_TARGETS)
        check_choice("train.select", self.select, SELECT)
        check_choice("train.optimizer", self.optimizer, ("sgd", "adamw"))  # `pipeline.train` builds them
        check_choice("train.schedule", self.schedule, SCHEDULES)
        if self.step_every < 1 or not 0.0 < self.step_gamma <= 1.0:
            raise ConfigError(f"train.step_every = {self.step_every} must be >= 1 (epochs) and train.step_gamma = "
                              f"{self.step_gamma} in (0, 1]")
        check_choice("train.task_loss", self.task_loss, TASK_LOSSES)
        if self.epochs < 0 or self.batch_size <= 0:
            raise ConfigError(f"train.batch_size = {self.batch_size} must be positive and train.epochs = "
                              f"{self.epochs} >= 0")
        for key in ("lr", "weight_decay", "alpha", "beta", "teacher_ce", "weak_ce", "tet_lambda"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} = {getattr(self, key)} must be >= 0")
        if self.tau_kd <= 0:
            raise ConfigError(f"train.tau_kd = {self.tau_kd} must be > 0 (the distillation temperature divides the logits)")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"train.momentum = {self.momentum} must be in [0, 1)")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers = {self.num_workers} must be >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
                and self.device[5:].isdigit()):
            raise ConfigError(f"train.device = {self.device!r}; choose auto, cpu, cuda or cuda:N")
        self._check_method_switches()

    def _check_method_switches(self) -> None:
        """The TSSD switches that only some methods read: refuse the combinations that cannot mean anything."""
        spec = METHODS[self.method]
        if self.method == "ssd" and self.ssd_target == "teacher":
            raise ConfigError("train.ssd_target = 'teacher' needs the teacher run: use method tssd "
                              "(method ssd has no T_t run)")
        if self.method == "multi_T" and self.teacher_ce == 0:
            raise ConfigError("train.method = multi_T with train.teacher_ce = 0 is the baseline plus an unused "
                              "teacher pass: the control needs the teacher's task loss (teacher_ce > 0)")
        divides = self.teacher_T % self.T_s == 0
        if spec.uses_teacher and self.teacher_input == "repeat" and not divides:
            raise ConfigError(f"train.teacher_input = 'repeat' holds each of the T_s = {self.T_s} frames for "
                              f"T_t / T_s steps: train.T_t = {self.teacher_T} must be a multiple of T_s")
        if self.kd_on == "per_step" and spec.temporal_kd and not divides:
            raise ConfigError(f"train.kd_on = 'per_step' compares each of the T_s = {self.T_s} student steps with the "
                              f"T_t / T_s teacher steps of the same time: train.T_t = {self.teacher_T} must be a "
                              "multiple of T_s (or use kd_on: mean)")
        if spec.uses_teacher and self.bn_stats == "per_T" and self.teacher_ce == 0 and not self.teacher_grad:
            raise ConfigError("train.bn_stats = 'per_T' with teacher_ce = 0 and teacher_grad = false: no loss "
                              "reaches the teacher run, so its own BatchNorm parameters would never train "
                              "(set teacher_ce > 0 or teacher_grad: true, or use bn_stats student/shared)")


#: What a checkpoint written before a train: key existed ran with, where that differs from today's default.
_BEFORE_KEY = {"weak_head": "gap_linear", "bn_stats": "shared"}


def saved_train_config(saved: dict) -> TrainConfig:
    """The `TrainConfig` of a checkpoint's ``config["train"]`` dict (``dataclasses.asdict``, perhaps without the
    keys a checkpoint of an older version did not have: they get the values it ran with -- today's default, or
    ``_BEFORE_KEY``'s where the default changed since; a renamed key is read under its new name)."""
    saved = dict(saved)
    for old, new in TrainConfig.RENAMED.items():
        if old in saved:
            saved[new] = saved.pop(old)
    return build(TrainConfig, {**_BEFORE_KEY, **saved}, "checkpoint config.train")


#: The learning-rate schedules (`pipeline.train._lr_factor`): cosine to 0 over the epochs, constant, or step
#: (x step_gamma every step_every epochs).
SCHEDULES = ("cosine", "constant", "step")

#: How a run picks the epoch it deploys (`pipeline.train`): never on test.
SELECT = ("last", "best_val")


class CheckpointError(Refusal, ValueError):
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
