"""Stage: accuracy of a trained run at several inference T, firing rates, and a synaptic-operation estimate.

    python -m pipeline.evaluate <run dir> [--T 1 2 4 8 16] [--batch-size 64] [--device auto|cpu|cuda] [--split val]

The run's selected model (`pipeline.runs.load_run`: the epoch ``train.select`` chose on validation) is scored on
the test split of the run's event store, rebinned on the fly at each T (`pipeline.data.RebinView`, the run's
binning parameters; no caches are written). T defaults to params.yaml ``evaluate.T`` plus the run's T_s and T_t.
Writes ``<run>/eval.json``, ``<run>/eval.csv`` (one row per T), ``<run>/predictions.csv`` (the predicted class of
every test sample at every T, for the report's paired tests; format in `pipeline.predictions`) and
``<run>/accuracy_vs_T.png``. ``--split val`` scores the validation split instead (for calibration and tuning,
which must never read test): ``val_acc`` columns in ``<run>/eval_val.json``, ``eval_val.csv``,
``predictions_val.csv`` and ``accuracy_vs_T_val.png``.

Synaptic operations (SOPs) are estimated per sample as ``sum over layers of (fraction of non-zero inputs) x
(multiply-accumulates of the layer)`` over all T steps -- each non-zero (spike) input costs one accumulate per
synapse it drives. The first layer sees real-valued frames, so its cost is reported separately as dense MACs.

Image runs (static images, direct encoding; the checkpoint's ``input`` is ``images``) are scored the same way on
their image store's split (`pipeline.image_data`: ``x / 255``, the center crop of ``train.image_augment.out_hw``
if set, the store's mean/std; no augmentation), the image fed at every one of T steps. Their
``predictions.csv`` names each sample by its index in the raw dataset (column ``source_index`` instead of
``recording``). The first conv-BN runs once per sample whatever T (`models.nets.SeqToANN`: its output current is
held for T steps), so ``first_layer_macs_per_sample`` is the MACs of one pass and does not grow with T -- the
work the network does, where an event run's first layer runs at every step; the SOPs after it count all T steps.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import EvaluateConfig, flag_overrides, load_section
from pipeline.data import MultiViewDataset, RebinView
from pipeline.frames import BinConfig, Binning
from pipeline.guards import check_writable, exits_on_error, writing
from pipeline.image_data import direct, eval_input, load_split, normaliser, open_run_image_store, ordered_batches
from pipeline.predictions import FILENAME as PREDICTIONS, Predictions, format_predictions
from pipeline.store import StoreError, atomic_output, open_event_store, write_atomic
from pipeline.runs import CheckpointError, load_run, saved_train_config

__all__ = ["evaluate_run", "main"]


class _OpCounter:
    """Forward hooks on Conv2d/Linear: MACs per call and the fraction of non-zero inputs."""

    def __init__(self, net: nn.Module):
        self.layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.sops = 0.0
        self.first_macs = 0.0
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs, output) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            k = module.in_features
        macs = float(output.numel()) * k
        if module is self.layers[0]:
            self.first_macs += macs
        else:
            self.sops += macs * float((x != 0).float().mean())

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def evaluate_run(net: nn.Module, ckpt: dict, Ts: list[int], batch_size: int = 64, device: str = "cpu",
                 split: str = "test") -> tuple[list[dict], Predictions]:
    """Accuracy (``<split>_acc``), firing rates and SOPs of a run's deployed network (`pipeline.runs.load_run`) on
    ``split`` (test, or val) at each T, and the predicted class of every sample of the split at each T (in the
    split's order: the loader does not shuffle)."""
    if ckpt.get("input") == "images":
        return _evaluate_images(net, ckpt, Ts, batch_size, device, split)
    bin_cfg = BinConfig(**{**ckpt["config"]["bin"], "T": tuple(ckpt["config"]["bin"]["T"])})
    store = open_event_store(ckpt["store_path"])
    if store.store_id != ckpt["store_id"]:  # re-ingested from other raw files since training: not this run's test set
        raise StoreError(f"{ckpt['store_path']}: event store {store.store_id[:12]}… is not the one this run was "
                         f"trained on ({ckpt['store_id'][:12]}…); re-train, or restore that store")
    if split not in store.splits:
        raise StoreError(f"{ckpt['store_path']} has no {split} split (ingested with ingest.val = 0)")
    test = store[split]
    test.preload()  # read once, rebinned at every T (a split over 2 GiB is read sample by sample)
    rows, preds = [], []
    for T in Ts:
        loader = DataLoader(MultiViewDataset({"x": RebinView(test, Binning.from_config(bin_cfg, T))}), batch_size)
        _score(net, ((views["x"].to(device).transpose(0, 1).contiguous(), y) for views, y in loader), T, split,
               rows, preds)
    predictions = Predictions(tuple(Ts), np.arange(len(test), dtype=np.int64), np.asarray(test.recording, np.int64),
                              np.asarray(test.labels, np.int64), np.stack(preds).astype(np.int64))
    return rows, predictions


def _evaluate_images(net: nn.Module, ckpt: dict, Ts: list[int], batch_size: int, device: str, split: str
                     ) -> tuple[list[dict], Predictions]:
    """`evaluate_run` for an image run: the split in memory, direct-encoded at each T."""
    store = open_run_image_store(ckpt["store_path"])
    if store.store_id != ckpt["store_id"]:
        raise StoreError(f"{ckpt['store_path']}: image store {store.store_id[:12]}… is not the one this run was "
                         f"trained on ({ckpt['store_id'][:12]}…); re-train, or restore that store")
    if split not in store.splits:
        raise StoreError(f"{ckpt['store_path']} has no {split} split (ingested without a validation split)")
    data = load_split(store, split)
    norm = normaliser(store, device)
    augment = saved_train_config(ckpt["config"]["train"]).image_augment  # its out_hw: the center crop
    rows, preds = [], []
    for T in Ts:
        _score(net, ((direct(eval_input(images, norm, augment), T), y)
                     for images, _, y in ordered_batches(data, batch_size, torch.device(device))), T, split, rows, preds)
    predictions = Predictions(tuple(Ts), np.arange(len(data), dtype=np.int64), data.source_index,
                              data.labels.numpy().astype(np.int64), np.stack(preds).astype(np.int64),
                              sample_id="source_index")
    return rows, predictions


def _score(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], T: int, split: str,
           rows: list[dict], preds: list[np.ndarray]) -> None:
    """Run ``net`` over ``batches`` of (input ``[T, B, ...]``, labels ``[B]``) at one T: append its eval.json row
    to ``rows`` and the predicted class of every sample (argmax of the time-averaged logits) to ``preds``."""
    counter = _OpCounter(net)
    correct, n, rates, pred = 0, 0, {}, []
    for x, y in batches:
        out = net(x, record_rates=True)
        pred.append(out.logits.mean(0).argmax(1).cpu())
        correct += int((pred[-1] == y.cpu()).sum())
        for k, v in out.rates.items():
            rates[k] = rates.get(k, 0.0) + v * len(y)
        n += len(y)
    counter.close()
    preds.append(torch.cat(pred).numpy() if pred else np.zeros(0, np.int64))
    rows.append(_row(T, split, correct, n, counter, rates))


