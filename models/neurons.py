r"""The paper's LIF neuron, built on Norse 1.1.0's box LIF.

TSSD (arXiv 2406.07862) uses a discrete LIF neuron with soft reset:

.. math::
    H[t] = (1 - 1/\tau)\,H[t-1] + I[t], \qquad
    S[t] = \Theta(H[t] - \theta), \qquad
    H[t] \leftarrow H[t] - \theta\,S[t],

trained with the rectangular surrogate
:math:`\partial S / \partial H \approx \frac{1}{a}\,\mathbb{1}\{|H - \theta| < a/2\}`;
defaults :math:`\tau = 2, \theta = 1, a = 1`.

How Norse's box LIF maps onto it
--------------------------------
Norse 1.1.0's ``lif_box_feed_forward_step`` takes one explicit Euler step of
:math:`\dot v = \tau_\text{mem}^{-1}(v_\text{leak} - v + i)`::

    v <- v + dt * tau_mem_inv * (i + v_leak - v)

With :math:`v_\text{leak} = 0` and :math:`c = dt \cdot \tau_\text{mem}^{-1}` this is
:math:`v \leftarrow (1 - c)\,v + c\,i`: the decay is the paper's :math:`(1 - 1/\tau)` when
:math:`c = 1/\tau` (``tau_mem_inv = 1 / (tau_steps * dt_s)``, i.e. 500 1/s for
:math:`\tau = 2` at Norse's ``dt = 1e-3``), but Norse scales the input by :math:`c = 1/\tau`,
whereas the paper adds :math:`I[t]` unscaled. Feeding Norse the current :math:`i = I / c = \tau I`
gives exactly :math:`v \leftarrow (1 - 1/\tau)\,v + I`. We do not materialise :math:`\tau I`:
:func:`lif_step` evaluates that same update in its jump form ``torch.add(I, v, alpha=1 - c)``
(one kernel; Norse's literal form takes three plus the pre-scaling). For :math:`\tau = 2` every
factor (0.5, 2) is a power of two, so the two forms agree bit for bit; ``tests/test_models.py``
checks :func:`lif_step` against Norse's ``lif_box_feed_forward_step`` fed ``I * tau`` and against
hand-computed values of the paper's recurrence.

Threshold and reset follow Norse's parameters: ``v_th = theta``, ``v_reset = 0``, and the soft
reset of Norse's ``reset_subtract`` (:math:`(1 - z) v + z (v - \theta) = v - \theta z`), passed as
its one-kernel form :func:`reset_subtract_fused` through ``LIFBoxParameters.reset_method``.
Norse's ``threshold()`` dispatches on a fixed set of names, so the spike function comes from
:data:`SURROGATES`: Norse's surrogates plus the paper's ``"rect"``, always with an explicit alpha.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

with warnings.catch_warnings():
    # Importing norse runs torch.jit.script at module level (norse/torch/functional/
    # correlation_sensor.py), which torch 2.13 deprecates; we use no scripted code.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
    from norse.torch.functional.lif_box import LIFBoxFeedForwardState, LIFBoxParameters
    from norse.torch.functional.threshold import threshold as norse_threshold

__all__ = [
    "SURROGATES",
    "NeuronConfig",
    "LIF",
    "LIFBoxFeedForwardState",
    "lif_step",
    "lif_multistep",
    "reset_subtract_fused",
    "rect_surrogate",
]


class RectSurrogate(torch.autograd.Function):
    r"""Heaviside forward, rectangular surrogate backward (TSSD's surrogate gradient).

    Forward :math:`S = \Theta(x)` with :math:`\Theta(0) = 1` (the paper fires at
    :math:`H \ge \theta`; Norse's own surrogates use :math:`x > 0`).
    Backward :math:`\partial S / \partial x = \frac{1}{a}\,\mathbb{1}\{|x| < a/2\}`,
    where :math:`x = H - \theta` and :math:`a` is the width (unit area for every ``a``).
    """

    @staticmethod
    def forward(x: torch.Tensor, width: float) -> torch.Tensor:
        # Comparison written straight into a float tensor: one vectorised kernel. (On CPU,
        # torch.heaviside, torch.where and bool->float .to() are 4-15x slower than this.)
        return torch.ge(x, 0.0, out=torch.empty_like(x))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, float], output: torch.Tensor) -> None:
        x, width = inputs
        ctx.save_for_backward(x)
        ctx.width = float(width)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (x,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        inside = torch.lt(x.abs(), ctx.width / 2.0, out=torch.empty_like(grad_output))  # 1.0 / 0.0
        if ctx.width != 1.0:
            inside.mul_(1.0 / ctx.width)
        return grad_output * inside, None


def rect_surrogate(x: torch.Tensor, width: float) -> torch.Tensor:
    """Spike function ``Θ(x)`` with the rectangular surrogate of width ``width`` (see :class:`RectSurrogate`)."""
    return RectSurrogate.apply(x, width)


def _norse_surrogate(method: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    def spike(x: torch.Tensor, alpha: float) -> torch.Tensor:
        return norse_threshold(x, method, alpha)

    spike.__name__ = f"norse_{method}"
    return spike


@dataclasses.dataclass(frozen=True)
class SurrogateSpec:
    """A spike function ``fn(x, alpha)`` and the ``alpha`` it gets when the config names none."""

    fn: Callable[[torch.Tensor, float], torch.Tensor]
    default_alpha: float
    note: str


#: Spike functions by name. Defaults give the surrogate unit area where the parameter allows.
#: Norse 1.1.0's surrogate derivatives (x = v - v_th): super 1/(|x|+1)^2 (alpha is IGNORED by
#: Norse 1.1.0; area 2), triangle alpha*relu(1-|x|) (area alpha), tanh 1-tanh(alpha x)^2
#: (area 2/alpha), circ alpha^3/(alpha^2+x^2)^1.5 (area 2 alpha), heavi_erfc
#: 2 exp(-(alpha x)^2)/sqrt(pi) (area 2/alpha).
SURROGATES: dict[str, SurrogateSpec] = {
    "rect": SurrogateSpec(rect_surrogate, 1.0, "TSSD's rectangle: (1/a) 1{|x| < a/2}, alpha = a"),
    "super": SurrogateSpec(_norse_surrogate("super"), 100.0, "Norse SuperSpike 1/(|x|+1)^2; alpha unused by Norse 1.1.0"),
    "triangle": SurrogateSpec(_norse_surrogate("triangle"), 1.0, "Norse triangle alpha*relu(1-|x|)"),
    "tanh": SurrogateSpec(_norse_surrogate("tanh"), 2.0, "Norse 1-tanh(alpha x)^2"),
    "circ": SurrogateSpec(_norse_surrogate("circ"), 0.5, "Norse alpha^3/(alpha^2+x^2)^1.5"),
    "heavi_erfc": SurrogateSpec(_norse_surrogate("heavi_erfc"), 2.0, "Norse 2 exp(-(alpha x)^2)/sqrt(pi)"),
}


def _surrogate(name: str) -> SurrogateSpec:
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}") from None


@dataclasses.dataclass(frozen=True)
class NeuronConfig:
    """LIF settings (TSSD defaults); the ``train.neuron:`` section of params.yaml (`pipeline.runs.TrainConfig`).

    tau_steps: membrane time constant in time steps (the paper's tau; decay 1 - 1/tau), >= 1.
    v_th: threshold theta (input units). surrogate: a key of :data:`SURROGATES`.
    alpha: surrogate parameter (the rectangle's width a for "rect"); None = that surrogate's default.
    dt_s: Norse's integration step in seconds; only tau_mem_inv = 1/(tau_steps*dt_s) depends on it.
    """

    tau_steps: float = 2.0
    v_th: float = 1.0
    surrogate: str = "rect"
    alpha: float | None = None
    dt_s: float = 1e-3

    def __post_init__(self) -> None:
        _surrogate(self.surrogate)
        if not self.tau_steps >= 1.0:
            raise ValueError(f"tau_steps must be >= 1 (decay 1 - 1/tau in [0, 1)), got {self.tau_steps}")
        if not self.v_th > 0.0:
            raise ValueError(f"v_th must be > 0, got {self.v_th}")
        if not self.dt_s > 0.0:
            raise ValueError(f"dt_s must be > 0, got {self.dt_s}")
        if self.alpha is not None and not self.alpha > 0.0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> NeuronConfig:
        """Build from a config mapping; unknown keys are an error that lists the valid ones."""
        values = dict(values or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown neuron option(s) {unknown}; valid: {names}")
        return cls(**values)

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else _surrogate(self.surrogate).default_alpha

    def norse_parameters(self) -> LIFBoxParameters:
        """Norse box-LIF parameters for the paper's neuron (python floats: device- and dtype-agnostic)."""
        return LIFBoxParameters(
            tau_mem_inv=1.0 / (self.tau_steps * self.dt_s),
            v_leak=0.0,
            v_th=float(self.v_th),
            v_reset=0.0,
            method=self.surrogate,
            alpha=self.resolved_alpha,
            reset_method=reset_subtract_fused,
        )

    @property
    def input_scale(self) -> float:
        """Factor 1/(dt * tau_mem_inv) = tau that makes the paper's I[t] enter Norse's step unscaled."""
        return 1.0 / (self.dt_s * (1.0 / (self.tau_steps * self.dt_s)))


def reset_subtract_fused(
    z: torch.Tensor, v: torch.Tensor, reset: float | torch.Tensor, th: float | torch.Tensor
) -> torch.Tensor:
    """Norse's ``reset_subtract`` ``(1 - z) v + z (v - th)`` in its one-kernel form ``v - th z``.

    Same value and gradients (d/dv = 1, d/dz = -th); 1 kernel instead of 5, per step and in backward.
    """
    if isinstance(th, (int, float)):
        return torch.sub(v, z, alpha=th)
    return v - th * z


def lif_step(
    current: torch.Tensor,
    state: LIFBoxFeedForwardState,
    p: LIFBoxParameters,
    dt: float,
) -> tuple[torch.Tensor, LIFBoxFeedForwardState]:
    r"""One step of Norse 1.1.0's box LIF, in jump form, for the paper's current ``I``.

    Norse's ``lif_box_feed_forward_step`` computes ``v + c (i + v_leak - v)`` with
    ``c = dt * tau_mem_inv``. Fed ``i = I / c`` that is
    ``(1 - c) v + I + c v_leak`` -- computed here as one ``torch.add(I, v, alpha=1 - c)``
    (the paper's :math:`H[t] = (1 - 1/\tau) H[t-1] + I[t]` for ``c = 1/tau``, ``v_leak = 0``).
    Threshold at ``p.v_th`` with ``SURROGATES[p.method]`` (Norse's ``threshold`` plus "rect"),
    then ``p.reset_method``. ``tests/test_models.py`` checks this against Norse's own step.
    Shapes: ``current``, ``state.v`` ``[B, ...]`` -> spikes ``[B, ...]``.
    """
    c = float(dt * p.tau_mem_inv)
    v_decayed = torch.add(current, state.v, alpha=1.0 - c)
    if p.v_leak != 0.0:
        v_decayed = v_decayed + c * p.v_leak
    z_new = SURROGATES[p.method].fn(v_decayed - p.v_th, p.alpha)
    v_new = p.reset_method(z_new, v_decayed, p.v_reset, p.v_th)
    return z_new, LIFBoxFeedForwardState(v=v_new)


def lif_multistep(
    current: torch.Tensor,
    state: LIFBoxFeedForwardState,
    p: LIFBoxParameters,
    dt: float,
) -> tuple[torch.Tensor, LIFBoxFeedForwardState]:
    """Run :func:`lif_step` over time: ``current`` ``[T, B, ...]`` (the paper's I) -> spikes ``[T, B, ...]``.

    Returns the spikes and the state after the last step.
    """
    spikes = []
    # unbind, not current[t]: one backward node that stacks the T gradients, instead of T
    # SelectBackward nodes that each scatter into a zero [T, B, ...] tensor (O(T^2) traffic).
    for current_t in current.unbind(0):
        z, state = lif_step(current_t, state, p, dt)
        spikes.append(z)
    return torch.stack(spikes), state


class LIF(torch.nn.Module):
    """Multi-step LIF layer: ``[T, B, ...]`` -> spikes ``[T, B, ...]``.

    Holds only constants. The state is an argument and a return value: when none is given,
    a fresh resting state is made for this call, so nothing carries over between calls
    (no ``reset_net``).
    """

    def __init__(self, config: NeuronConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NeuronConfig()
        self.p = self.config.norse_parameters()
        self.dt = float(self.config.dt_s)

    def initial_state(self, current: torch.Tensor) -> LIFBoxFeedForwardState:
        """Resting state (``v = v_leak = 0``) shaped like one time step of ``current`` ``[T, B, ...]``."""
        return LIFBoxFeedForwardState(v=torch.full_like(current[0], self.p.v_leak))

    def forward(
        self, current: torch.Tensor, state: LIFBoxFeedForwardState | None = None
    ) -> tuple[torch.Tensor, LIFBoxFeedForwardState]:
        if state is None:
            state = self.initial_state(current)
        return lif_multistep(current, state, self.p, self.dt)

    def extra_repr(self) -> str:
        c = self.config
        return f"tau_steps={c.tau_steps}, v_th={c.v_th}, surrogate={c.surrogate!r}, alpha={c.resolved_alpha}"
