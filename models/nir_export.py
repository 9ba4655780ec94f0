r"""The deployed student as a NIR graph (the neuromorphic exchange format read by Norse, snnTorch, Sinabs, Lava...).

:func:`to_nir` turns a :class:`models.nets.SpikingNet` (weak heads gone, eval mode) into a ``nir.NIRGraph`` of
``Conv2d`` / ``Affine`` / ``Linear`` / ``SumPool2d`` (or ``AvgPool2d``) / ``Flatten`` and neuron nodes. Shapes in
the graph have no batch axis (NIR's convention): input ``(P, H, W)`` per time step, output ``(classes,)`` per time
step; the prediction is the time average of the output over the ``T`` steps, as in ``pipeline.evaluate``.

What is folded in (NIR has no node for it)
------------------------------------------
* **BatchNorm** (eval statistics) into the preceding conv/linear:
  ``W' = W * s``, ``b' = (b - mu) * s + beta`` with ``s = gamma / sqrt(var + eps)`` per output channel.
* **Time normalisation**: the net scales inputs with ``T`` steps by ``T / t_ref`` (``models.nets``); the export
  at ``T`` multiplies the first layer's weights (not its bias) by that factor (1 at the training ``T_s``).
* **Average pooling** (``pool="sum"``, the default): ``AvgPool2d(k)`` = ``SumPool2d(k)`` followed by ``1/k^2``,
  folded into the next layer's weights. Norse's importer maps only ``SumPool2d`` (an ``AvgPool2d`` node is dropped
  by it without a word), snnTorch's maps both. ``pool="avg"`` writes ``AvgPool2d`` nodes instead.
* **MaxPool** has no NIR node: refused with the layer's name (``gesture_net``; PLIF's max pooling of binary
  spikes is an OR, not a linear map).
* **Dropout** is the identity at inference and is left out.

The neuron
----------
Ours (``models.neurons``) is discrete, with a soft reset:
:math:`H[t] = (1 - 1/\tau) H^+[t-1] + I[t]`, :math:`S[t] = \Theta(H[t] - \theta)`, :math:`H^+[t] = H[t] - \theta S[t]`.
NIR's neurons are continuous: ``LI`` is :math:`\tau_N \dot v = (v_{leak} - v) + R I`, ``LIF`` adds
:math:`z = \Theta(v - v_{thr})` and a reset *to* ``v_reset``. Every importer we read (Norse ``from_nir``, snnTorch
``import_from_nir``, nirtorch) discretises them by one forward-Euler step of ``dt`` per time step and 0/1 spikes:
:math:`v[t] = (1 - dt/\tau_N) v[t-1] + (dt/\tau_N) R I[t]`. Hence, with ``dt = dt_s``:

* ``tau_N = tau * dt_s`` gives the decay :math:`1 - 1/\tau`;
* ``R = 1`` and the layer feeding the neuron scaled by ``tau`` (weights and bias) make the input term exactly
  :math:`I[t]` (``R = tau`` with unscaled weights is the same system, but Norse's importer ignores ``R``; snnTorch
  folds ``R dt / tau_N`` into its threshold, exactly, either way). For ``tau = 2`` the factor is a power of two, so
  the imported nets reproduce ours bit for bit up to summation order;
* ``v_threshold = theta``, ``v_leak = 0``, ``v_reset = 0``.

``neuron="lif"`` (default) writes one NIR ``LIF`` per layer. NIR's ``LIF`` resets *to* zero: read with NIR's own
semantics (Norse's and snnTorch's importers by default) the graph is the **hard-reset approximation** of our net
(``pipeline.export`` reports what it costs in accuracy). Importers that offer a subtract reset reproduce ours
exactly: Norse ``from_nir(graph, dt=dt_s, reset_method=norse.torch.functional.reset.reset_subtract)``.
The graph's metadata says ``reset: subtract`` so a loader can choose it.

``neuron="li_threshold"`` writes the **exact** soft-reset neuron in plain NIR semantics: per layer an ``LI``
(``tau_N``, ``R = 1``), a ``Threshold(theta)`` and a recurrent edge ``Threshold -> Scale(w) -> LI`` with
``w = -(tau - 1) * theta``. A recurrent edge carries the previous step's spikes (nirtorch's interpreter, the NIR
reference semantics of a cycle), so the LI state obeys
:math:`u[t] = (1 - 1/\tau) u[t-1] + I[t] - (1 - 1/\tau)\theta S[t-1]` -- our :math:`H[t]` exactly. It needs a
target that executes ``LI``, ``Threshold``, ``Scale`` and cycles (nirtorch's interpreter with a node map; Lava-DL);
Norse's and snnTorch's importers map neither ``LI`` nor ``Threshold``.

Spikes fire at ``H >= theta`` here and at ``v > theta`` in NIR: they differ only where a membrane lands exactly
on the threshold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from models.nets import ConvBNLIF, LinearHead, SpikingBNHead, SpikingMLPHead, SpikingNet
from models.neurons import LIF

__all__ = ["NIRExportError", "ExportInfo", "to_nir", "NEURON_FORMS", "POOL_FORMS", "DEFAULT_DT_S"]

#: ``neuron=`` choices of :func:`to_nir`.
NEURON_FORMS = ("lif", "li_threshold")
#: ``pool=`` choices of :func:`to_nir`.
POOL_FORMS = ("sum", "avg")
#: Euler step the graph's time constants are written for: snnTorch's importer hard-codes 1e-4 s; Norse's takes
#: ``dt=`` (pass the graph's ``metadata["dt_s"]``).
DEFAULT_DT_S = 1e-4


class NIRExportError(ValueError):
    """The network has a layer NIR cannot express (names the layer)."""


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What :func:`to_nir` folded, for the log line and the graph's metadata."""

    T: int
    input_scale: float
    neuron: str
    pool: str
    dt_s: float
    n_nodes: int
    n_neuron_layers: int


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d
             ) -> tuple[np.ndarray, np.ndarray]:
    """``bn(conv(x))`` in eval mode as one conv: returns ``(W', b')`` in float64 (``W`` ``[C_out, ...]``)."""
    w = _np(weight)
    b = _np(bias) if bias is not None else np.zeros(w.shape[0])
    s = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    return w * s.reshape(-1, *([1] * (w.ndim - 1))), (b - _np(bn.running_mean)) * s + _np(bn.bias)


