"""Stage: train a Norse LIF network with TSSD (or an ablation) on frame caches.

    python -m pipeline.train <dataset> [--method baseline|multi_T|tsd|ssd|tssd] [--epochs N] [--out DIR] [--resume]
                                       [--recipe NAME] [--set train.lr=0.05 ...]
    torchrun --nproc_per_node=N -m pipeline.train <dataset> ...        (data-parallel, DDP)

TSSD (temporal-spatial self-distillation, arXiv 2406.07862) in one step::

    student = model(x at T_s)                 # the network as deployed
    teacher = model(x at T_t)                 # the same weights, the same sample and augmentation, more timesteps
    L = CE(student) + teacher_ce * CE(teacher) + alpha * KD(student <- teacher) + beta * KD(weak head <- student)

Inference runs the student alone at T_s (`SpikingNet.deploy()` drops the weak heads): no extra cost.

Outputs in ``<runs_root>/<dataset>/<method>/``: ``checkpoint.pt`` (model, optimizer, scheduler, config,
epoch, the selected epoch and its weights, history; written atomically every epoch), ``history.csv`` (one row per
epoch: losses, train accuracy, val and test accuracy at T_s and T_t), ``metrics.json`` (the selected epoch, its val
accuracies, its test accuracies measured once at the end, deploy parameter count) and ``timings.json`` (seconds per
epoch and in all: the only wall-clock values, kept out of the tracked outputs so a re-run reproduces them bit for
bit; DVC ignores it, see .dvcignore).

Static images (a dataset of `pipeline.datasets.images.IMAGE_DATASETS`: digits_img, cifar10, cifar100, imagenet) train
through `run_images` on the dataset's image store (``--store``, default ``<paths.images_root>/<dataset>.zarr``,
ingested first when missing) with direct encoding: every split is held in memory, each batch is augmented on the
device (``train.image_augment``, `pipeline.augment`) and normalised by the store's mean/std, and the student and the
teacher see that *same* tensor expanded to T_s and T_t steps (`pipeline.image_data`); ``train.teacher_input`` has
no meaning there (``repeat`` is refused), ``train.augment`` is the event frames' (not read), and there is no time
normalisation. The outputs, selection and resume are the event path's.

Model selection reads the validation split only (``train.select``): ``last`` (default) deploys the last epoch of
the fixed budget, ``best_val`` the epoch with the highest val accuracy at T_s (the earliest on a tie). The test
split is scored every epoch into history.csv for the learning curve, and never read by any choice.

`run` is the table of contents: set up the ranks and device, the data, the model, the optimizer, resume, then
per epoch train, validate (and test, for the history), checkpoint, then the selected model's test accuracy,
history, metrics and timings; the steps follow it in that order. The whole loop
stays in this one file (nanoGPT's train.py), which is why it runs past 400 lines.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from models.losses import METHODS, tssd_loss
from models.nets import SpikingNet, build_model, count_parameters
from pipeline.config import ConfigError, IngestConfig, PathsConfig, flag_overrides, load_section, resolve_recipe
from pipeline.datasets.base import MissingRawDataError
from pipeline.datasets.images import IMAGE_DATASETS
from pipeline.data import CacheView, MultiViewDataset, teacher_frames
from pipeline.frames import BinConfig, Binning, FrameCache, cache_path, ensure_frame_cache
from pipeline.guards import check_splits, check_writable, exits_on_error, frame_cache_bytes, writing
from pipeline.image_data import (ImageSplit, direct, epoch_batches, epoch_order, eval_input, load_split, normaliser,
                                 open_run_image_store, ordered_batches, train_input)
from pipeline.runs import TrainConfig, load_checkpoint, save_checkpoint, saved_train_config
from pipeline.runtime import configure_cpu
from pipeline.store import StoreError, open_event_store, write_atomic

__all__ = ["run", "main", "TrainingDiverged", "Pair"]

HISTORY_FIELDS = ["epoch", "lr", "loss", "task_student", "task_teacher", "tsd", "ssd", "weak_task", "train_acc",
                  "val_acc", "val_acc_teacher", "test_acc", "test_acc_teacher"]
#: Splits whose every sample the run scores (train is scored on the fly while training).
SCORED = ("val", "test")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class Pair(nn.Module):
    """One forward call for student and teacher, so DDP sees one graph and one gradient per parameter."""

    def __init__(self, net: SpikingNet):
        super().__init__()
        self.net = net

    def forward(self, x_s: torch.Tensor, x_t: torch.Tensor | None = None, *, teacher_bn_update: bool = True,
                teacher_grad: bool = True):
        """Student run on ``x_s`` ``[T_s, B, P, H, W]``, teacher run on ``x_t`` ``[T_t, B, P, H, W]`` (or None).

        The teacher run skips the weak heads (no loss reads them); ``teacher_bn_update=False`` keeps it from
        touching any BatchNorm running statistic (``bn_stats: student``); ``teacher_grad=False`` runs it without
        autograd (no loss term sends it a gradient). Under ``bn_stats: per_T`` the net picks the teacher's own
        BatchNorms by its T."""
        out_s = self.net(x_s)
        if x_t is None:
            return out_s, None
        with torch.set_grad_enabled(teacher_grad and torch.is_grad_enabled()):
            return out_s, self.net(x_t, update_bn_stats=teacher_bn_update, weak=False)


# ------------------------------------------------------------------------------------------ the run
def run(cfg: TrainConfig, bin_cfg: BinConfig, store_path: Path, frames_root: Path, out_dir: Path, *,
        resume: bool = False, progress: bool = True, recipe: str | None = None) -> dict:
    """Train ``cfg.method`` on the event store at ``store_path``; writes checkpoint/history/metrics to ``out_dir``.
    ``recipe``: the name of the recipe ``cfg`` came from (`pipeline.config.resolve_recipe`), recorded only.

    Returns the metrics written to ``metrics.json`` (``{}`` on every DDP rank but 0)."""
    ranks = _set_up_ranks(cfg)
    store = open_event_store(store_path)
    _check_before_work(cfg, bin_cfg, store, ranks.device, frames_root, out_dir, warn=ranks.main)
    _claim_device(ranks.device)
    data = _set_up_data(cfg, bin_cfg, store, frames_root, ranks, progress)
    net, model_args = _set_up_model(cfg, data, ranks.device)
    pair = _parallel(net, ranks)
    opt, sched, scaler = _set_up_optimizer(cfg, net, ranks.device)
    deploy_params = count_parameters(net.deploy())
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    state = _resume(ckpt_path, cfg, bin_cfg, store, net, opt, sched, scaler, ranks) if resume else _Progress()
    if ranks.main:
        _print_summary(cfg, store, data, net, deploy_params, ranks)
    _epochs(cfg, pair, opt, sched, scaler, data, ranks, ckpt_path, progress, state, net, model_args,
            {"config": {"train": _comparable(cfg), "bin": dataclasses.asdict(bin_cfg), "recipe": recipe}},
            {"store_id": store.store_id, "store_path": str(store_path), "frames_root": str(frames_root)})
    final = _score_selected(net, data, state, ranks.device, cfg.amp)
    metrics = _write_outputs(out_dir, cfg, store, state, final, deploy_params, ranks, recipe) if ranks.main else {}
    if ranks.distributed:
        dist.destroy_process_group()
    return metrics


def run_images(cfg: TrainConfig, store_path: Path, out_dir: Path, *, dataset: str, resume: bool = False,
               progress: bool = True, recipe: str | None = None) -> dict:
    """Train ``cfg.method`` on the image store at ``store_path`` with direct encoding (`pipeline.image_data`);
    the same steps and outputs as `run`, with the split in memory instead of frame caches.

    The student sees the augmented, normalised image ``x`` as ``x.unsqueeze(0).expand(T_s, ...)``, the teacher the
    same ``x`` expanded to T_t (``train.teacher_input`` has no meaning for images: ``repeat`` is refused, the
    default ``rebin`` is ignored). No time normalisation (``t_ref = None``): every step holds the whole image.
    Returns the metrics written to ``metrics.json`` (``{}`` on every DDP rank but 0)."""
    ranks = _set_up_ranks(cfg)
    store = open_run_image_store(store_path, dataset)  # another dataset's store is refused, naming both
    _check_images_before_work(cfg, store, ranks.device, out_dir)
    _claim_device(ranks.device)
    data = _set_up_image_data(cfg, store, ranks)
    net, model_args = _set_up_model(cfg, data, ranks.device, t_ref=None)
    pair = _parallel(net, ranks)
    opt, sched, scaler = _set_up_optimizer(cfg, net, ranks.device)
    deploy_params = count_parameters(net.deploy())
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    state = _resume(ckpt_path, cfg, None, store, net, opt, sched, scaler, ranks) if resume else _Progress()
    if ranks.main:
        _print_summary(cfg, store, data, net, deploy_params, ranks)
    _epochs(cfg, pair, opt, sched, scaler, data, ranks, ckpt_path, progress, state, net, model_args,
            {"input": "images", "config": {"train": _comparable(cfg), "recipe": recipe}},
            {"store_id": store.store_id, "store_path": str(store_path),
             "normalize": {"mean": list(store.attrs["mean"]), "std": list(store.attrs["std"])}})
    final = _score_selected(net, data, state, ranks.device, cfg.amp)
    metrics = _write_outputs(out_dir, cfg, store, state, final, deploy_params, ranks, recipe) if ranks.main else {}
    if ranks.distributed:
        dist.destroy_process_group()
    return metrics


def _epochs(cfg: TrainConfig, pair: nn.Module, opt: torch.optim.Optimizer,
            sched: torch.optim.lr_scheduler.LambdaLR, scaler: torch.amp.GradScaler, data, ranks: "_Ranks",
            ckpt_path: Path, progress: bool, state: "_Progress", net: SpikingNet, model_args: dict,
            head: dict, tail: dict) -> None:
    """The epochs left (``state`` says where to start): train, score val and test (history only), record the
    selection, print and checkpoint (atomically, rank 0). ``head`` and ``tail``: the checkpoint keys that depend on
    the kind of data (event frames or images), written before ``model_args`` and after ``history`` (the key order
    is part of the checkpoint's bytes)."""
    for epoch in range(state.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        row = _train_one_epoch(epoch, cfg, pair, opt, sched, scaler, data, ranks, ckpt_path, progress)
        row.update(_score_epoch(net, data, ranks.device, cfg.amp))
        state.record(row, time.perf_counter() - t0, cfg.select, net)
        if ranks.main:
            _print_epoch(row, cfg.epochs, state.epoch_s[-1])
            save_checkpoint({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "scaler": scaler.state_dict(), **head, "model_args": model_args, "epoch": epoch,
                             **state.selection(epoch), "history": state.history, **tail}, ckpt_path)


# ------------------------------------------------------------------------------------------ checks before work
def _check_before_work(cfg: TrainConfig, bin_cfg: BinConfig, store, device: torch.device, frames_root: Path,
                       out_dir: Path, warn: bool = True) -> None:
    """Refuse what only the model, the data or the machine can tell (architecture, weak stages, neuron options,
    the input size, the device; an empty split or one of empty samples only; an unwritable run or frames folder)
    before any frame cache is built. Raises ConfigError naming the key, StoreError, or NotWritableError."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.device!r} but no CUDA device is available (use auto or cpu)")
    for split in ("train", "test"):
        if split not in store.splits or len(store[split]) == 0:
            raise StoreError(f"{store.path}: the {split} split has no samples; nothing to train or score on")
    if cfg.select == "best_val" and ("val" not in store.splits or len(store["val"]) == 0):
        raise ConfigError(f"train.select = best_val, but {store.path} has no validation split (ingested with "
                          "ingest.val = 0): re-ingest with a validation size, or use train.select=last")
    check_splits(store, tuple(store.splits), warn=warn)  # warn: one line per split holding empty samples
    check_writable(out_dir, "run (checkpoint, history, metrics)")
    if not all(p.exists() for p in _cache_paths(store, bin_cfg, frames_root, [cfg.T_s, cfg.teacher_T]).values()):
        check_writable(frames_root, "frame caches")
    W, H, P = store.sensor_size
    hw = tuple(bin_cfg.out_size) if bin_cfg.out_size else (H, W)
    try:
        build_model(**_model_args(cfg, P, len(store.attrs["classes"]), hw))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"train (arch / weak_stages / neuron, input {hw[0]}x{hw[1]}): {err}") from None


def _check_images_before_work(cfg: TrainConfig, store, device: torch.device, out_dir: Path) -> None:
    """`_check_before_work` for an image store: the device, the splits, the run folder, the teacher input, and
    the network against the input size (the image, or ``image_augment.out_hw``)."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.device!r} but no CUDA device is available (use auto or cpu)")
    for split in ("train", "test"):
        if split not in store.splits or len(store[split]) == 0:
            raise StoreError(f"{store.path}: the {split} split has no samples; nothing to train or score on")
    if cfg.select == "best_val" and ("val" not in store.splits or len(store["val"]) == 0):
        raise ConfigError(f"train.select = best_val, but {store.path} has no validation split: re-ingest with a "
                          "validation size, or use train.select=last")
    if cfg.teacher_input == "repeat" and METHODS[cfg.method].uses_teacher:
        raise ConfigError("train.teacher_input = 'repeat' holds event frames for T_t / T_s steps; a static image is "
                          "already the same input at every step (direct encoding: the teacher sees the student's "
                          "augmented image at T_t steps): leave train.teacher_input at its default (not read for "
                          "image datasets)")
    check_writable(out_dir, "run (checkpoint, history, metrics)")
    C, H, W = (int(v) for v in store.image_shape)
    hw = tuple(cfg.image_augment.out_hw) if cfg.image_augment.out_hw else (H, W)
    try:
        build_model(**{**_model_args(cfg, C, len(store.attrs["classes"]), hw), "t_ref": None})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"train (arch / weak_stages / neuron, input {hw[0]}x{hw[1]}): {err}") from None


