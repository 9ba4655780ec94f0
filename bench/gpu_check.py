"""The parts of bench/gpu_check.sh: CUDA training steps per recipe, a DDP smoke step, SpikingJelly's CUDA LIF, one table.

    python bench/gpu_check.py steps  --out results.jsonl [--archs small,gesture_net,vggsnn] [--batch-scale 1.0]
                                     [--steps 5] [--no-compile] [--budget-s 300] [--device cuda]
    torchrun --standalone --nproc_per_node=1 bench/gpu_check.py ddp --out results.jsonl
    python bench/gpu_check.py lif    --out results.jsonl
    python bench/gpu_check.py table  results.jsonl

``steps``: the TSSD training step as ``pipeline.train`` runs it on CUDA (student at T_s + teacher at T_t + weak head,
AMP autocast bf16, channels_last, the recipe's optimizer and batch size), eager and ``torch.compile``d in place
(``train.compile: true``): median ms per step over ``--steps`` after 2 warm-up steps (the first compiles), samples/s,
and the peak CUDA memory of the timed steps (``torch.cuda.max_memory_allocated``). A CUDA out-of-memory error is a
row saying so. Rows past ``--budget-s`` are skipped, so the whole check stays under its time limit.
``ddp``: under torchrun, one NCCL process group and ``DistributedDataParallel`` around the same ``Pair`` module
``pipeline.train`` wraps; three TSSD steps; the gradients must equal those of the bare module on the same batch.
(``pipeline.train`` itself only joins a process group when WORLD_SIZE > 1.)
``lif``: our LIF layer vs SpikingJelly 2.0's multi-step ``LIFNode`` on CUDA tensors (2.0 has no ``backend=``
argument and no CuPy path: it picks its own CUDA kernels), forward+backward on the recipes' first-layer shapes.
``--device cpu`` runs ``steps`` on the CPU (tests use it with a tiny batch: same code path, no CUDA).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.losses import tssd_loss  # noqa: E402
from models.nets import build_model  # noqa: E402
from models.neurons import LIF  # noqa: E402

#: arch -> (H = W, T_s, T_t, classes, batch size, optimizer) of params.yaml's recipes (digits_dvs: `small`).
RECIPES = {"small": (32, 2, 4, 10, 32, "sgd"), "gesture_net": (64, 16, 32, 11, 16, "adamw"),
           "vggsnn": (48, 10, 20, 10, 64, "sgd"), "vgg9": (48, 5, 10, 10, 64, "sgd")}  # vgg9: tssd_vgg9


def _emit(out: Path, row: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _model(arch: str, device: torch.device):
    hw, T_s, _, C, _, _ = RECIPES[arch]
    torch.manual_seed(0)
    net = build_model(arch, in_channels=2, n_classes=C, input_hw=(hw, hw), t_ref=T_s).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def _batch(arch: str, B: int, device: torch.device):
    hw, T_s, T_t, C, _, _ = RECIPES[arch]
    g = torch.Generator().manual_seed(1)
    x_s = torch.poisson(torch.full((T_s, B, 2, hw, hw), 0.4), generator=g).to(device)
    x_t = torch.poisson(torch.full((T_t, B, 2, hw, hw), 0.2), generator=g).to(device)
    return x_s, x_t, torch.randint(0, C, (B,), generator=g).to(device)


def _step_fn(module, net, opt, batch, device):
    x_s, x_t, y = batch

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            out_s, out_t = module(x_s, x_t)
            loss, _ = tssd_loss(out_s, y, teacher=out_t, method="tssd")
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


class _Pair(torch.nn.Module):
    """``pipeline.train.Pair`` (student and teacher in one forward), restated: bench/ does not import stages."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_s, x_t):
        return self.net(x_s), self.net(x_t)


def cmd_steps(args) -> int:
    device = torch.device(args.device)
    t_start = time.perf_counter()
    for arch in args.archs.split(","):
        hw, T_s, T_t, _, B0, optim = RECIPES[arch]
        B = max(1, int(round(B0 * args.batch_scale)))
        for compiled in ((False,) if args.no_compile else (False, True)):
            row = {"check": "train step", "arch": arch, "T_s": T_s, "T_t": T_t, "B": B, "hw": hw,
                   "compile": compiled, "device": str(device), "amp": "bf16" if device.type == "cuda" else "off"}
            if time.perf_counter() - t_start > args.budget_s:
                _emit(args.out, {**row, "status": f"skipped (past the {args.budget_s:.0f} s budget)"})
                continue
            try:
                torch._dynamo.reset()
                net = _model(arch, device)
                if compiled:
                    net.compile(dynamic=False)  # as train.compile does
                opt = (torch.optim.AdamW(net.parameters(), lr=1e-3) if optim == "adamw"
                       else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
                step = _step_fn(_Pair(net), net, opt, _batch(arch, B, device), device)
                t0 = time.perf_counter()
                step()
                step()
                _sync(device)
                warm = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times, loss = [], float("nan")
                for _ in range(args.steps):
                    _sync(device)
                    t0 = time.perf_counter()
                    loss = step()
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                ms = statistics.median(times) * 1e3
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                _emit(args.out, {**row, "status": "ok" if loss == loss else "loss is NaN", "ms_per_step": ms,
                                 "samples_per_s": B / ms * 1e3, "peak_gib": peak, "warmup_s": warm})
            except torch.OutOfMemoryError:
                _emit(args.out, {**row, "status": "CUDA out of memory (lower --batch-scale)"})
            finally:
                net = opt = step = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


def cmd_ddp(args) -> int:
    import torch.distributed as dist

    if "LOCAL_RANK" not in os.environ:
        print("ddp: run me under torchrun", file=sys.stderr)
        return 2
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    arch = "small"
    net = _model(arch, device)
    ref = copy.deepcopy(net)
    ddp = torch.nn.parallel.DistributedDataParallel(_Pair(net), device_ids=[device.index] if device.index is not None
                                                    else None)
    batch = _batch(arch, 8, device)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weights stay equal to ref's
    losses = [_step_fn(ddp, net, opt, batch, device)() for _ in range(3)]
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.0)
    _step_fn(_Pair(ref), ref, ref_opt, batch, device)()
    diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(net.parameters(), ref.parameters()))
    ok = all(v == v for v in losses) and diff < 1e-2
    if dist.get_rank() == 0:
        _emit(args.out, {"check": "torchrun DDP", "arch": arch, "backend": backend, "world": dist.get_world_size(),
                         "status": "ok" if ok else "MISMATCH", "grad_max_abs_diff": diff, "loss": losses[-1]})
    dist.destroy_process_group()
    return 0 if ok else 1