class _Builder:
    """Appends nodes in a chain, keeping the running shape ``(C, H, W)`` or ``(F,)`` and the pending input scale."""

    def __init__(self, input_shape: tuple[int, ...], neuron: str, pool: str, dt_s: float, nir: Any):
        self.nir = nir
        self.nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array(input_shape))}
        self.edges: list[tuple[str, str]] = []
        self.last = "input"
        self.shape = tuple(input_shape)
        self.scale = 1.0  # multiplies the next weight layer's weights (time normalisation, sum-pool's 1/k^2)
        self.neuron, self.pool, self.dt_s = neuron, pool, dt_s
        self.n_neurons = 0

    def add(self, name: str, node: Any, *, source: str | None = None) -> None:
        self.nodes[name] = node
        self.edges.append((source or self.last, name))
        self.last = name

    def _take_scale(self) -> float:
        scale, self.scale = self.scale, 1.0
        return scale

    def conv(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, gain: float) -> None:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise NIRExportError(f"{name}: only zero padding given as integers can be exported")
        w, b = _fold_bn(conv.weight, conv.bias, bn)
        w = w * self._take_scale() * gain  # the pending scale multiplies inputs: weights only, not the bias
        b = b * gain
        node = self.nir.Conv2d(input_shape=self.shape[1:], weight=w.astype(np.float32), stride=conv.stride,
                               padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                               bias=b.astype(np.float32))
        self.add(name, node)
        c_out = w.shape[0]
        h, wd = (int(v) for v in node.output_type["output"][1:])
        self.shape = (c_out, h, wd)

    def linear(self, name: str, fc: nn.Linear, gain: float, bn: nn.BatchNorm2d | None = None) -> None:
        w, bias = (_np(fc.weight), None if fc.bias is None else _np(fc.bias)) if bn is None else _fold_bn(
            fc.weight, fc.bias, bn)
        w = w * self._take_scale() * gain
        if bias is None:
            self.add(name, self.nir.Linear(weight=w.astype(np.float32)))
        else:
            self.add(name, self.nir.Affine(weight=w.astype(np.float32), bias=(bias * gain).astype(np.float32)))
        self.shape = (w.shape[0],)

    def pooling(self, name: str, module: nn.Module) -> None:
        if not isinstance(module, nn.AvgPool2d):
            raise NIRExportError(
                f"{name}: {type(module).__name__} has no NIR node (NIR has AvgPool2d and SumPool2d); "
                "an architecture with max pooling cannot be exported -- use one with average pooling")
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        p = _pair(module.padding)
        if p != (0, 0) or module.ceil_mode:
            raise NIRExportError(f"{name}: only AvgPool2d without padding and ceil_mode can be exported")
        args = dict(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
        if self.pool == "sum":
            self.add(name, self.nir.SumPool2d(**args))
            self.scale *= 1.0 / (k[0] * k[1])
        else:
            self.add(name, self.nir.AvgPool2d(**args))
        c, h, w = self.shape
        self.shape = (c, (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1)

    def flatten(self, name: str) -> None:
        self.add(name, self.nir.Flatten(input_type={"input": np.array(self.shape)}, start_dim=0, end_dim=-1))
        self.shape = (int(np.prod(self.shape)),)

    def lif(self, name: str, lif: LIF) -> None:
        cfg = lif.config
        if lif.p.v_leak != 0.0:
            raise NIRExportError(f"{name}: v_leak != 0 is not exported")
        full = lambda v: np.full(self.shape, v, dtype=np.float32)  # noqa: E731 - one line per parameter below
        tau_n = cfg.tau_steps * self.dt_s
        self.n_neurons += 1
        if self.neuron == "lif":
            self.add(name, self.nir.LIF(tau=full(tau_n), r=full(1.0), v_leak=full(0.0),
                                        v_threshold=full(cfg.v_th), v_reset=full(0.0)))
            return
        li, thr, rst = f"{name}_li", f"{name}_threshold", f"{name}_reset"
        self.add(li, self.nir.LI(tau=full(tau_n), r=full(1.0), v_leak=full(0.0)))
        self.add(thr, self.nir.Threshold(threshold=full(cfg.v_th)))
        self.nodes[rst] = self.nir.Scale(scale=full(-(cfg.tau_steps - 1.0) * cfg.v_th))
        self.edges += [(thr, rst), (rst, li)]  # the recurrent soft reset (previous step's spikes)

    def gain(self, lif: LIF) -> float:
        """Factor for the layer feeding ``lif``: tau, so that R = 1 and dt/tau_N = 1/tau leave I[t] unscaled."""
        return float(lif.config.tau_steps)


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def to_nir(net: SpikingNet, input_hw: tuple[int, int], *, T: int | None = None, neuron: str = "lif",
           pool: str = "sum", dt_s: float = DEFAULT_DT_S, metadata: dict[str, Any] | None = None
           ) -> tuple[Any, ExportInfo]:
    """The deployed ``net`` as a ``nir.NIRGraph`` for inference at ``T`` steps (default: its ``t_ref``, the T_s).

    net: a :class:`SpikingNet` (``deploy()``-ed, or weak heads are ignored); BatchNorm in eval statistics.
    input_hw: (H, W) of one frame. neuron: one of :data:`NEURON_FORMS`; pool: one of :data:`POOL_FORMS`.
    dt_s: the Euler step the time constants are written for (``tau_N = tau_steps * dt_s``).
    Returns the graph and an :class:`ExportInfo`. Raises :class:`NIRExportError` naming a layer NIR cannot express.
    """
    try:
        import nir
    except ImportError:  # pragma: no cover - nir comes with norse; the `export` extra pins it
        raise NIRExportError("NIR export needs the `nir` package: pip install 'tssd-pipeline[export]'") from None
    if neuron not in NEURON_FORMS:
        raise ValueError(f"neuron={neuron!r}; choose one of {NEURON_FORMS}")
    if pool not in POOL_FORMS:
        raise ValueError(f"pool={pool!r}; choose one of {POOL_FORMS}")
    if not dt_s > 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    T = int(T if T is not None else (net.t_ref or 1))
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    b = _Builder((net.in_channels, *(int(v) for v in input_hw)), neuron, pool, dt_s, nir)
    input_scale = T / net.t_ref if net.t_ref is not None else 1.0
    b.scale = input_scale
    for sname, stage in net.stages.items():
        for i, block in enumerate(stage.blocks):
            if not isinstance(block, ConvBNLIF):
                raise NIRExportError(f"stages.{sname}.blocks.{i}: {type(block).__name__} is not exportable")
            conv, bn = block.ann.layers
            b.conv(f"{sname}_{i}_conv", conv, bn, b.gain(block.lif))
            b.lif(f"{sname}_{i}_lif", block.lif)
        pools = list(stage.pool.layers)
        if len(pools) != 1:
            raise NIRExportError(f"stages.{sname}.pool: expected one pooling layer, got {len(pools)}")
        try:
            b.pooling(f"{sname}_pool", pools[0])
        except NIRExportError as err:
            raise NIRExportError(f"{net.arch}: layer stages.{sname}.pool.layers.0: {err}") from None
    head = net.head
    b.flatten("head_flatten")
    if isinstance(head, LinearHead):
        b.linear("head_fc", head.fc, 1.0)
    elif isinstance(head, SpikingMLPHead):  # dropout is the identity at inference
        b.linear("head_fc1", head.fc1, b.gain(head.lif))
        b.lif("head_lif", head.lif)
        b.linear("head_fc2", head.fc2, 1.0)
    elif isinstance(head, SpikingBNHead):  # vgg9: its BatchNorm folded into fc1
        b.linear("head_fc1", head.fc1, b.gain(head.lif), head.bn)
        b.lif("head_lif", head.lif)
        b.linear("head_fc2", head.fc2, 1.0)
    else:
        raise NIRExportError(f"head: {type(head).__name__} is not exportable")
    b.nodes["output"] = nir.Output(output_type=np.array(b.shape))
    b.edges.append((b.last, "output"))
    info = ExportInfo(T=T, input_scale=float(input_scale), neuron=neuron, pool=pool, dt_s=float(dt_s),
                      n_nodes=len(b.nodes), n_neuron_layers=b.n_neurons)
    meta = {"source": "tssd-pipeline", "arch": net.arch, "T": T, "dt_s": float(dt_s), "reset": "subtract",
            "neuron_form": neuron, "pool_form": pool, "input_scale": float(input_scale),
            "readout": "time average of the output over T steps", **(metadata or {})}
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta)
    return graph, info
