"""Spiking ResNets of the literature TSSD compares with, on the :class:`models.nets.SpikingNet` contract.

Time-first ``[T, B, C, H, W]``; conv + BatchNorm run once over ``T*B`` (:class:`models.nets.SeqToANN`), every
BatchNorm is a :class:`models.nets.TimeBatchNorm2d` (BN per T for ``bn_stats: per_T``, dropped by ``deploy()``),
only the LIF neurons (:class:`models.neurons.LIF`) loop over T. Each stage returns ``(output, [spikes of its LIF
layers])`` like :class:`models.nets.Stage`; its output is what a weak classifier at that stage reads.

``resnet19``: ResNet-19 of tdBN (Zheng et al. 2021) as TET's public code builds it
(brain-intelligence-lab/temporal_efficient_training, ``models/resnet_models.py``): conv3x3 64 - BN - LIF, then
BasicBlocks (conv3x3-BN-LIF-conv3x3-BN, + shortcut, then LIF) of widths 128, 256, 512 with 3, 3, 2 blocks (strides
1, 2, 2; a conv1x1-BN shortcut where shape changes, so the first block of 128 has one: 64 -> 128), global average
pool, fc 512->256 (bias) - LIF - fc 256->classes. 12,630,858 parameters at 10 classes (TET/tdBN quote 12.63 M);
the tdBN paper's table draws a 128-channel stem (12.70 M) -- we follow the code whose count the papers quote.

``sew_resnet34``: SEW-ResNet (Fang et al. 2021, SpikingJelly's ``sew_resnet.py``) with the ADD connect function:
conv7x7/2 64 - BN - LIF - maxpool 3/2, BasicBlocks conv3x3-BN-LIF-conv3x3-BN-LIF whose output is
``spikes + identity`` (identity = the block's input, or LIF(conv1x1-BN(input)) where shape changes), widths
64..512, (3, 4, 6, 3) blocks, average pool, fc. 21,797,672 parameters at 1000 classes (= ResNet-34).

``ms_resnet18`` / ``ms_resnet34``: MS-ResNet (Hu et al., arXiv 2112.08954; official code Ariande1/MS-ResNet
``models/MS_ResNet.py``, SpikingJelly's ``ms_resnet.py``): conv7x7/2 64 - BN (no LIF, no maxpool), blocks
LIF-conv3x3-BN-LIF-conv3x3-BN whose output is ``branch + identity`` on membrane inputs (identity = the input, or
conv1x1-BN(input) where shape changes; the first stage has stride 2 instead of a maxpool), widths 64..512,
(2, 2, 2, 2) / (3, 4, 6, 3) blocks, then LIF - average pool - fc. BatchNorm gamma starts at the threshold and
the last BN of each branch at 0, as in the official code. 11,693,736 / 21,801,896 parameters at 1000 classes
(ResNet-18/34 plus the stride-2 shortcut conv1x1-BN of the first stage).

Stage names ``stage1`` (stem + first block group) ... ``stage3``/``stage4``; the default weak stage is ``stage2``
(half of ResNet-18/34's blocks lie before its output; the middle of ResNet-19's three groups).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.nets import ArchSpec, SeqToANN, TimeBatchNorm2d
from models.neurons import LIF, NeuronConfig

__all__ = ["RESNETS", "MSBlock", "SEWBlock", "TETBlock", "ResStage"]

ExtraT = tuple[int, ...]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, extra_T: ExtraT, gamma: float = 1.0) -> SeqToANN:
    """conv (no bias, 'same' padding for odd kernels) then TimeBatchNorm2d with weight ``gamma`` (its per-T ones too),
    over ``T*B``: ``[T, B, c_in, H, W]`` -> ``[T, B, c_out, H/stride, W/stride]``."""
    bn = TimeBatchNorm2d(c_out, extra_T)
    for m in (bn, *bn.per_T.values()):
        nn.init.constant_(m.weight, gamma)
    return SeqToANN(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), bn)


def _shortcut(c_in: int, c_out: int, stride: int, extra_T: ExtraT, gamma: float = 1.0) -> SeqToANN | None:
    """conv1x1-BN projection where the block changes shape, else None (identity)."""
    return _conv_bn(c_in, c_out, 1, stride, extra_T, gamma) if stride != 1 or c_in != c_out else None


class TETBlock(nn.Module):
    """tdBN / TET BasicBlock: ``LIF(BN(conv(LIF(BN(conv(x))))) + shortcut(x))``; spikes in, spikes out."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: NeuronConfig, extra_T: ExtraT) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, extra_T)
        self.lif1 = LIF(neuron)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, extra_T)
        self.downsample = _shortcut(c_in, c_out, stride, extra_T)
        self.lif2 = LIF(neuron)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s1, _ = self.lif1(self.conv1(x))
        identity = x if self.downsample is None else self.downsample(x)
        s2, _ = self.lif2(self.conv2(s1) + identity)
        return s2, [s1, s2]


