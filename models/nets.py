"""Spiking conv nets, time-first: input ``[T, B, P, H, W]`` -> :class:`Output`.

Stateless layers (conv, BN, pooling, linear) run once over ``T*B`` samples through
:class:`SeqToANN` (``flatten(0, 1)`` -> layers -> ``unflatten``); only the LIF neurons loop
over T (:class:`models.neurons.LIF`). BatchNorm therefore normalises over ``T*B*H*W``.

Architectures come from :data:`ARCHITECTURES`; each declares the stage names where TSSD's weak
classifiers may attach, and which is the default. A weak classifier is one of :data:`WEAK_HEADS`
(``gap_linear``: global average pool + linear; ``bottleneck``: BYOT-style conv-BN-LIF, stride-2
conv-BN-LIF, global average pool, linear). The backbone's BatchNorm layers are :class:`TimeBatchNorm2d`:
a pass may use batch statistics without updating the running ones, and extra BatchNorm layers may serve
other timestep counts (BN per T). :meth:`SpikingNet.deploy` drops the weak heads and those extra layers:
the deployed network always has the parameters of the plain network (``weak_stages=()``).

Why ~450 lines in one file: the three architectures share one contract -- time-folded stages, BatchNorm over
time, weak-head taps and `deploy()` -- and splitting them per architecture would scatter what deploy relies on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from models.neurons import LIF, NeuronConfig

__all__ = [
    "ARCHITECTURES",
    "WEAK_HEADS",
    "BN_STATS",
    "Output",
    "SpikingNet",
    "SeqToANN",
    "TimeBatchNorm2d",
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


class TimeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the folded ``T*B`` batch, as the network runs at one of several timestep counts.

    Its own parameters and running statistics (the same state-dict keys as ``nn.BatchNorm2d``) are the ones the
    deployed network keeps. ``extra_T`` adds a private BatchNorm2d (affine parameters and running statistics,
    "switchable BN") for each of those timestep counts, in :attr:`per_T`; a pass at any other T uses this layer's
    own. :class:`SpikingNet` tells each layer the pass's T and whether it may update running statistics
    (:meth:`route`): a training pass with ``update=False`` normalises with its batch statistics but leaves every
    running statistic (and ``num_batches_tracked``) untouched.
    """

    def __init__(self, num_features: int, extra_T: tuple[int, ...] = ()) -> None:
        super().__init__(num_features)
        self.per_T = nn.ModuleDict({str(int(T)): nn.BatchNorm2d(num_features) for T in extra_T})
        self._T: int | None = None
        self._update = True

    def route(self, T: int | None, update: bool) -> None:
        """Set the timestep count and the running-statistics policy of the following calls."""
        self._T, self._update = T, update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.BatchNorm2d = self.per_T[str(self._T)] if str(self._T) in self.per_T else self
        if self.training and not self._update:  # batch statistics; no running statistics read or written
            return nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        return super().forward(x) if bn is self else bn(x)


