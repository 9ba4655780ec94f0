"""Training-step benchmark: our time-folded Norse nets vs a plain per-step PyTorch loop, and TSSD's cost.

    .venv/bin/python bench/bench_train_step.py [--repeats N] [--threads N]    (or: make bench)

1. Throughput (samples/s) of one SGD training step (forward, CE, backward, update) of
   * ours:  ``models.build_model`` -- conv/BN/pool/linear once over ``T*B`` (``flatten(0, 1)``),
            Norse box-LIF (jump form) looping over T;
   * plain: the same modules and weights driven the way SpikingJelly's single-step mode with
            the torch backend runs a net: ``for t in range(T)`` every layer on ``[B, ...]``, and
            a hand-written LIF (``v = v*(1-1/tau) + x; s = rect(v - th); v = v - s*th``) with
            the same rectangular surrogate.
   Target: time(ours) / time(plain) <= 1.1. (In train mode BN statistics differ -- per step
   over B vs over T*B -- so only eval-mode logits are compared for parity.)
2. TSSD step (student T_s + teacher T_t forwards, weak head, full loss) / baseline step (T_s,
   no heads, CE). Target <= 1.1 * (T_s + T_t) / T_s.

3. ``--sections compile``: eager vs ``torch.compile``d (inductor, the model compiled in place as
   ``train.compile: true`` does) forward+backward+SGD step for ``small``, ``gesture_net`` and ``vggsnn`` at their
   recipes' T_s and input size, small batches; the first (compiling) call is timed separately.
4. ``lif``: our LIF layer (eager and compiled) vs SpikingJelly 2.0's multi-step ``LIFNode`` (torch backend,
   ``decay_input=False, v_reset=None``: the same soft-reset neuron; spikes checked equal), forward+backward, on
   the first LIF layer's shape of each recipe and on a Linear+LIF-sized layer (the open-neuromorphic benchmark's).
5. ``memory``: BPTT activation memory per sample at T_s and T_t of each recipe: the bytes autograd saves for
   backward (``torch.autograd.graph.saved_tensors_hooks``, distinct storages, parameters excluded) in one training
   forward -- what a training step holds at its peak besides weights, gradients and optimizer state, on any device
   (fp32; bf16 autocast halves most of it). The TSSD step holds the student's and the teacher's graphs together.
Sections run by default: plain, tssd, lif, memory (``make bench``); ``--sections all`` adds compile (minutes).

Calls are interleaved (A B, B A, ...) after two warm-ups and summarised by the median. With one
thread (the default) each step is timed in process CPU time, which other processes sharing the
machine do not inflate; ``--threads 0`` uses torch's thread count and wall time. Both variants
run after ``pipeline.runtime.configure_cpu()`` (denormals flushed, glibc keeping large blocks).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# Submodules, not the package: run as a file, `models` may resolve to the editable install's
# namespace stub, which does not execute models/__init__.py.
from models.losses import task_loss, tssd_loss
from models.nets import LinearHead, SpikingMLPHead, SpikingNet, build_model
from models.neurons import LIF, rect_surrogate
from pipeline.runtime import configure_cpu


# ------------------------------------------------------------------------ plain per-step reference


class PlainStepNet(nn.Module):
    """Runs a :class:`SpikingNet`'s own modules step by step (shared weights), SpikingJelly-style."""

    def __init__(self, net: SpikingNet) -> None:
        super().__init__()
        self.net = net
        cfg = next(m for m in net.modules() if hasattr(m, "config")).config
        self.decay = 1.0 - 1.0 / cfg.tau_steps
        self.v_th = cfg.v_th
        self.width = cfg.resolved_alpha

    def lif(self, x: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        v = x if v is None else v * self.decay + x  # neuronal_charge (decay_input=False, v_reset=None)
        s = rect_surrogate(v - self.v_th, self.width)  # neuronal_fire
        return s, v - s * self.v_th  # soft reset

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        net = self.net
        n_lif = sum(len(stage.blocks) for stage in net.stages.values()) + 1
        v: list[torch.Tensor | None] = [None] * n_lif
        head = net.head
        masks: list[torch.Tensor | None] = [None, None]
        outs = []
        for t in range(x_seq.shape[0]):
            x, k = x_seq[t], 0
            for stage in net.stages.values():
                for block in stage.blocks:
                    conv, bn = block.ann.layers
                    x, v[k] = self.lif(bn(conv(x)), v[k])
                    k += 1
                x = stage.pool.layers(x)
            x = x.flatten(1)
            if isinstance(head, LinearHead):
                x = head.fc(x)
            elif isinstance(head, SpikingMLPHead):
                x = self._dropout(x, head.drop_in.p, masks, 0)
                x, v[k] = self.lif(head.fc1(x), v[k])
                x = head.fc2(self._dropout(x, head.drop_hidden.p, masks, 1))
            else:
                raise TypeError(f"no plain version of head {type(head).__name__}")
            outs.append(x)
        return torch.stack(outs)

    def _dropout(self, x: torch.Tensor, p: float, masks: list[torch.Tensor | None], i: int) -> torch.Tensor:
        if not self.training or p == 0.0:
            return x
        if masks[i] is None:  # one mask per sequence, like SpikingJelly's MultiStepDropout
            masks[i] = torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
        return x * masks[i]


# ------------------------------------------------------------------------ timing


def time_steps(steps: dict[str, Callable[[], None]], repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds per call of each step function, calls interleaved; 2 warm-up calls each."""
    for fn in steps.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps.items())
    for _ in range(repeats):
        order.reverse()  # alternate who goes first: A B, B A, ...
        for name, fn in order:
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def sgd_step(model: nn.Module, forward: Callable[[], torch.Tensor | tuple[torch.Tensor, dict]]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = forward()
        if isinstance(loss, tuple):
            loss = loss[0]
        loss.backward()
        opt.step()

    return step


def bench_plain_vs_ours(
    arch: str, hw: int, T: int, B: int, n_classes: int, repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=2, n_classes=n_classes, input_hw=(hw, hw), weak_stages=())
    plain = PlainStepNet(model)
    x = (torch.rand(T, B, 2, hw, hw) < 0.2).float()
    y = torch.randint(0, n_classes, (B,))

    model.eval()
    with torch.no_grad():
        diff = (model(x).logits - plain(x)).abs().max().item()
    assert diff < 1e-4, f"{arch}: our model and the plain per-step loop disagree by {diff}"
    model.train()
    ours_step = sgd_step(model, lambda: task_loss(model(x).logits, y))
    plain_step = sgd_step(model, lambda: task_loss(plain(x), y))
    t = time_steps({"ours": ours_step, "plain": plain_step}, repeats, clock)
    return {"ours_s": t["ours"], "plain_s": t["plain"], "eval_max_abs_diff": diff, "B": B}


def bench_tssd_vs_baseline(
    arch: str, hw: int, T_s: int, T_t: int, B: int, n_classes: int, repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    torch.manual_seed(0)
    kw = dict(in_channels=2, n_classes=n_classes, input_hw=(hw, hw))
    base = build_model(arch, **kw, weak_stages=())
    tssd = build_model(arch, **kw, weak_stages=None)
    x_t = (torch.rand(T_t, B, 2, hw, hw) < 0.2).float()
    x_s = (torch.rand(T_s, B, 2, hw, hw) < 0.2).float()
    y = torch.randint(0, n_classes, (B,))
    base_step = sgd_step(base, lambda: task_loss(base(x_s).logits, y))
    tssd_step = sgd_step(tssd, lambda: tssd_loss(tssd(x_s), y, teacher=tssd(x_t), method="tssd"))
    t = time_steps({"baseline": base_step, "tssd": tssd_step}, repeats, clock)
    return {"baseline_s": t["baseline"], "tssd_s": t["tssd"], "target": 1.1 * (T_s + T_t) / T_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median reported)")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (0: torch's default). With 1 (default) steps are timed in process CPU time, which "
        "other processes on a shared machine do not inflate; otherwise in wall time.",
    )
    ap.add_argument("--sections", default="plain,tssd,lif,memory",
                    help=f"comma-separated, from {','.join(SECTIONS)}, or 'all' (compile takes minutes)")
    args = ap.parse_args(argv)
    sections = SECTIONS if args.sections == "all" else tuple(args.sections.split(","))
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {SECTIONS} or all")
    if args.threads:
        torch.set_num_threads(args.threads)
    single = torch.get_num_threads() == 1
    clock = time.process_time if single else time.perf_counter
    cpu = configure_cpu()
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {cpu}")
    print(f"1-min load average {load}; times are medians of {'process CPU' if single else 'wall'} time per step")

    cases = [  # arch, H=W, T, B, classes
        ("small", 32, 8, 32, 10),
        ("gesture_net", 64, 4, 4, 11),
    ]
    if "plain" in sections:
        _section_plain(cases, args.repeats, clock)
    if "tssd" in sections:
        _section_tssd(args.repeats, clock)
    if "compile" in sections:
        _section_compile(args.repeats, clock)
    if "lif" in sections:
        _section_lif(args.repeats, clock)
    if "memory" in sections:
        _section_memory()
    return 0


def _section_plain(cases: list, repeats: int, clock: Callable[[], float]) -> None:
    print("\n1) training step, ours (time-folded, Norse LIF) vs plain per-step loop; target ours/plain <= 1.10")
    print(f"{'net':<12}{'HxW':>7}{'T':>3}{'B':>4}{'ours ms':>10}{'plain ms':>10}{'ours sm/s':>11}{'plain sm/s':>11}"
          f"{'ratio':>7}  {'eval |dlogit|':>13}")
    for arch, hw, T, B, C in cases:
        r = bench_plain_vs_ours(arch, hw, T, B, C, repeats, clock)
        ratio = r["ours_s"] / r["plain_s"]
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T:>3}{B:>4}{r['ours_s'] * 1e3:>10.1f}{r['plain_s'] * 1e3:>10.1f}"
              f"{B / r['ours_s']:>11.1f}{B / r['plain_s']:>11.1f}{ratio:>7.2f}  {r['eval_max_abs_diff']:>13.2e}"
              f"  {'OK' if ratio <= 1.1 else 'MISS'}")


def _section_tssd(repeats: int, clock: Callable[[], float]) -> None:
    print("\n2) TSSD step (T_s student + T_t teacher + weak head) vs baseline step (T_s); target 1.1*(T_s+T_t)/T_s")
    print(f"{'net':<12}{'HxW':>7}{'T_s':>4}{'T_t':>4}{'B':>4}{'base ms':>10}{'tssd ms':>10}{'ratio':>7}{'target':>8}")
    tssd_cases = [  # arch, H=W, T_s, T_t, B, classes
        ("small", 32, 4, 8, 32, 10),
        ("gesture_net", 64, 2, 4, 4, 11),
        ("gesture_net", 64, 4, 8, 2, 11),
    ]
    for arch, hw, T_s, T_t, B, C in tssd_cases:
        r = bench_tssd_vs_baseline(arch, hw, T_s, T_t, B, C, repeats, clock)
        ratio = r["tssd_s"] / r["baseline_s"]
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T_s:>4}{T_t:>4}{B:>4}{r['baseline_s'] * 1e3:>10.1f}{r['tssd_s'] * 1e3:>10.1f}"
              f"{ratio:>7.2f}{r['target']:>8.2f}  {'OK' if ratio <= r['target'] else 'MISS'}")


# ------------------------------------------------------------------------ compile, LIF layer, memory

SECTIONS = ("plain", "tssd", "compile", "lif", "memory")

#: The recipes' networks: arch -> (H = W, T_s, T_t, classes) (params.yaml recipes:; digits_dvs uses `small`).
RECIPES = {"small": (32, 2, 4, 10), "gesture_net": (64, 16, 32, 11), "vggsnn": (48, 10, 20, 10)}


def _frames(T: int, B: int, hw: int) -> torch.Tensor:
    return torch.poisson(torch.full((T, B, 2, hw, hw), 0.4))


def bench_compile(arch: str, B: int, repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Eager vs compiled (in place, as train.compile does) baseline step at the recipe's T_s; weights shared at start."""
    hw, T, _, C = RECIPES[arch]
    torch._dynamo.reset()  # each net compiled from scratch, as in its own training process
    torch.manual_seed(0)
    eager = build_model(arch, in_channels=2, n_classes=C, input_hw=(hw, hw), weak_stages=(), t_ref=T)
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=False)
    x, y = _frames(T, B, hw), torch.randint(0, C, (B,))
    steps = {"eager": sgd_step(eager, lambda: task_loss(eager(x).logits, y)),
             "compiled": sgd_step(compiled, lambda: task_loss(compiled(x).logits, y))}
    t0 = time.perf_counter()
    steps["compiled"]()  # compiles forward and backward
    first = time.perf_counter() - t0
    t = time_steps(steps, repeats, clock)
    return {"eager_s": t["eager"], "compiled_s": t["compiled"], "compile_wall_s": first}


def _section_compile(repeats: int, clock: Callable[[], float]) -> None:
    print("\n3) eager vs torch.compile (inductor) training step at the recipe's T_s; ratio = compiled / eager")
    print(f"{'net':<12}{'HxW':>7}{'T_s':>4}{'B':>3}{'eager ms':>10}{'compiled ms':>12}{'ratio':>7}{'compile s':>11}")
    for arch, B in (("small", 8), ("gesture_net", 1), ("vggsnn", 1)):
        hw, T, _, _ = RECIPES[arch]
        r = bench_compile(arch, B, max(3, repeats // 2), clock)
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T:>4}{B:>3}{r['eager_s'] * 1e3:>10.1f}{r['compiled_s'] * 1e3:>12.1f}"
              f"{r['compiled_s'] / r['eager_s']:>7.2f}{r['compile_wall_s']:>11.1f}", flush=True)


def _spikingjelly_lif():
    """SpikingJelly 2.0's multi-step LIF configured as our neuron (None if not installed). 2.0 has no ``backend=``:
    it runs its torch reference on CPU tensors and picks its own CUDA kernels for CUDA tensors."""
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
    except ImportError:
        return None, None
    node = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None,
                          surrogate_function=surrogate.Rect(), step_mode="m")
    return node, functional.reset_net