# ------------------------------------------------------------------------------------------ devices
@dataclasses.dataclass(frozen=True)
class _Ranks:
    """This process among the ``world`` DDP processes (rank 0 of 1 without torchrun) and its device."""

    distributed: bool
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0 builds the caches, prints, and writes every output."""
        return self.rank == 0


def _set_up_ranks(cfg: TrainConfig) -> _Ranks:
    """Join the torchrun process group when there is one (WORLD_SIZE > 1) and pick this rank's device."""
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank, local_rank, world = 0, 0, 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    return _Ranks(distributed, rank, world, device)


def _claim_device(device: torch.device) -> None:
    # after _check_before_work: it turns a CUDA device that is not there into a ConfigError naming train.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        configure_cpu()


def _to_tbchw(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """DataLoader batches are [B, T, P, H, W]; the network is time-first [T, B, P, H, W]."""
    return x.to(device, non_blocking=True).transpose(0, 1).contiguous()


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------ data
def _cache_paths(store, binning_cfg: BinConfig, frames_root: Path, Ts: list[int]) -> dict[tuple[str, int], Path]:
    """Where the (split, T) caches of ``store`` live (`pipeline.frames.cache_path`)."""
    return {(split, T): cache_path(frames_root, store.attrs["dataset"], split, Binning.from_config(binning_cfg, T),
                                   store.store_id, store.sensor_size, binning_cfg.format)
            for T in sorted(set(Ts)) for split in store.splits}


def _caches(store, binning_cfg: BinConfig, frames_root: Path, Ts: list[int], progress: bool
            ) -> dict[tuple[str, int], FrameCache]:
    out = {}
    for (split, T), path in _cache_paths(store, binning_cfg, frames_root, Ts).items():
        b = Binning.from_config(binning_cfg, T)
        with writing("frame cache", path, *frame_cache_bytes(len(store[split]), b, store.sensor_size)):
            out[(split, T)] = ensure_frame_cache(store.path, split, b, frames_root, binning_cfg.format, progress)
    return out


@dataclasses.dataclass(frozen=True)
class _Data:
    """One rank's datasets and loaders; `_train_one_epoch` reseeds the dataset, sampler and generator."""

    train_ds: MultiViewDataset
    scored: dict[str, DataLoader]  # split -> this rank's share of it at both views ("val" absent without one)
    train_loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    input_pchw: tuple[int, int, int]  # (P, H, W) of one frame, as cached
    n_classes: int

    def train_batches(self, epoch: int, cfg: TrainConfig, device: torch.device
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """One epoch of ``(x_s [T_s, B, P, H, W], x_t [T_t, B, P, H, W] or None, labels [B])`` on ``device``: the
        loader reseeded for ``epoch`` (the caller seeded torch's global generator), x_t only for the methods with
        a teacher run (rebinned frames, or the student's held, ``teacher_input``)."""
        self.generator.manual_seed(cfg.seed * 1000 + epoch)
        self.train_ds.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        uses_teacher = METHODS[cfg.method].uses_teacher
        for batch_views, y in self.train_loader:
            x_s = _to_tbchw(batch_views["student"], device)
            x_t = None
            if uses_teacher:
                x_t = (teacher_frames(x_s, cfg.teacher_T) if cfg.teacher_input == "repeat"
                       else _to_tbchw(batch_views["teacher"], device))
            yield x_s, x_t, y.to(device)

    def n_train_batches(self) -> int:
        return len(self.train_loader)

    def score_batches(self, split: str, view: str, device: torch.device
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of ``split`` at ``view`` (student: T_s, teacher: T_t): ``(x on device, labels on CPU)``."""
        for views, y in self.scored[split]:
            yield _to_tbchw(views[view], device), y

    def sizes(self) -> tuple[int, int, int]:
        """Samples of train (all ranks), val and test (this rank's share)."""
        return (len(self.train_ds), len(self.scored["val"].dataset) if "val" in self.scored else 0,
                len(self.scored["test"].dataset))


def _set_up_data(cfg: TrainConfig, bin_cfg: BinConfig, store, frames_root: Path, ranks: _Ranks, progress: bool
                 ) -> _Data:
    """Frame caches of every split at T_s and T_t (built by rank 0 if missing), the training dataset and loader,
    and a loader per scored split (val when the store has one, test) over both views."""
    spec = METHODS[cfg.method]
    Ts = [cfg.T_s, cfg.teacher_T]
    if ranks.main:  # build any missing cache once, before the other ranks open them
        caches = _caches(store, bin_cfg, frames_root, Ts, progress)
    if ranks.distributed:
        dist.barrier()
    if not ranks.main:
        caches = _caches(store, bin_cfg, frames_root, Ts, False)
    train_views = {"student": CacheView(caches[("train", cfg.T_s)], cfg.in_memory)}
    if spec.uses_teacher:  # baseline/ssd never read the T_t view in training
        train_views["teacher"] = CacheView(caches[("train", cfg.teacher_T)], cfg.in_memory)
    train_ds = MultiViewDataset(train_views, cfg.augment, seed=cfg.seed)
    sampler = (DistributedSampler(train_ds, ranks.world, ranks.rank, shuffle=True, seed=cfg.seed)
               if ranks.distributed else None)
    gen = torch.Generator()
    # no persistent workers: each epoch's workers are forked from the dataset *after* set_epoch(epoch)
    train_loader = DataLoader(train_ds, cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.num_workers, generator=gen, drop_last=len(train_ds) > cfg.batch_size,
                              pin_memory=ranks.device.type == "cuda")
    scored = {}
    for split in (s for s in SCORED if s in store.splits):
        ds = MultiViewDataset({"student": CacheView(caches[(split, cfg.T_s)], cfg.in_memory),
                               "teacher": CacheView(caches[(split, cfg.teacher_T)], cfg.in_memory)}, None)
        # each rank scores a disjoint, unpadded share (DistributedSampler would pad with duplicates)
        scored[split] = DataLoader(Subset(ds, range(ranks.rank, len(ds), ranks.world)), cfg.batch_size,
                                   num_workers=cfg.num_workers)
    _, P, H, W = caches[("train", cfg.T_s)].shape[1:]
    return _Data(train_ds, scored, train_loader, sampler, gen, (int(P), int(H), int(W)),
                 len(store.attrs["classes"]))


@dataclasses.dataclass(frozen=True)
class _ImageData:
    """One rank's image splits in memory (`pipeline.image_data`), with `_Data`'s interface for the epoch loop and
    the scorer: batches are gathered, augmented (train) and normalised on the device, then direct-encoded."""

    train: ImageSplit
    scored: dict[str, ImageSplit]  # "val" (when the store has one), "test"
    norm: tuple[torch.Tensor, torch.Tensor]  # the store's mean, std: [1, C, 1, 1] on the device
    ranks: _Ranks
    cfg: TrainConfig
    input_pchw: tuple[int, int, int]  # (C, h, w) the network sees (after augment's out_hw, if any)
    n_classes: int

    def train_batches(self, epoch: int, cfg: TrainConfig, device: torch.device
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """One epoch of ``(x_s [T_s, B, C, h, w], x_t [T_t, B, C, h, w] or None, labels [B])``: both views expand
        the *same* augmented tensor (stride 0 in time)."""
        uses_teacher = METHODS[cfg.method].uses_teacher
        for images, index, y in epoch_batches(self.train, cfg.batch_size, device, seed=cfg.seed, epoch=epoch,
                                              rank=self.ranks.rank, world=self.ranks.world):
            x = train_input(images, index, self.norm, seed=cfg.seed, epoch=epoch, augment=cfg.image_augment)
            yield direct(x, cfg.T_s), (direct(x, cfg.teacher_T) if uses_teacher else None), y

    def n_train_batches(self) -> int:
        return len(epoch_order(len(self.train), self.cfg.batch_size, seed=0, epoch=0, rank=self.ranks.rank,
                               world=self.ranks.world))

    def score_batches(self, split: str, view: str, device: torch.device
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        T = self.cfg.T_s if view == "student" else self.cfg.teacher_T
        for images, _, y in ordered_batches(self.scored[split], self.cfg.batch_size, device, rank=self.ranks.rank,
                                            world=self.ranks.world):
            yield direct(eval_input(images, self.norm, self.cfg.image_augment), T), y.cpu()

    def sizes(self) -> tuple[int, int, int]:
        share = {k: len(range(self.ranks.rank, len(v), self.ranks.world)) for k, v in self.scored.items()}
        return len(self.train), share.get("val", 0), share["test"]


def _set_up_image_data(cfg: TrainConfig, store, ranks: _Ranks) -> _ImageData:
    """Every split of the image store in memory, and the store's normalisation. The splits stay in pageable memory:
    a batch is gathered into a fresh tensor and pinned there (`pipeline.image_data`), so pinning whole splits would
    only double the host memory (ImageNet: tens of GB page-locked)."""
    train = load_split(store, "train")
    scored = {s: load_split(store, s) for s in SCORED if s in store.splits}
    C, H, W = (int(v) for v in store.image_shape)
    hw = tuple(cfg.image_augment.out_hw) if cfg.image_augment.out_hw else (H, W)
    return _ImageData(train, scored, normaliser(store, ranks.device), ranks, cfg, (C, int(hw[0]), int(hw[1])),
                      len(store.attrs["classes"]))


# ------------------------------------------------------------------------------------------ model, optimizer
def _model_args(cfg: TrainConfig, in_channels: int, n_classes: int, input_hw: Sequence[int]) -> dict:
    """`models.nets.build_model`'s keyword arguments, in the JSON-like form the checkpoint keeps (lists, dicts)."""
    # only the SSD term and weak_ce train weak heads; without either they would be dead weights
    spec = METHODS[cfg.method]
    weak_stages = cfg.weak_stages if spec.spatial or cfg.weak_ce else ()
    # bn_stats per_T: the teacher's T_t passes get their own BatchNorms (dropped by deploy)
    bn_extra_T = [cfg.teacher_T] if spec.uses_teacher and cfg.bn_stats == "per_T" else []
    return {"arch": cfg.arch, "in_channels": int(in_channels), "n_classes": n_classes,
            "input_hw": [int(v) for v in input_hw], "weak_stages": None if weak_stages is None else list(weak_stages),
            "neuron": dataclasses.asdict(cfg.neuron), "t_ref": cfg.T_s, "weak_head": cfg.weak_head,
            "bn_extra_T": bn_extra_T}


def _set_up_model(cfg: TrainConfig, data: _Data | _ImageData, device: torch.device, **args: Any
                  ) -> tuple[SpikingNet, dict]:
    """The network, seeded by ``cfg.seed``, and the ``model_args`` that rebuild it (`pipeline.runs.load_run`);
    ``args`` replace `_model_args`' (images: ``t_ref=None``)."""
    P, H, W = data.input_pchw
    model_args = {**_model_args(cfg, P, data.n_classes, (H, W)), **args}
    torch.manual_seed(cfg.seed)
    net = build_model(**model_args)
    # the stages built, not None: load_run rebuilds the same heads even if the architecture's default changes
    model_args["weak_stages"] = list(net.weak_stages)
    net = net.to(device)
    if device.type == "cuda" and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.compile:  # in place: state_dict keys, optimizer, checkpoints unchanged. Static shapes, one graph per (T, B):
        net.compile(dynamic=False)  # inductor's dynamic-shape path fails on these nets (torch 2.13, CPU)
    return net, model_args


def _parallel(net: SpikingNet, ranks: _Ranks) -> nn.Module:
    """`Pair` around ``net``, in DDP under torchrun; the optimizer and checkpoints keep using ``net`` itself."""
    pair: nn.Module = Pair(net)
    if ranks.distributed:
        pair = nn.parallel.DistributedDataParallel(
            pair, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None)
    return pair


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier of epoch ``e``."""
    # closed form in the epoch (not chained from the current lr), so a resume with more epochs stretches it
    if cfg.schedule == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, cfg.epochs) / max(cfg.epochs, 1)))
    if cfg.schedule == "step":  # x gamma every `step_every` epochs (TSSD's / BNTT's / Strong2Weak's: 0.1 every 30)
        return lambda e: cfg.step_gamma ** (e // cfg.step_every)
    return lambda e: 1.0


def _set_up_optimizer(cfg: TrainConfig, net: nn.Module, device: torch.device
                      ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """Optimizer, per-epoch schedule and (fp16 only) loss scaler."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                  and not torch.cuda.is_bf16_supported())
    return opt, sched, scaler


# ------------------------------------------------------------------------------------------ resume
@dataclasses.dataclass
class _Progress:
    """What the checkpoint carries across a resume: where to start, the history, and the selected epoch (by
    ``train.select``, from validation only) with its weights. ``epoch_s`` (wall-clock) goes to timings.json only."""

    start_epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    selected_epoch: int = -1  # 1-based, as in history.csv; -1 before the first epoch
    selected_model: dict | None = None  # best_val: CPU copy of the selected epoch's weights
    epoch_s: list[float] = dataclasses.field(default_factory=list)

    def record(self, row: dict, seconds: float, select: str, net: nn.Module) -> None:
        """Append an epoch's row (``net`` holds its weights); move the selection to it when ``select`` says so --
        ``last``: always; ``best_val``: when its val accuracy at T_s beats every earlier epoch's (a tie keeps
        the earlier epoch). The test columns are never read here."""
        best = max((r["val_acc"] for r in self.history), default=-1.0)
        self.history.append(row)
        self.epoch_s.append(seconds)
        if select == "last":
            self.selected_epoch = row["epoch"]
        elif row["val_acc"] > best:
            self.selected_epoch = row["epoch"]
            self.selected_model = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}

    def selection(self, epoch: int) -> dict:
        """The checkpoint's selection keys after 0-based ``epoch``: ``selected_model`` is None when the selected
        weights are the checkpoint's ``model`` (the last epoch's)."""
        return {"selected_epoch": self.selected_epoch,
                "selected_model": None if self.selected_epoch == epoch + 1 else self.selected_model}


def _resume(ckpt_path: Path, cfg: TrainConfig, bin_cfg: BinConfig | None, store, net: nn.Module,
            opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, scaler: torch.amp.GradScaler,
            ranks: _Ranks) -> _Progress:
    """Load ``ckpt_path`` into the model, optimizer, schedule and scaler, if it exists; refuse one trained with
    another configuration, binning (``bin_cfg``; None: an image run) or store (ValueError)."""
    if not ckpt_path.exists():
        return _Progress()
    ckpt = load_checkpoint(ckpt_path, ranks.device)
    saved_binning = ("images" if ckpt.get("input") == "images" else
                     Binning.from_config(BinConfig(**{**ckpt["config"]["bin"], "T": ()}), cfg.T_s).as_dict())
    binning = "images" if bin_cfg is None else Binning.from_config(bin_cfg, cfg.T_s).as_dict()
    if (_comparable(saved_train_config(ckpt["config"]["train"])), saved_binning, ckpt["store_id"]) != (
            _comparable(cfg), binning, store.store_id):
        raise ValueError(f"{ckpt_path} was trained with another configuration or data; remove it or drop --resume")
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    lr_factor = _lr_factor(cfg)
    for group, base in zip(opt.param_groups, sched.base_lrs):  # this run's schedule (epochs may have grown)
        group["lr"] = base * lr_factor(sched.last_epoch)
    if ckpt.get("scaler"):  # empty when the checkpoint was written without fp16 loss scaling
        scaler.load_state_dict(ckpt["scaler"])
    if ranks.main:
        print(f"resuming {ckpt_path} after epoch {ckpt['epoch']}")
    selected = ckpt["selected_model"]
    if cfg.select == "best_val" and selected is None:  # the last epoch is the selected one
        selected = ckpt["model"]
    selected = None if selected is None else {k: v.detach().to("cpu", copy=True) for k, v in selected.items()}
    return _Progress(ckpt["epoch"] + 1, ckpt["history"], ckpt["selected_epoch"], selected,
                     _read_timings(ckpt_path.parent / "timings.json", len(ckpt["history"])))


# ------------------------------------------------------------------------------------------ one epoch
def _train_one_epoch(epoch: int, cfg: TrainConfig, pair: nn.Module, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LambdaLR, scaler: torch.amp.GradScaler, data: _Data,
                     ranks: _Ranks, ckpt_path: Path, progress: bool) -> dict:
    """One pass over this rank's share of the training set, then one schedule step.

    Returns the epoch's history row up to ``train_acc`` (loss parts and accuracy summed over all ranks)."""
    spec = METHODS[cfg.method]
    # no term sends the teacher run a gradient: run it without autograd
    teacher_needs_grad = cfg.teacher_ce != 0 or (cfg.teacher_grad and spec.temporal_kd)
    device = ranks.device
    torch.manual_seed(cfg.seed * 1000 + epoch)  # per-epoch seeds: a resumed run replays the same draws
    pair.train()
    sums: dict[str, float] = {}
    n_seen, n_correct = 0, 0
    bar = tqdm(data.train_batches(epoch, cfg, device), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               total=data.n_train_batches(), disable=not (progress and ranks.main), file=sys.stderr)
    for x_s, x_t, y in bar:
        with _autocast(device, cfg.amp):
            out_s, out_t = pair(x_s, x_t, teacher_bn_update=cfg.bn_stats != "student", teacher_grad=teacher_needs_grad)
            loss, parts = tssd_loss(out_s, y, teacher=out_t, method=cfg.method, alpha=cfg.alpha, beta=cfg.beta,
                                    teacher_ce=cfg.teacher_ce, weak_ce=cfg.weak_ce, tau_kd=cfg.tau_kd,
                                    kd_on=cfg.kd_on, ssd_target=cfg.ssd_target, task_kind=cfg.task_loss,
                                    tet_lambda=cfg.tet_lambda, teacher_grad=cfg.teacher_grad)
        if not math.isfinite(parts["total"]):
            raise TrainingDiverged(
                f"loss became {parts['total']} in epoch {epoch + 1} ({parts}); the last good checkpoint "
                f"{ckpt_path} is kept -- lower train.lr or check the inputs")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(y)
        n_seen += len(y)
        n_correct += int((out_s.logits.detach().float().mean(0).argmax(1) == y).sum())
        bar.set_postfix(loss=f"{parts['total']:.3f}")
    if ranks.distributed:  # every rank trained on its own share: sum the counts and loss parts of all of them
        keys = sorted(sums)
        t = torch.tensor([n_seen, n_correct, *(sums[k] for k in keys)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        n_seen, n_correct = int(t[0]), int(t[1])
        sums = dict(zip(keys, t[2:].tolist()))
    lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with, before the step
    sched.step()
    return {"epoch": epoch + 1, "lr": lr, "loss": sums.get("total", 0.0) / max(n_seen, 1),
            **{k: (sums[k] / n_seen if k in sums else "") for k in
               ("task_student", "task_teacher", "tsd", "ssd", "weak_task")},
            "train_acc": n_correct / max(n_seen, 1)}


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             amp: bool) -> float:
    """Top-1 accuracy of the time-averaged logits over ``batches`` of ``(x [T, B, ...] on device, labels on the
    CPU)`` (all ranks' shares summed)."""
    model.eval()
    correct = torch.zeros(2, device=device)
    for x, y in batches:
        with _autocast(device, amp):
            logits = model(x).logits.float().mean(0)
        correct[0] += (logits.argmax(1).cpu() == y).sum().to(device)
        correct[1] += len(y)
    if dist.is_initialized():
        dist.all_reduce(correct)
    return float(correct[0] / correct[1].clamp(min=1))


def _score_epoch(net: nn.Module, data: _Data, device: torch.device, amp: bool) -> dict:
    """The epoch's history columns ``val_acc``, ``val_acc_teacher`` (student at T_s, the same weights at T_t;
    "" without a val split) and ``test_acc``, ``test_acc_teacher`` (the learning curve only: no choice reads
    them)."""
    row = {}
    for split in SCORED:
        for col, view in ((f"{split}_acc", "student"), (f"{split}_acc_teacher", "teacher")):
            row[col] = accuracy(net, data.score_batches(split, view, device), device, amp) if split in data.scored \
                else ""
    return row


def _score_selected(net: nn.Module, data: _Data, state: _Progress, device: torch.device, amp: bool) -> dict:
    """Val and test accuracy (at T_s and T_t) of the selected epoch's weights, measured once after training;
    ``net`` is left holding those weights (the checkpoint keeps the last epoch's for a resume)."""
    if state.selected_model is not None:
        net.load_state_dict(state.selected_model)
    return _score_epoch(net, data, device, amp) if state.history else {}


# ------------------------------------------------------------------------------------------ reporting
def _print_summary(cfg: TrainConfig, store, data: _Data, net: SpikingNet, deploy_params: int, ranks: _Ranks) -> None:
    P, H, W = data.input_pchw
    teacher = f", T_t={cfg.teacher_T}" if METHODS[cfg.method].uses_teacher else ""
    n_train, n_val, n_test = data.sizes()
    print(f"{store.attrs['dataset']} {cfg.method}: {cfg.arch}, T_s={cfg.T_s}{teacher}, input {P}x{H}x{W}, "
          f"{data.n_classes} classes, {n_train} train / {n_val} val / {n_test} test (scored on this rank), "
          f"select {cfg.select}, "
          f"deploy params {deploy_params:,}, training params {count_parameters(net):,}, device {ranks.device}, "
          f"world {ranks.world}")


def _print_epoch(row: dict, epochs: int, seconds: float) -> None:
    # validation only: the per-epoch test accuracy goes to history.csv, never to the screen where it would tempt
    terms = " ".join(f"{k}={row[k]:.3f}" for k in ("task_student", "task_teacher", "tsd", "ssd") if row[k] != "")
    val = (f"val@T_s={row['val_acc']:.3f} val@T_t={row['val_acc_teacher']:.3f}" if row["val_acc"] != ""
           else "no val split")
    print(f"epoch {row['epoch']:>3}/{epochs} loss={row['loss']:.3f} ({terms}) train={row['train_acc']:.3f} "
          f"{val} lr={row['lr']:.4g} {seconds:.1f}s", flush=True)


def _write_outputs(out_dir: Path, cfg: TrainConfig, store, state: _Progress, final: dict, deploy_params: int,
                   ranks: _Ranks, recipe: str | None = None) -> dict:
    """history.csv, metrics.json (the selected epoch, its val accuracies, its test accuracies measured once by
    `_score_selected`) and timings.json (wall-clock: not a tracked output); returns the metrics."""
    _write_history(out_dir / "history.csv", state.history)
    metrics = {"dataset": store.attrs["dataset"], "recipe": recipe, "method": cfg.method, "arch": cfg.arch,
               "T_s": cfg.T_s, "T_t": cfg.teacher_T, "epochs": len(state.history), "select": cfg.select,
               "selected_epoch": state.selected_epoch if state.history else None,
               "val_acc_Ts": final.get("val_acc"), "val_acc_Tt": final.get("val_acc_teacher"),
               "test_acc_Ts": final.get("test_acc"), "test_acc_Tt": final.get("test_acc_teacher"),
               "deploy_params": deploy_params, "device": str(ranks.device), "world_size": ranks.world}
    metrics = {k: (None if v == "" else v) for k, v in metrics.items()}  # no val split: null, not ""
    text = json.dumps(metrics, indent=2) + "\n"
    with writing("metrics", out_dir / "metrics.json", len(text)):
        write_atomic(out_dir / "metrics.json", text)
    timings = json.dumps({"epoch_s": [round(t, 3) for t in state.epoch_s],
                          "wall_time_s": round(sum(state.epoch_s), 1)}, indent=2) + "\n"
    with writing("timings", out_dir / "timings.json", len(timings)):
        write_atomic(out_dir / "timings.json", timings)
    print(f"selected epoch {metrics['selected_epoch']} ({cfg.select}): val@T_s={_pct(metrics['val_acc_Ts'])} "
          f"test@T_s={_pct(metrics['test_acc_Ts'])} test@T_t={_pct(metrics['test_acc_Tt'])}; "
          f"{sum(state.epoch_s):.1f} s of training (timings.json)", flush=True)
    return metrics


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _read_timings(path: Path, n_epochs: int) -> list[float]:
    """The epoch seconds a resumed run already spent (timings.json; zeros where it is missing or stale: they
    are informational only)."""
    try:
        epoch_s = [float(v) for v in json.loads(path.read_text())["epoch_s"]]
    except (OSError, ValueError, KeyError, TypeError):
        epoch_s = []
    return epoch_s[:n_epochs] + [0.0] * (n_epochs - len(epoch_s))


def _comparable(cfg: TrainConfig) -> dict:
    """The config fields that shape the weights (a resume must match them; epochs may grow)."""
    d = dataclasses.asdict(cfg)
    for k in ("epochs", "num_workers", "device", "in_memory", "compile"):
        d.pop(k)
    return d


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, HISTORY_FIELDS)
    w.writeheader()
    w.writerows(history)
    with writing("training history", path, len(buf.getvalue())):
        write_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ CLI
@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--method", choices=sorted(METHODS))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--store", type=Path, help="event store (default: <paths.events_root>/<dataset>.zarr); for an "
                    "image dataset its image store (default: <paths.images_root>/<dataset>.zarr)")
    ap.add_argument("--out", type=Path, help="run dir (default: <paths.runs_root>/<dataset>/<method>)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    ap.add_argument("--recipe", help="one of the dataset's named recipes (default: its recipes.<dataset>.use)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = args.overrides + flag_overrides("train", method=args.method, epochs=args.epochs)
    recipe, _ = resolve_recipe(args.params, args.dataset, args.recipe, overrides)
    cfg = load_section("train", TrainConfig, args.params, overrides, dataset=args.dataset, recipe=recipe)
    bin_cfg = load_section("bin", BinConfig, args.params, overrides, dataset=args.dataset, recipe=recipe)
    paths = load_section("paths", PathsConfig, args.params, overrides)
    ingest_cfg = load_section("ingest", IngestConfig, args.params, overrides)
    if args.dataset in IMAGE_DATASETS:  # static images: the image store, direct encoding (`run_images`)
        return _main_images(args, cfg, paths, ingest_cfg, recipe)
    store = args.store or paths.store_path(args.dataset, ingest_cfg.format)
    out = args.out or Path(paths.runs_root) / args.dataset / cfg.method
    try:
        check_writable(out, "run (checkpoint, history, metrics)")  # before an ingest-first, too
        if not store.exists():
            code = _ingest_first(args.dataset, store, paths, ingest_cfg)
            if code:
                return code
        run(cfg, bin_cfg, store, Path(paths.frames_root), out, resume=args.resume, progress=not args.no_progress,
            recipe=recipe)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0  # a CheckpointError or a StoreError (exit 1) is `exits_on_error`'s


def _main_images(args: argparse.Namespace, cfg: TrainConfig, paths: PathsConfig, ingest_cfg: IngestConfig,
                 recipe: str | None) -> int:
    """`main` for an image dataset: ``--store`` is the image store (default ``<paths.images_root>/<dataset>.zarr``,
    or ``.h5`` under ``ingest.format: h5``, where `pipeline.ingest_images` writes it; ingested first when missing);
    the same run folder, flags and exit codes as the event datasets."""
    store = args.store or paths.image_store_path(args.dataset, ingest_cfg.format)
    out = args.out or Path(paths.runs_root) / args.dataset / cfg.method
    try:
        check_writable(out, "run (checkpoint, history, metrics)")
        if not store.exists():
            code = _ingest_images_first(args.dataset, store, paths, args.params, args.overrides)
            if code:
                return code
        run_images(cfg, store, out, dataset=args.dataset, resume=args.resume, progress=not args.no_progress,
                   recipe=recipe)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


def _ingest_images_first(dataset: str, store: Path, paths: PathsConfig, params: Path, overrides: list[str]) -> int:
    """No image store yet: ingest the raw release if it is in place, else say what to download and where (exit 2,
    as for a missing event data set). The ingest runs as its stage's command, ``python -m pipeline.ingest_images``
    (a stage never imports another stage)."""
    spec = IMAGE_DATASETS[dataset]
    raw = Path(paths.raw_root) / dataset
    try:
        spec.check_raw(raw)
    except MissingRawDataError as err:
        print(f"error: raw data for {dataset} is missing: {err}", file=sys.stderr)
        return 2
    print(f"image store {store} not found: ingesting {raw} first", flush=True)
    cmd = [sys.executable, "-m", "pipeline.ingest_images", dataset, "--raw", str(raw), "--out", str(store),
           "--params", str(params), "--no-progress", *(a for o in overrides for a in ("--set", o))]
    return subprocess.run(cmd, check=False).returncode


def _ingest_first(dataset: str, store: Path, paths: PathsConfig, ingest_cfg: IngestConfig) -> int:
    """No event store yet: ingest the raw files if they are there, else say what to download and where."""
    from pipeline.datasets import get_spec
    from pipeline.ingestion import ingest_and_report

    raw = Path(paths.raw_root) / dataset
    print(f"event store {store} not found: ingesting {raw} first")
    return ingest_and_report(get_spec(dataset), raw, store, ingest_cfg)


if __name__ == "__main__":
    sys.exit(main())