class ConvBNLIF(nn.Module):
    """conv3x3 -> BN (time folded into batch) -> LIF (loops over T). ``[T, B, Cin, H, W]`` -> spikes ``[T, B, Cout, H, W]``.

    ``extra_T``: timestep counts that get their own BatchNorm (:class:`TimeBatchNorm2d`)."""

    def __init__(self, c_in: int, c_out: int, neuron: NeuronConfig, *, bias: bool,
                 extra_T: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.ann = SeqToANN(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), TimeBatchNorm2d(c_out, extra_T))
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
    """TSSD weak classifier ``gap_linear``: global average pool over space, then linear, per step.
    ``[T, B, C, h, w]`` -> ``[T, B, classes]``."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(-2, -1)))


class BottleneckWeakHead(nn.Module):
    """TSSD weak classifier ``bottleneck``, after "Be Your Own Teacher" (Zhang et al. 2019): the shallow
    classifier gets layers of its own before pooling, so the SSD gradient need not bend the backbone's early
    features into linearly separable channel means.

    conv3x3 (C -> width) - BN - LIF -> conv3x3 stride 2 (width -> width) - BN - LIF -> global average pool ->
    linear; ``width`` is the channel count of the features the final classifier reads. Its BatchNorms are plain
    (the weak head runs in the student pass only). ``[T, B, C, h, w]`` -> ``[T, B, classes]``."""

    def __init__(self, channels: int, width: int, n_classes: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.conv1 = SeqToANN(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.lif1 = LIF(neuron)
        self.conv2 = SeqToANN(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width))
        self.lif2 = LIF(neuron)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.lif1(self.conv1(x))
        x, _ = self.lif2(self.conv2(x))
        return self.fc(x.mean(dim=(-2, -1)))


#: Weak-classifier designs by name (``build_model(weak_head=...)``).
WEAK_HEADS = ("bottleneck", "gap_linear")

#: How a TSSD teacher pass treats BatchNorm (`TimeBatchNorm2d`; ``train.bn_stats``): ``student`` normalises with its
#: batch statistics and leaves the running ones to the student, ``shared`` updates them too, ``per_T`` gives the
#: teacher's T its own BatchNorms (``build_model(bn_extra_T=...)``, dropped by ``deploy()``).
BN_STATS = ("student", "shared", "per_T")


class SpikingNet(nn.Module):
    """Stages of spiking conv blocks, a classifier head, and optional weak heads at named stages."""

    def __init__(
        self,
        arch: str,
        stages: Mapping[str, Stage],
        head: nn.Module,
        weak_heads: Mapping[str, nn.Module],
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

    def forward(self, x: torch.Tensor, *, record_rates: bool = False, update_bn_stats: bool = True,
                weak: bool = True) -> Output:
        """``x``: ``[T, B, P, H, W]`` float frames -> :class:`Output` (logits ``[T, B, classes]``).

        ``record_rates`` adds each LIF layer's mean firing rate (one host sync per call).
        ``update_bn_stats=False``: in training mode the backbone's BatchNorms normalise with this batch's statistics
        but leave their running statistics as they were (TSSD's teacher pass under ``bn_stats: student``).
        ``weak=False`` skips the weak heads (``Output.weak`` empty). The backbone BatchNorms use the private
        layers of this T where the net has them (BN per T), else their own.
        """
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"{self.arch}: expected input [T, B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        bns = [m for m in self.modules() if isinstance(m, TimeBatchNorm2d)]
        for bn in bns:
            bn.route(x.shape[0], update_bn_stats)
        try:
            return self._forward(x, record_rates, weak)
        finally:
            for bn in bns:
                bn.route(None, True)

    def _forward(self, x: torch.Tensor, record_rates: bool, with_weak: bool) -> Output:
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
            if with_weak and name in self.weak_heads:
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

    @property
    def bn_extra_T(self) -> tuple[int, ...]:
        """Timestep counts with their own backbone BatchNorms (BN per T; empty after :meth:`deploy`)."""
        return tuple(sorted({int(T) for m in self.modules() if isinstance(m, TimeBatchNorm2d) for T in m.per_T}))

    def deploy(self) -> SpikingNet:
        """The inference network: a deep copy without weak heads and without the BatchNorms of other timestep
        counts (each BatchNorm keeps its own, the T_s student's, at every inference T), in eval mode.

        Its parameters and logits equal those of the same architecture built with ``weak_stages=()`` and
        ``bn_extra_T=()`` and loaded with :meth:`backbone_state_dict`.
        """
        net = copy.deepcopy(self)
        net.weak_heads = nn.ModuleDict()
        for m in net.modules():
            if isinstance(m, TimeBatchNorm2d):
                m.per_T = nn.ModuleDict()
        net.zero_grad(set_to_none=True)  # the copy needs no training gradients
        return net.eval()

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the weak heads and the extra per-T BatchNorms (what :meth:`deploy` keeps)."""
        extra = tuple(f"{name}.per_T." for name, m in self.named_modules() if isinstance(m, TimeBatchNorm2d))
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("weak_heads.") and not k.startswith(extra)}


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# Architectures. A builder returns (stages, channels of each stage's output, head).

Builder = Callable[[int, int, tuple[int, int], NeuronConfig, tuple[int, ...]],
                   tuple[dict[str, Stage], dict[str, int], nn.Module]]


class ArchSpec(NamedTuple):
    """An architecture: its builder, stage names, the default weak stage, and the input size divisor."""

    build: Builder
    stages: tuple[str, ...]
    default_weak: str
    downsample: int  # total spatial reduction; H and W must be >= this
    doc: str


def _conv_stages(
    plan: list[list[int]], in_channels: int, neuron: NeuronConfig, *, bias: bool, pool: Callable[[], nn.Module],
    extra_T: tuple[int, ...] = (),
) -> tuple[dict[str, Stage], dict[str, int]]:
    stages: dict[str, Stage] = {}
    channels: dict[str, int] = {}
    c_in = in_channels
    for i, widths in enumerate(plan, start=1):
        blocks = []
        for c_out in widths:
            blocks.append(ConvBNLIF(c_in, c_out, neuron, bias=bias, extra_T=extra_T))
            c_in = c_out
        stages[f"stage{i}"] = Stage(blocks, pool())
        channels[f"stage{i}"] = c_in
    return stages, channels


def _build_vggsnn(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig, extra_T: tuple[int, ...] = ()
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # TET's VGGSNN: 64,128,AP,256,256,AP,512,512,AP,512,512,AP (conv with bias, as in TET's code).
    plan = [[64, 128], [256, 256], [512, 512], [512, 512]]
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=True, pool=lambda: nn.AvgPool2d(2),
                                    extra_T=extra_T)
    h, w = input_hw[0] // 16, input_hw[1] // 16
    return stages, channels, LinearHead(512 * h * w, n_classes)


class SpikingBNHead(nn.Module):
    """BNTT-style classifier (VGG-9): flatten -> linear (no bias) -> BatchNorm over the folded ``T*B`` batch
    (a :class:`TimeBatchNorm2d`, so it follows ``bn_stats`` like the backbone's) -> LIF -> linear readout (no LIF).
    ``[T, B, C, h, w]`` -> ``[T, B, classes]``."""

    def __init__(self, n_features: int, n_hidden: int, n_classes: int, neuron: NeuronConfig, *,
                 readout_bias: bool, extra_T: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, n_hidden, bias=False)
        self.bn = TimeBatchNorm2d(n_hidden, extra_T)
        self.lif = LIF(neuron)
        self.fc2 = nn.Linear(n_hidden, n_classes, bias=readout_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.fc1(x.flatten(2))  # [T, B, hidden]
        h = self.bn(h.flatten(0, 1)[:, :, None, None]).view(h.shape)
        spikes, _ = self.lif(h)
        return self.fc2(spikes), [spikes]


def _build_vgg9(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig, extra_T: tuple[int, ...] = ()
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # VGG-9 of BNTT (Kim & Panda 2021; TSSD's and Strong2Weak's backbone): 64, 64, AP, 128, 128, AP, 256, 256, 256,
    # AP, fc 1024 - LIF, fc classes. As BNTT's code: no bias in any conv or linear layer (each conv and fc1 feeds a
    # BatchNorm), no dropout. Ours: BatchNorm over T*B with affine weight and bias (BNTT: one BN per time step,
    # bias removed), LIF instead of BNTT's IF with leak 0.95 / Poisson input.
    plan = [[64, 64], [128, 128], [256, 256, 256]]
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=False, pool=lambda: nn.AvgPool2d(2),
                                    extra_T=extra_T)
    h, w = input_hw[0] // 8, input_hw[1] // 8
    return stages, channels, SpikingBNHead(256 * h * w, 1024, n_classes, neuron, readout_bias=False, extra_T=extra_T)


def _build_gesture_net(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig, extra_T: tuple[int, ...] = ()
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # PLIF (Fang et al. 2021) DVS128 Gesture net: 5 x [conv3x3 128 - BN - LIF - maxpool2],
    # then dropout - linear 512 - LIF - dropout - linear (no voting layer: logits per class).
    plan = [[128]] * 5
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=False, pool=lambda: nn.MaxPool2d(2),
                                    extra_T=extra_T)
    h, w = input_hw[0] // 32, input_hw[1] // 32
    return stages, channels, SpikingMLPHead(128 * h * w, 512, n_classes, neuron, dropout=0.5)


def _build_small(
    in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig, extra_T: tuple[int, ...] = ()
) -> tuple[dict[str, Stage], dict[str, int], nn.Module]:
    # Tiny net for CPU tests and 32x32 inputs: 16, AP, 32, AP, 32, AP -> linear.
    plan = [[16], [32], [32]]
    stages, channels = _conv_stages(plan, in_channels, neuron, bias=False, pool=lambda: nn.AvgPool2d(2),
                                    extra_T=extra_T)
    h, w = input_hw[0] // 8, input_hw[1] // 8
    return stages, channels, LinearHead(32 * h * w, n_classes)


ARCHITECTURES: dict[str, ArchSpec] = {
    "vggsnn": ArchSpec(
        _build_vggsnn, ("stage1", "stage2", "stage3", "stage4"), "stage2", 16,
        "TET VGGSNN, CIFAR10-DVS at 48x48 (~9.3 M parameters)",
    ),
    "vgg9": ArchSpec(
        _build_vgg9, ("stage1", "stage2", "stage3"), "stage2", 8,
        "BNTT / TSSD VGG-9, any size >= 8 (deployed parameters: 2x48x48 -> 11 classes 11,186,560, -> 10 classes "
        "11,185,536; 3x32x32 -> 10 classes 5,943,232)",
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
    weak_head: str = "gap_linear",
    bn_extra_T: Sequence[int] = (),
) -> SpikingNet:
    """Build a registered architecture.

    arch: a key of :data:`ARCHITECTURES`. in_channels: polarity channels P. input_hw: (H, W) pixels.
    weak_stages: stages that get a weak classifier; None = the architecture's default (middle)
    stage, () = none. neuron: options of :class:`models.neurons.NeuronConfig` (e.g. ``{"tau_steps": 2.0}``).
    t_ref: when set, inputs with T time steps are scaled by T / t_ref (time normalisation: the same per-bin
    input statistics at every T; `pipeline.train` sets it to the training T_s).
    weak_head: one of :data:`WEAK_HEADS` (the default ``gap_linear`` is what checkpoints without this argument
    were trained with). bn_extra_T: timestep counts whose passes get private backbone BatchNorms (TSSD's
    ``bn_stats: per_T``: the teacher's T_t); :meth:`SpikingNet.deploy` drops them.
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
    if weak_head not in WEAK_HEADS:
        raise ValueError(f"unknown weak head {weak_head!r}; choose one of {list(WEAK_HEADS)}")
    extra_T = tuple(sorted({int(T) for T in bn_extra_T}))
    if any(T < 1 for T in extra_T):
        raise ValueError(f"bn_extra_T must hold timestep counts >= 1, got {list(bn_extra_T)}")
    cfg = NeuronConfig.from_dict(neuron)
    stages, channels, head = spec.build(in_channels, n_classes, hw, cfg, extra_T)
    width = channels[spec.stages[-1]]  # what the final classifier reads

    def make_head(stage: str) -> nn.Module:
        if weak_head == "bottleneck":
            return BottleneckWeakHead(channels[stage], width, n_classes, cfg)
        return WeakHead(channels[stage], n_classes)

    # Keep heads in network order, whatever order the caller listed them in.
    heads = {s: make_head(s) for s in spec.stages if s in weak}
    return SpikingNet(arch, stages, head, heads, in_channels, t_ref)