def bench_lif(shape: tuple[int, ...], repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Forward+backward of one LIF layer on ``shape`` = [T, B, ...]: ours eager, ours compiled, SpikingJelly torch."""
    x0 = torch.randn(shape) * 0.8 + 0.6
    ours = LIF()
    ours_c = torch.compile(ours)
    sj, reset_net = _spikingjelly_lif()

    def fb(layer: Callable[[torch.Tensor], torch.Tensor], reset: Callable[[], None] = lambda: None):
        def step() -> None:
            reset()
            x = x0.detach().requires_grad_(True)
            layer(x).sum().backward()
        return step

    steps = {"ours": fb(lambda x: ours(x)[0]), "ours_compiled": fb(lambda x: ours_c(x)[0])}
    diff = float("nan")
    if sj is not None:
        steps["spikingjelly"] = fb(sj, lambda: reset_net(sj))
        with torch.no_grad():
            reset_net(sj)
            diff = (sj(x0) - ours(x0)[0]).abs().max().item()
        assert diff == 0.0, f"SpikingJelly's LIF and ours disagree on {shape}: {diff}"
    t = time_steps(steps, repeats, clock)
    return {**t, "spike_diff": diff}


def _section_lif(repeats: int, clock: Callable[[], float]) -> None:
    print("\n4) one LIF layer, forward+backward: ours (eager, compiled) vs SpikingJelly 2.0 LIFNode (torch backend)")
    print(f"{'layer':<28}{'shape [T,B,...]':<24}{'ours ms':>9}{'compiled':>10}{'SJ torch':>10}{'SJ/ours':>9}")
    shapes = [("small stage1 (T_s)", (2, 32, 16, 32, 32)), ("gesture_net stage1 (T_s)", (16, 2, 128, 64, 64)),
              ("vggsnn stage1 (T_s)", (10, 2, 64, 48, 48)), ("Linear+LIF 4k, T=100", (100, 16, 4096))]
    for name, shape in shapes:
        r = bench_lif(shape, repeats, clock)
        sj = r.get("spikingjelly", float("nan"))
        print(f"{name:<28}{str(list(shape)):<24}{r['ours'] * 1e3:>9.1f}{r['ours_compiled'] * 1e3:>10.1f}"
              f"{sj * 1e3:>10.1f}{sj / r['ours']:>9.2f}", flush=True)


def saved_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward of ``net`` on ``x`` (distinct storages, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(seen.values())


def _section_memory() -> None:
    print("\n5) BPTT activation memory per sample (saved for backward, fp32, train mode; weights/grads/optimizer "
          "not included)")
    print(f"{'net':<12}{'HxW':>7}{'T_s':>4}{'T_t':>4}{'MiB @T_s':>10}{'MiB @T_t':>10}{'TSSD step MiB':>15}"
          f"{'params MiB':>12}")
    for arch, (hw, T_s, T_t, C) in RECIPES.items():
        torch.manual_seed(0)
        net = build_model(arch, in_channels=2, n_classes=C, input_hw=(hw, hw), t_ref=T_s).train()
        m_s = saved_bytes(net, _frames(T_s, 1, hw)) / 2**20
        m_t = saved_bytes(net, _frames(T_t, 1, hw)) / 2**20
        p = sum(q.numel() * 4 for q in net.parameters()) / 2**20
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T_s:>4}{T_t:>4}{m_s:>10.1f}{m_t:>10.1f}{m_s + m_t:>15.1f}{p:>12.1f}",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
