"""Run an exported NIR graph in other frameworks (tests and bench/nir_roundtrip.py only; never from pipeline/ or models/).

Each ``import_*`` returns a callable ``frames [T, B, P, H, W] -> logits [T, B, C]`` that runs the imported module
one sample at a time without a batch axis (NIR's shapes have none; the importers map NIR's ``Flatten(start_dim=0)``
to ``torch.nn.Flatten(0)``) and with a fresh state per sample.

* Norse 1.1.0 ``from_nir``: LIF nodes become ``LIFBoxCell`` with Norse's default reset-to-value (its ``reset_method``
  argument reaches only CubaLIF nodes); ``soft=True`` switches the cells to ``reset_subtract``, our neuron.
* snnTorch 1.0.0 ``import_from_nir``: LIF nodes become ``Leaky(reset_mechanism="zero", reset_delay=False)`` with
  ``dt = 1e-4`` hard-coded, ``R dt / tau`` folded into the threshold.
* ``li_threshold`` graphs: ``nirtorch.nir_to_torch`` (NIR's reference interpreter, cycles carry the previous step)
  with Norse's own mappings for the standard nodes, Norse's ``LIBoxCell`` for ``LI``, and Threshold/Scale as the
  one-liners NIR defines (nirtorch 2.6's default Affine mapping drops the bias, so it is not used).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch

Runner = Callable[[torch.Tensor], torch.Tensor]


def _run(module: torch.nn.Module, fresh_state: Callable[[], object], before_sample: Callable[[], None]) -> Runner:
    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        out = []
        for b in range(x.shape[1]):
            before_sample()
            state = fresh_state()
            steps = []
            for t in range(x.shape[0]):
                y, state = module(x[t, b], state)
                steps.append(y)
            out.append(torch.stack(steps))
        return torch.stack(out, 1)

    return run


def import_norse(graph, *, dt_s: float, soft: bool) -> Runner:
    from norse.torch.functional.reset import reset_subtract
    from norse.torch.module.lif_box import LIFBoxCell
    from norse.torch.utils.import_nir import from_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch.load's deprecation notice
        module = from_nir(copy.deepcopy(graph), dt=dt_s)
    if soft:
        for m in module.modules():
            if isinstance(m, LIFBoxCell):
                m.p = m.p._replace(reset_method=reset_subtract)
    return _run(module, lambda: None, lambda: None)


def import_snntorch(graph) -> Runner:
    import contextlib
    import io

    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a warning per layer about its threshold scaling
        module = import_from_nir(copy.deepcopy(graph))
    leaky = [m for m in module.modules() if type(m).__name__ == "Leaky"]

    def reset() -> None:
        for m in leaky:
            m.reset_mem()

    return _run(module, lambda: {n: None for n, _ in module.named_children()}, reset)


class _Threshold(torch.nn.Module):
    def __init__(self, threshold: np.ndarray):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).float()  # NIR's Threshold: 1 where v > v_thr


class _Scale(torch.nn.Module):
    def __init__(self, scale: np.ndarray):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def import_nirtorch_li_threshold(graph, *, dt_s: float) -> Runner:
    import nir
    import nirtorch
    from norse.torch.functional.leaky_integrator_box import LIBoxParameters
    from norse.torch.module.leaky_integrator_box import LIBoxCell
    from norse.torch.utils.import_nir import _import_norse_module

    logging.getLogger().setLevel(logging.ERROR)
    norse_node = lambda n: _import_norse_module(n, dt=dt_s)  # noqa: E731
    node_map = {
        nir.Affine: norse_node, nir.Linear: norse_node, nir.Conv2d: norse_node, nir.Flatten: norse_node,
        nir.SumPool2d: norse_node,
        nir.LI: lambda n: LIBoxCell(LIBoxParameters(tau_mem_inv=torch.as_tensor(1.0 / n.tau, dtype=torch.float32),
                                                    v_leak=torch.as_tensor(n.v_leak, dtype=torch.float32)), dt=dt_s),
        nir.Threshold: lambda n: _Threshold(n.threshold),
        nir.Scale: lambda n: _Scale(n.scale),
    }
    module = nirtorch.nir_to_torch(copy.deepcopy(graph), node_map)
    # a fresh state dict per sample: with state=None the generated code reuses (and mutates) one default dict
    return _run(module, lambda: {n: None for n, _ in module.named_children()}, lambda: None)
