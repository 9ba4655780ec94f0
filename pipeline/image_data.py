"""Static images for training and evaluation: an image-store split in memory, whole-batch iteration, and the
device-side input step of direct encoding.

    split in RAM (uint8 [N, C, H, W])  --gather a batch-->  uint8 [B, C, H, W] (pinned on CUDA)  --to device-->
    augment_batch (train) | to_float (eval)  -->  float32 [B, C, h, w] in [0, 1]  --(x - mean) / std-->
    direct(x, T) = x.unsqueeze(0).expand(T, B, C, h, w)   (stride 0 in time: `models.nets.SeqToANN` runs the
                                                           first conv-BN once and the LIF neurons T steps)

No per-sample Python work: a batch is one ``index_select`` of the split's tensor. The training order is a
permutation seeded by ``(seed, epoch)`` (``torch.randperm`` with the seed ``seed * 1000 + epoch``, as the event
path's DataLoader shuffles), split across DDP ranks like `torch.utils.data.DistributedSampler` (padded to a
multiple of the world size, rank ``r`` takes every ``world``-th index), then cut into batches; the last short
batch is dropped when the split holds more than one batch (the event path's ``drop_last``). Augmentation is
`pipeline.augment.augment_batch`, a pure function of (image, seed, epoch, index in the split, config): the student
and the teacher views are the *same* augmented tensor expanded to T_s and T_t steps.

Normalisation uses the store's per-channel ``mean`` / ``std`` (train split, 0..1 scale), after augmentation.

A library module (stages import it: `pipeline.train`, `pipeline.evaluate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.augment import ImageAugment, augment_batch, to_float
from pipeline.image_store import open_image_store
from pipeline.storage import StoreError

__all__ = ["ImageSplit", "open_run_image_store", "load_split", "epoch_order", "epoch_batches", "ordered_batches",
           "normaliser", "direct", "train_input", "eval_input"]


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split of an image store in memory.

    images: uint8 ``[N, C, H, W]`` (CPU, pageable: a batch is pinned after the gather). labels: int64 ``[N]``.
    source_index: int64 ``[N]``, each image's index in the raw dataset (the predictions' sample id)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    source_index: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def open_run_image_store(path, dataset: str | None = None):
    """`pipeline.image_store.open_image_store`, with a refusal that names the path when it holds another kind of
    data (an event store passed for an image dataset) or another dataset."""
    try:
        store = open_image_store(path)
    except StoreError as err:
        if "tssd-event-store" in str(err):
            raise StoreError(f"{path} is an event store, not an image store: {dataset or 'this dataset'} is a static "
                             "image dataset (pipeline.datasets.images.IMAGE_DATASETS); pass its image store "
                             "(<paths.images_root>/<dataset>.zarr, written by python -m pipeline.ingest_images)"
                             ) from None
        raise
    if dataset is not None and store.attrs.get("dataset") != dataset:
        raise StoreError(f"{path} holds the image dataset {store.attrs.get('dataset')!r}, not {dataset!r}")
    return store


def load_split(store, name: str) -> ImageSplit:
    """Read split ``name`` of an open image store into memory (one read of its ``images`` array)."""
    split = store[name]
    images = torch.from_numpy(np.ascontiguousarray(split.load()))
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise StoreError(f"{store.path}/{name}: images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
    return ImageSplit(name, images, labels, np.asarray(split.source_index, dtype=np.int64))


def epoch_order(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1
                ) -> list[torch.Tensor]:
    """This rank's batches of one epoch: int64 index tensors into the split (see the module docstring)."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=gen)
    if world > 1:  # DistributedSampler's padding: every rank gets the same number of batches (DDP would hang)
        total = -(-n // world) * world
        order = torch.cat([order, order[: total - n]])[rank:total:world]
    drop_last = n > batch_size
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def epoch_batches(split: ImageSplit, batch_size: int, device: torch.device, *, seed: int, epoch: int,
                  rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(images uint8 [B, C, H, W] on device, index int64 [B] on the host, labels int64 [B] on device)``
    for one epoch."""
    for idx in epoch_order(len(split), batch_size, seed=seed, epoch=epoch, rank=rank, world=world):
        yield _gather(split, idx, device)


def ordered_batches(split: ImageSplit, batch_size: int, device: torch.device, *, rank: int = 0, world: int = 1
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The split in order (this rank's disjoint, unpadded share ``rank::world``), for scoring."""
    idx = torch.arange(rank, len(split), world)
    for i in range(0, len(idx), batch_size):
        yield _gather(split, idx[i:i + batch_size], device)


def _gather(split: ImageSplit, idx: torch.Tensor, device: torch.device):
    # the index stays on the host: augment_batch draws there (a device copy would only be copied back)
    x = split.images.index_select(0, idx)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x, idx, split.labels.index_select(0, idx).to(device)


def normaliser(store, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The store's per-channel mean and std (train split, 0..1 scale) as float32 ``[1, C, 1, 1]`` tensors."""
    mean = torch.tensor(store.attrs["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(store.attrs["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if (std <= 0).any():
        raise StoreError(f"{store.path}: attribute std {store.attrs['std']} must be positive in every channel")
    return mean, std


def direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """Direct encoding: ``[B, C, H, W]`` -> ``[T, B, C, H, W]``, the same image at every step (stride 0, no copy)."""
    return x.unsqueeze(0).expand(T, *x.shape)


def train_input(images: torch.Tensor, index: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor], *, seed: int,
                epoch: int, augment: ImageAugment) -> torch.Tensor:
    """A training batch: augmented (`augment_batch`, per (seed, epoch, index)), normalised; float32 [B, C, h, w].
    Cutout fills with the store's mean, so the square is zero after normalisation (DeVries & Taylor's code)."""
    x = augment_batch(images, index, seed=seed, epoch=epoch, cfg=augment, fill=norm[0].view(-1))
    return (x - norm[0]) / norm[1]


def eval_input(images: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor], augment: ImageAugment
               ) -> torch.Tensor:
    """A scoring batch: no augmentation (`to_float`: x / 255, center crop to ``out_hw`` if set), normalised."""
    return (to_float(images, augment.out_hw) - norm[0]) / norm[1]