class SEWBlock(nn.Module):
    """SEW BasicBlock, ADD: ``LIF(BN(conv(LIF(BN(conv(x)))))) + identity``, identity = ``x`` or
    ``LIF(BN(conv1x1(x)))``. The sum of two spike tensors (values 0, 1, 2, ...) is the block's output."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: NeuronConfig, extra_T: ExtraT) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, extra_T)
        self.lif1 = LIF(neuron)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, extra_T)
        self.lif2 = LIF(neuron)
        self.downsample = _shortcut(c_in, c_out, stride, extra_T)
        self.lif_down = LIF(neuron) if self.downsample is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s1, _ = self.lif1(self.conv1(x))
        s2, _ = self.lif2(self.conv2(s1))
        spikes = [s1, s2]
        identity = x
        if self.downsample is not None:
            identity, _ = self.lif_down(self.downsample(x))
            spikes.append(identity)
        return self.connect(identity, s2), spikes

    @staticmethod
    def connect(identity: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The ADD spike-element-wise function ``g(S, A) = S + A``."""
        return identity + out


class MSBlock(nn.Module):
    """MS-ResNet BasicBlock: ``BN(conv(LIF(BN(conv(LIF(x)))))) + shortcut(x)``: membrane in, membrane out; the
    shortcut (identity or conv1x1-BN) adds pre-spike values, the branch spikes before each conv."""

    def __init__(self, c_in: int, c_out: int, stride: int, neuron: NeuronConfig, extra_T: ExtraT) -> None:
        super().__init__()
        self.lif1 = LIF(neuron)
        self.conv1 = _conv_bn(c_in, c_out, 3, stride, extra_T, gamma=neuron.v_th)
        self.lif2 = LIF(neuron)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1, extra_T, gamma=0.0)  # the branch starts as zero (official code)
        self.downsample = _shortcut(c_in, c_out, stride, extra_T, gamma=neuron.v_th)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s1, _ = self.lif1(x)
        s2, _ = self.lif2(self.conv1(s1))
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(s2) + identity, [s1, s2]


class Stem(nn.Module):
    """conv-BN, then optionally LIF and a 3x3/2 maxpool: ``[T, B, C, H, W]`` -> ``([T, B, width, h, w], spikes)``."""

    def __init__(self, c_in: int, width: int, kernel: int, stride: int, neuron: NeuronConfig | None,
                 maxpool: bool, extra_T: ExtraT, gamma: float = 1.0) -> None:
        super().__init__()
        self.conv = _conv_bn(c_in, width, kernel, stride, extra_T, gamma)
        self.lif = LIF(neuron) if neuron is not None else None
        self.pool = SeqToANN(nn.MaxPool2d(3, stride=2, padding=1)) if maxpool else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.conv(x)
        if self.lif is None:
            return x, []
        x, _ = self.lif(x)
        return (x if self.pool is None else self.pool(x)), [x]