def _row(T: int, split: str, correct: int, n: int, counter: _OpCounter, rates: dict[str, float]) -> dict:
    """One T's row of eval.json (and its printed line)."""
    row = {"T": T, f"{split}_acc": correct / max(n, 1), "sops_per_sample": counter.sops / max(n, 1),
           "first_layer_macs_per_sample": counter.first_macs / max(n, 1),
           "mean_rate": sum(rates.values()) / max(len(rates), 1) / max(n, 1),
           "rates": {k: v / max(n, 1) for k, v in rates.items()}}
    print(f"T={T:>3}: {split} acc {row[f'{split}_acc']:.4f}, SOPs/sample {row['sops_per_sample']:.3g}, "
          f"mean firing rate {row['mean_rate']:.4f}")
    return row


def _plot(rows: list[dict], title: str, out: Path, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([r["T"] for r in rows], [100 * r[f"{split}_acc"] for r in rows], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("inference timesteps T")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_output(out) as tmp:  # a full disk leaves no half-written image
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


@exits_on_error(codes={CheckpointError: 2}, notes={StoreError: "nothing was written."})
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--T", type=int, nargs="+", help="inference timesteps (default: evaluate.T + the run's T_s, T_t)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="val: score the validation split (eval_val.*), for tuning that must not read test")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-progress", action="store_true", help="accepted for symmetry with the other stages")
    args = ap.parse_args(argv)
    # --T is not evaluate.T: it replaces the whole list (the run's T_s and T_t are not added to it)
    cfg = load_section("evaluate", EvaluateConfig, args.params,
                       args.overrides + flag_overrides("evaluate", batch_size=args.batch_size))
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    net, ckpt = load_run(args.run_dir, device)  # a CheckpointError: the run is refused before work (exit 2)
    run_cfg = saved_train_config(ckpt["config"]["train"])
    Ts = args.T or sorted(set(cfg.T) | {run_cfg.T_s, run_cfg.teacher_T})
    sfx = "" if args.split == "test" else f"_{args.split}"
    names = f"eval{sfx}.json, eval{sfx}.csv, {_suffixed(PREDICTIONS, sfx)}, accuracy_vs_T{sfx}.png"
    check_writable(args.run_dir, f"evaluation ({names})")  # before minutes of work
    rows, predictions = evaluate_run(net, ckpt, Ts, cfg.batch_size, device, args.split)
    _write_outputs(rows, predictions, args.run_dir, args.split)
    print(f"wrote {names} in {args.run_dir}")
    return 0


def _suffixed(name: str, sfx: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}{sfx}{dot}{ext}"


def _write_outputs(rows: list[dict], predictions: Predictions, run_dir: Path, split: str = "test") -> None:
    """predictions.csv, eval.json, eval.csv and the plot (``*_val`` names for the val split), each atomically; a
    full disk is a DiskFullError naming the file. The predictions go first: a run whose eval.json exists has its
    predictions too."""
    sfx = "" if split == "test" else f"_{split}"
    text = format_predictions(predictions)
    with writing("per-sample predictions", run_dir / _suffixed(PREDICTIONS, sfx), len(text)):
        write_atomic(run_dir / _suffixed(PREDICTIONS, sfx), text)
    text = json.dumps(rows, indent=2) + "\n"
    with writing("evaluation", run_dir / f"eval{sfx}.json", len(text)):
        write_atomic(run_dir / f"eval{sfx}.json", text)
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["T", f"{split}_acc", "sops_per_sample", "first_layer_macs_per_sample", "mean_rate"])
    w.writeheader()
    w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
    with writing("evaluation table", run_dir / f"eval{sfx}.csv", len(buf.getvalue())):
        write_atomic(run_dir / f"eval{sfx}.csv", buf.getvalue())
    with writing("accuracy plot", run_dir / f"accuracy_vs_T{sfx}.png"):
        _plot(rows, f"{run_dir.parent.name} / {run_dir.name}{sfx}", run_dir / f"accuracy_vs_T{sfx}.png", split)


if __name__ == "__main__":
    sys.exit(main())
