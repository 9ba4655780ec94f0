"""Spiking conv nets, time-first: input ``[T, B, P, H, W]`` -> :class:`Output`.

Stateless layers (conv, BN, pooling, linear) run once over ``T*B`` samples through
:class:`SeqToANN` (``flatten(0, 1)`` -> layers -> ``unflatten``); only the LIF neurons loop
over T (:class:`models.neurons.LIF`). BatchNorm therefore normalises over ``T*B*H*W``.

Architectures come from :data:`ARCHITECTURES`; each declares the stage names where TSSD's weak
classifiers (global average pool + linear, per time step) may attach, and which is the default.
:meth:`SpikingNet.deploy` drops the weak heads for inference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from models.neurons import LIF, NeuronConfig

__all__ = [
    "ARCHITECTURES",
    "Output",
    "SpikingNet",
    "SeqToANN",
    "build_model",
    "count_parameters",
]


class Output(NamedTuple):
    """What a :class:`SpikingNet` returns.

    logits: ``[T, B, C]`` per-time-step class scores of the final classifier.
    weak: stage name -> ``[T, B, C]`` weak-classifier scores (empty after :meth:`SpikingNet.deploy`).
    rates: LIF layer name -> mean firing rate (spikes per neuron per step) when requested, else None.
    """

    logits: torch.Tensor
    weak: dict[str, torch.Tensor]
    rates: dict[str, float] | None


class SeqToANN(nn.Module):
    """Apply stateless layers to ``[T, B, ...]`` in one call over ``T*B`` samples."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])


