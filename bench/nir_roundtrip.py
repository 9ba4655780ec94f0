"""NIR round trip of a trained run on its test split: our net vs the exported graph run in Norse, snnTorch, nirtorch.

    python bench/nir_roundtrip.py <run dir> [--store PATH] [--limit N]

Exports the run's deployed student (``models.nir_export.to_nir``, at T_s), writes and re-reads it with ``nir``, and
runs the test split (rebinned at T_s from the run's event store, as ``pipeline.evaluate`` does) through
* ours (soft reset) and ours with a hard reset (what NIR's ``LIF`` node means),
* Norse ``from_nir`` with its LIF cells switched to ``reset_subtract``, and as imported (hard reset),
* snnTorch ``import_from_nir`` as imported (hard reset),
* the exact ``li_threshold`` graph in nirtorch's interpreter.
Prints test accuracy, prediction agreement with ours and the max |logit difference| for each. Not run by
``make bench`` (it needs a trained run). Uses the importers in tests/nir_importers.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.neurons import LIF  # noqa: E402
from models.nir_export import to_nir  # noqa: E402
from pipeline.frames import BinConfig  # noqa: E402
from pipeline.data import MultiViewDataset, RebinView  # noqa: E402
from pipeline.frames import Binning  # noqa: E402
from pipeline.runs import load_run  # noqa: E402
from pipeline.store import open_event_store  # noqa: E402
from tests.nir_importers import import_nirtorch_li_threshold, import_norse, import_snntorch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--store", type=Path, help="event store (default: the checkpoint's store_path)")
    ap.add_argument("--limit", type=int, help="first N test samples only")
    args = ap.parse_args(argv)
    import nir
    from norse.torch.functional.reset import reset_value

    torch.set_num_threads(1)
    net, ckpt = load_run(args.run_dir)
    T = int(ckpt["config"]["train"]["T_s"])
    bin_cfg = BinConfig(**{**ckpt["config"]["bin"], "T": tuple(ckpt["config"]["bin"]["T"])})
    store = open_event_store(args.store or ckpt["store_path"])
    test = store["test"]
    ds = MultiViewDataset({"x": RebinView(test, Binning.from_config(bin_cfg, T))})
    n = min(len(ds), args.limit or len(ds))
    xs, ys = [], []
    for views, y in DataLoader(torch.utils.data.Subset(ds, range(n)), 64):
        xs.append(views["x"].transpose(0, 1).contiguous())
        ys.append(y)
    x, y = torch.cat(xs, 1), torch.cat(ys)
    hw = tuple(ckpt["model_args"]["input_hw"])
    hard = copy.deepcopy(net)
    for m in hard.modules():
        if isinstance(m, LIF):
            m.p = m.p._replace(reset_method=reset_value)
    with torch.no_grad():
        ours, ours_hard = net(x).logits, hard(x).logits
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for form in ("lif", "li_threshold"):
            graph, info = to_nir(net, hw, T=T, neuron=form)
            nir.write(Path(tmp) / f"{form}.nir", graph)
            graphs[form] = nir.read(Path(tmp) / f"{form}.nir")
    dt = info.dt_s
    runs = {
        "ours (soft reset)": ours,
        "ours, hard reset": ours_hard,
        "Norse from_nir + reset_subtract": import_norse(graphs["lif"], dt_s=dt, soft=True)(x),
        "Norse from_nir as imported": import_norse(graphs["lif"], dt_s=dt, soft=False)(x),
        "snnTorch import_from_nir": import_snntorch(graphs["lif"])(x),
        "nirtorch, li_threshold graph": import_nirtorch_li_threshold(graphs["li_threshold"], dt_s=dt)(x),
    }
    print(f"{args.run_dir}: {ckpt['model_args']['arch']}, T_s={T}, {n} test samples, dt {dt:g} s")
    print(f"{'':<34}{'test acc':>9}{'agree w/ ours':>15}{'max|dlogit|':>13}{'agree w/ hard':>15}{'max|dlogit|':>13}")
    pred, pred_h = ours.mean(0).argmax(1), ours_hard.mean(0).argmax(1)
    for name, logits in runs.items():
        p = logits.mean(0).argmax(1)
        print(f"{name:<34}{(p == y).float().mean().item():>9.4f}{(p == pred).float().mean().item():>15.4f}"
              f"{(logits - ours).abs().max().item():>13.2e}{(p == pred_h).float().mean().item():>15.4f}"
              f"{(logits - ours_hard).abs().max().item():>13.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
