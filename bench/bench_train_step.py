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

Calls are interleaved (A B, B A, ...) after two warm-ups and summarised by the median. With one
thread (the default) each step is timed in process CPU time, which other processes sharing the
machine do not inflate; ``--threads 0`` uses torch's thread count and wall time. Both variants
run after ``pipeline.runtime.configure_cpu()`` (denormals flushed, glibc keeping large blocks).
"""

from __future__ import annotations

import argparse
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
from models.neurons import rect_surrogate
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
    args = ap.parse_args(argv)
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
    print("\n1) training step, ours (time-folded, Norse LIF) vs plain per-step loop; target ours/plain <= 1.10")
    print(f"{'net':<12}{'HxW':>7}{'T':>3}{'B':>4}{'ours ms':>10}{'plain ms':>10}{'ours sm/s':>11}{'plain sm/s':>11}"
          f"{'ratio':>7}  {'eval |dlogit|':>13}")
    for arch, hw, T, B, C in cases:
        r = bench_plain_vs_ours(arch, hw, T, B, C, args.repeats, clock)
        ratio = r["ours_s"] / r["plain_s"]
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T:>3}{B:>4}{r['ours_s'] * 1e3:>10.1f}{r['plain_s'] * 1e3:>10.1f}"
              f"{B / r['ours_s']:>11.1f}{B / r['plain_s']:>11.1f}{ratio:>7.2f}  {r['eval_max_abs_diff']:>13.2e}"
              f"  {'OK' if ratio <= 1.1 else 'MISS'}")

    print("\n2) TSSD step (T_s student + T_t teacher + weak head) vs baseline step (T_s); target 1.1*(T_s+T_t)/T_s")
    print(f"{'net':<12}{'HxW':>7}{'T_s':>4}{'T_t':>4}{'B':>4}{'base ms':>10}{'tssd ms':>10}{'ratio':>7}{'target':>8}")
    tssd_cases = [  # arch, H=W, T_s, T_t, B, classes
        ("small", 32, 4, 8, 32, 10),
        ("gesture_net", 64, 2, 4, 4, 11),
        ("gesture_net", 64, 4, 8, 2, 11),
    ]
    for arch, hw, T_s, T_t, B, C in tssd_cases:
        r = bench_tssd_vs_baseline(arch, hw, T_s, T_t, B, C, args.repeats, clock)
        ratio = r["tssd_s"] / r["baseline_s"]
        print(f"{arch:<12}{f'{hw}x{hw}':>7}{T_s:>4}{T_t:>4}{B:>4}{r['baseline_s'] * 1e3:>10.1f}{r['tssd_s'] * 1e3:>10.1f}"
              f"{ratio:>7.2f}{r['target']:>8.2f}  {'OK' if ratio <= r['target'] else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