class TimeDropout(nn.Module):
    """Dropout whose mask is drawn once per sample and shared by all T steps (``[T, B, ...]``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvBNLIF(nn.Module):
    """conv3x3 -> BN (time folded into batch) -> LIF (loops over T). ``[T, B, Cin, H, W]`` -> spikes ``[T, B, Cout, H, W]``."""

    def __init__(self, c_in: int, c_out: int, neuron: NeuronConfig, *, bias: bool) -> None:
        super().__init__()
        self.ann = SeqToANN(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), nn.BatchNorm2d(c_out))
        self.lif = LIF(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, _ = self.lif(self.ann(x))
        return spikes


class Stage(nn.Module):
    """Conv blocks then a 2x2 pool. Returns the pooled output and each block's spikes (for firing rates)."""

    def __init__(self, blocks: list[ConvBNLIF], pool: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.pool = SeqToANN(pool)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spikes = []
        for block in self.blocks:
            x = block(x)
            spikes.append(x)
        return self.pool(x), spikes


class LinearHead(nn.Module):
    """Flatten space and channels, then one linear layer per step: ``[T, B, C, h, w]`` -> ``[T, B, classes]``."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.fc(x.flatten(2)), []


class SpikingMLPHead(nn.Module):
    """PLIF-style classifier: flatten -> dropout -> linear -> LIF -> dropout -> linear (time-shared dropout masks)."""

    def __init__(self, n_features: int, n_hidden: int, n_classes: int, neuron: NeuronConfig, dropout: float) -> None:
        super().__init__()
        self.drop_in = TimeDropout(dropout)
        self.fc1 = nn.Linear(n_features, n_hidden, bias=False)
        self.lif = LIF(neuron)
        self.drop_hidden = TimeDropout(dropout)
        self.fc2 = nn.Linear(n_hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spikes, _ = self.lif(self.fc1(self.drop_in(x.flatten(2))))
        return self.fc2(self.drop_hidden(spikes)), [spikes]


class WeakHead(nn.Module):
    """TSSD weak classifier: global average pool over space, then linear, per step.
    ``[T, B, C, h, w]`` -> ``[T, B, classes]``."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(-2, -1)))


class SpikingNet(nn.Module):
    """Stages of spiking conv blocks, a classifier head, and optional weak heads at named stages."""

    def __init__(
        self,
        arch: str,
        stages: Mapping[str, Stage],
        head: nn.Module,
        weak_heads: Mapping[str, WeakHead],
        in_channels: int,
        t_ref: int | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.t_ref = t_ref
        self.stages = nn.ModuleDict(dict(stages))
        self.head = head
        self.weak_heads = nn.ModuleDict(dict(weak_heads))

    @property
    def weak_stages(self) -> tuple[str, ...]:
        return tuple(self.weak_heads.keys())

    def forward(self, x: torch.Tensor, *, record_rates: bool = False) -> Output:
        """``x``: ``[T, B, P, H, W]`` float frames -> :class:`Output` (logits ``[T, B, classes]``).

        ``record_rates`` adds each LIF layer's mean firing rate (one host sync per call).
        """
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"{self.arch}: expected input [T, B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        if self.t_ref is not None:
            # Frames binned into T equal time bins hold ~1/T of the events each: scaling by T / t_ref gives the
            # first layer (and every BatchNorm after it) the same input statistics at every T, so one network
            # serves T_s and T_t (TSSD's teacher) and any inference T. Without it, BatchNorm's running statistics
            # mix the T_s and T_t runs and evaluation collapses (see README, "Time normalisation").
            x = x * (x.shape[0] / self.t_ref)
        weak: dict[str, torch.Tensor] = {}
        spikes: dict[str, torch.Tensor] = {}
        for name, stage in self.stages.items():
            x, stage_spikes = stage(x)
            for i, s in enumerate(stage_spikes):
                spikes[f"{name}.{i}"] = s
            if name in self.weak_heads:
                weak[name] = self.weak_heads[name](x)
        logits, head_spikes = self.head(x)
        for i, s in enumerate(head_spikes):
            spikes[f"head.{i}"] = s
        rates = None
        if record_rates:
            with torch.no_grad():
                values = torch.stack([s.float().mean() for s in spikes.values()]).tolist()
            rates = dict(zip(spikes.keys(), values))
        return Output(logits=logits, weak=weak, rates=rates)

    def deploy(self) -> SpikingNet:
        """The inference network: a deep copy without weak heads, in eval mode.

        Its parameters and logits equal those of the same architecture built with
        ``weak_stages=()`` and loaded with this net's state dict minus ``weak_heads.*``.
        """
        net = copy.deepcopy(self)
        net.weak_heads = nn.ModuleDict()
        net.zero_grad(set_to_none=True)  # the copy needs no training gradients
        return net.eval()

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the weak heads (what :meth:`deploy` keeps)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("weak_heads.")}


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# Architectures. A builder returns (stages, channels of each stage's output, head).

Builder = Callable[[int, int, tuple[int, int], NeuronConfig], tuple[dict[str, Stage], dict[str, int], nn.Module]]


class ArchSpec(NamedTuple):
    """An architecture: its builder, stage names, the default weak stage, and the input size divisor."""

    build: Builder
    stages: tuple[str, ...]
    default_weak: str
    downsample: int  # total spatial reduction; H and W must be >= this
    doc: str


def _conv_stages(
    plan: list[list[int]], in_channels: int, neuron: NeuronConfig, *, bias: bool, pool: Callable[[], nn.Module]
) -> tuple[dict[str, Stage], dict[str, int]]:
    stages: dict[str, Stage] = {}
    channels: dict[str, int] = {}
    c_in = in_channels
    for i, widths in enumerate(plan, start=1):
        blocks = []
        for c_out in widths:
            blocks.append(ConvBNLIF(c_in, c_out, neuron, bias=bias))
            c_in = c_out
        stages[f"stage{i}"] = Stage(blocks, pool())
        channels[f"stage{i}"] = c_in
    return stages, channels


def _build_vggsnn(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # TET's VGGSNN: 64,128,AP,256,256,AP,512,512,AP,512,512,AP (conv with bias, as in TET's code).
    plan = [[64, 128], [256, 256], [512, 512], [512, 512]]
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=True, pool=lambda: nn.AvgPool2d(2))
    h, w = input_hw[0] // 16, input_hw[1] // 16
    return stages, channels, LinearHead(512 * h * w, n_classes)


def _build_gesture_net(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # PLIF (Fang et al. 2021) DVS128 Gesture net: 5 x [conv3x3 128 - BN - LIF - maxpool2],
    # then dropout - linear 512 - LIF - dropout - linear (no voting layer: logits per class).
    plan = [[128]] * 5
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=False, pool=lambda: nn.MaxPool2d(2))
    h, w = input_hw[0] // 32, input_hw[1] // 32
    return stages, channels, SpikingMLPHead(128 * h * w, 512, n_classes, neuron, dropout=0.5)


def _build_small(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # Tiny net for CPU tests and 32x32 inputs: 16, AP, 32, AP, 32, AP -> linear.
    plan = [[16], [32], [32]]
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=False, pool=lambda: nn.AvgPool2d(2))
    h, w = input_hw[0] // 8, input_hw[1] // 8
    return stages, channels, LinearHead(32 * h * w, n_classes)


ARCHITECTURES: dict[str, ArchSpec] = {
    "vggsnn": ArchSpec(
        _build_vggsnn, ("stage1", "stage2", "stage3", "stage4"), "stage2", 16,
        "TET VGGSNN, CIFAR10-DVS at 48x48 (~9.3 M parameters)",
    ),
    "gesture_net": ArchSpec(
        _build_gesture_net, ("stage1", "stage2", "stage3", "stage4", "stage5"), "stage3", 32,
        "PLIF DVS128 Gesture net, 128x128 (any size >= 32)",
    ),
    "small": ArchSpec(
        _build_small, ("stage1", "stage2", "stage3"), "stage2", 8,
        "tiny 3-stage net for CPU tests, 32x32",
    ),
}


def build_model(
    arch: str,
    *,
    in_channels: int,
    n_classes: int,
    input_hw: tuple[int, int],
    weak_stages: tuple[str, ...] | None = None,
    neuron: Mapping[str, Any] | None = None,
    t_ref: int | None = None,
) -> SpikingNet:
    """Build a registered architecture.

    arch: a key of :data:`ARCHITECTURES`. in_channels: polarity channels P. input_hw: (H, W) pixels.
    weak_stages: stages that get a weak classifier; None = the architecture's default (middle)
    stage, () = none. neuron: options of :class:`models.neurons.NeuronConfig` (e.g. ``{"tau_steps": 2.0}``).
    t_ref: when set, inputs with T time steps are scaled by T / t_ref (time normalisation: the same per-bin
    input statistics at every T; `pipeline.train` sets it to the training T_s).
    """
    try:
        spec = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    if in_channels < 1 or n_classes < 2:
        raise ValueError(f"{arch}: need in_channels >= 1 and n_classes >= 2, got {in_channels}, {n_classes}")
    hw = tuple(int(v) for v in input_hw)
    if len(hw) != 2 or min(hw) < spec.downsample:
        raise ValueError(f"{arch}: input_hw must be (H, W) with both >= {spec.downsample}, got {input_hw!r}")
    weak = (spec.default_weak,) if weak_stages is None else tuple(weak_stages)
    unknown = [s for s in weak if s not in spec.stages]
    if unknown or len(set(weak)) != len(weak):
        raise ValueError(f"{arch}: weak_stages {weak!r} must be distinct names from {list(spec.stages)}")
    cfg = NeuronConfig.from_dict(neuron)
    stages, channels, head = spec.build(in_channels, n_classes, hw, cfg)
    # Keep heads in network order, whatever order the caller listed them in.
    heads = {s: WeakHead(channels[s], n_classes) for s in spec.stages if s in weak}
    return SpikingNet(arch, stages, head, heads, in_channels, t_ref)