class ResStage(nn.Module):
    """An optional stem, then residual blocks. Returns the last block's output and every LIF layer's spikes."""

    def __init__(self, blocks: list[nn.Module], stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spikes: list[torch.Tensor] = []
        if self.stem is not None:
            x, s = self.stem(x)
            spikes += s
        for block in self.blocks:
            x, s = block(x)
            spikes += s
        return x, spikes


class PoolHead(nn.Module):
    """Classifier: [LIF] -> global average pool -> [fc - LIF] -> fc, per step. ``[T, B, C, h, w]`` -> ``[T, B, n]``.

    ``lif_first``: MS-ResNet's spiking of the last membrane; ``hidden``: TET's spiking fc 256."""

    def __init__(self, channels: int, n_classes: int, neuron: NeuronConfig, *, lif_first: bool = False,
                 hidden: int | None = None) -> None:
        super().__init__()
        self.lif_in = LIF(neuron) if lif_first else None
        self.fc1 = nn.Linear(channels, hidden) if hidden else None
        self.lif_hidden = LIF(neuron) if hidden else None
        self.fc = nn.Linear(hidden or channels, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spikes = []
        if self.lif_in is not None:
            x, _ = self.lif_in(x)
            spikes.append(x)
        x = x.mean(dim=(-2, -1))  # AdaptiveAvgPool2d(1) over [T, B, C, h, w]
        if self.fc1 is not None:
            x, _ = self.lif_hidden(self.fc1(x))
            spikes.append(x)
        return self.fc(x), spikes


Block = Callable[[int, int, int, NeuronConfig, ExtraT], nn.Module]


def _groups(block: Block, c_in: int, plan: list[tuple[int, int, int]], neuron: NeuronConfig,
            extra_T: ExtraT) -> list[list[nn.Module]]:
    """Block groups of ``plan`` = [(width, n_blocks, first stride), ...]; the first block of each carries the stride."""
    groups = []
    for width, n, stride in plan:
        groups.append([block(c_in if i == 0 else width, width, stride if i == 0 else 1, neuron, extra_T)
                       for i in range(n)])
        c_in = width
    return groups


Built = tuple[dict[str, ResStage], dict[str, int], nn.Module]


def _assemble(stem: nn.Module, groups: list[list[nn.Module]], widths: list[int], head: nn.Module) -> Built:
    stages = {f"stage{i}": ResStage(g, stem if i == 1 else None) for i, g in enumerate(groups, start=1)}
    return stages, {f"stage{i}": w for i, w in enumerate(widths, start=1)}, head


def _build_resnet19(in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig,
                    extra_T: ExtraT = ()) -> Built:
    plan = [(128, 3, 1), (256, 3, 2), (512, 2, 2)]
    stem = Stem(in_channels, 64, 3, 1, neuron, False, extra_T)
    groups = _groups(TETBlock, 64, plan, neuron, extra_T)
    return _assemble(stem, groups, [w for w, _, _ in plan], PoolHead(512, n_classes, neuron, hidden=256))


IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
IMAGENET_WIDTHS = (64, 128, 256, 512)


def _sew_resnet(depth: int) -> Callable[..., Built]:
    def build(in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig,
              extra_T: ExtraT = ()) -> Built:
        plan = [(w, n, 1 if i == 0 else 2) for i, (w, n) in enumerate(zip(IMAGENET_WIDTHS, IMAGENET_BLOCKS[depth]))]
        stem = Stem(in_channels, 64, 7, 2, neuron, True, extra_T)
        groups = _groups(SEWBlock, 64, plan, neuron, extra_T)
        return _assemble(stem, groups, list(IMAGENET_WIDTHS), PoolHead(512, n_classes, neuron))

    return build


def _ms_resnet(depth: int) -> Callable[..., Built]:
    def build(in_channels: int, n_classes: int, input_hw: tuple[int, int], neuron: NeuronConfig,
              extra_T: ExtraT = ()) -> Built:
        plan = [(w, n, 2) for w, n in zip(IMAGENET_WIDTHS, IMAGENET_BLOCKS[depth])]  # stage 1 strides, no maxpool
        stem = Stem(in_channels, 64, 7, 2, None, False, extra_T, gamma=neuron.v_th)
        groups = _groups(MSBlock, 64, plan, neuron, extra_T)
        return _assemble(stem, groups, list(IMAGENET_WIDTHS), PoolHead(512, n_classes, neuron, lif_first=True))

    return build


_IMAGENET_STAGES = ("stage1", "stage2", "stage3", "stage4")

#: The literature ResNets, merged into :data:`models.nets.ARCHITECTURES`.
RESNETS: dict[str, ArchSpec] = {
    "resnet19": ArchSpec(
        _build_resnet19, ("stage1", "stage2", "stage3"), "stage2", 4,
        "ResNet-19 (tdBN/TET code), CIFAR 32x32 (12.63 M parameters at 10 classes)",
    ),
    "ms_resnet18": ArchSpec(
        _ms_resnet(18), _IMAGENET_STAGES, "stage2", 32,
        "MS-ResNet-18 (Hu et al.), ImageNet 224x224 (11.69 M at 1000 classes)",
    ),
    "ms_resnet34": ArchSpec(
        _ms_resnet(34), _IMAGENET_STAGES, "stage2", 32,
        "MS-ResNet-34 (Hu et al.), ImageNet 224x224 (21.80 M at 1000 classes)",
    ),
    "sew_resnet34": ArchSpec(
        _sew_resnet(34), _IMAGENET_STAGES, "stage2", 32,
        "SEW-ResNet-34 ADD (Fang et al.), ImageNet 224x224 (21.80 M at 1000 classes)",
    ),
}