def cmd_lif(args) -> int:
    device = torch.device(args.device)
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
    except ImportError as err:
        _emit(args.out, {"check": "SpikingJelly LIF", "status": f"skipped: spikingjelly not importable ({err})"})
        return 0
    for arch in ("small", "gesture_net", "vggsnn"):
        hw, T_s, _, _, B, _ = RECIPES[arch]
        c1 = {"small": 16, "gesture_net": 128, "vggsnn": 64}[arch]
        shape = (T_s, B, c1, hw, hw)
        x0 = (torch.randn(shape, device=device) * 0.8 + 0.6)
        ours = LIF()
        sj = neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None,
                            surrogate_function=surrogate.Rect(), step_mode="m")
        res = {}
        for name, fn in (("ours", lambda x: ours(x)[0]), ("spikingjelly", lambda x: (functional.reset_net(sj), sj(x))[1])):
            times = []
            for i in range(7):
                x = x0.detach().requires_grad_(True)
                _sync(device)
                t0 = time.perf_counter()
                fn(x).sum().backward()
                _sync(device)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            res[name] = statistics.median(times) * 1e3
        with torch.no_grad():
            functional.reset_net(sj)
            same = bool((sj(x0) == ours(x0)[0]).all())
        _emit(args.out, {"check": "LIF layer fwd+bwd", "arch": arch, "shape": list(shape), "device": str(device),
                         "ours_ms": res["ours"], "spikingjelly_ms": res["spikingjelly"],
                         "status": "ok" if same else "spikes differ"})
    return 0


def cmd_table(args) -> int:
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    print(f"\n{'check':<20}{'arch':<13}{'T_s/T_t':>8}{'B':>4}{'compile':>8}{'ms/step':>9}{'samples/s':>10}"
          f"{'peak GiB':>9}{'warm-up s':>10}  status")
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
        if r["check"] == "train step":
            print(f"{'train step ' + r['amp']:<20}{r['arch']:<13}{str(r['T_s']) + '/' + str(r['T_t']):>8}{r['B']:>4}"
                  f"{'yes' if r['compile'] else 'no':>8}{f('ms_per_step', '.1f'):>9}{f('samples_per_s', '.1f'):>10}"
                  f"{f('peak_gib', '.2f'):>9}{f('warmup_s', '.1f'):>10}  {r['status']}")
        elif r["check"] == "LIF layer fwd+bwd":
            print(f"{'LIF ours / SJ 2.0':<20}{r['arch']:<13}{str(r['shape'][0]):>8}{r['shape'][1]:>4}{'':>8}"
                  f"{f('ours_ms', '.2f'):>9}{f('spikingjelly_ms', '.2f'):>10}{'':>9}{'':>10}  {r['status']} "
                  f"(ms: ours, SpikingJelly)")
        else:
            print(f"{r['check']:<20}{r.get('arch', ''):<13}{'':>8}{'':>4}{'':>8}{'':>9}{'':>10}{'':>9}{'':>10}  "
                  f"{r['status']}" + (f" ({r['backend']}, world {r['world']}, grad diff {r['grad_max_abs_diff']:.1e})"
                                      if "backend" in r else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("steps", "ddp", "lif"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True, help="results file (JSON lines, appended)")
        p.add_argument("--device", default="cuda")
        if name == "steps":
            p.add_argument("--archs", default="small,gesture_net,vggsnn")
            p.add_argument("--batch-scale", type=float, default=1.0, help="x the recipe batch size")
            p.add_argument("--steps", type=int, default=5)
            p.add_argument("--no-compile", action="store_true")
            p.add_argument("--budget-s", type=float, default=300.0)
    p = sub.add_parser("table")
    p.add_argument("results", type=Path)
    args = ap.parse_args(argv)
    return {"steps": cmd_steps, "ddp": cmd_ddp, "lif": cmd_lif, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
