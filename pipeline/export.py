"""Stage: the deployed student of a run as a NIR graph (Norse, snnTorch, Sinabs, Lava-DL, SpiNNaker2 read NIR).

    python -m pipeline.export <run dir> [--out <run dir>/model.nir] [--T T_s] [--neuron lif|li_threshold]
                                        [--pool sum|avg] [--dt-s 1e-4]

Exports ``SpikingNet.deploy()`` (weak heads gone) for inference at the run's T_s (``--T`` for another T): BatchNorm
folded into the convolutions, the time-normalisation factor ``T / T_s`` into the first layer, average pooling as
``SumPool2d`` with its ``1/k^2`` in the next layer (``--pool avg``: ``AvgPool2d`` nodes), and the soft-reset LIF
neuron as NIR ``LIF`` nodes (``--neuron lif``; NIR's reset-to-zero reading is the hard-reset approximation) or as
the exact ``LI`` + ``Threshold`` + recurrent ``-(tau-1) theta`` edge (``--neuron li_threshold``).
`models.nir_export` documents the mapping. A network with max pooling (``gesture_net``) is refused, naming the layer.
Written atomically; needs the ``nir`` package (``pip install '.[export]'``; it comes with Norse).

An image run (static images, direct encoding) exports the same graph: its input node takes the normalised image
``(x / 255 - mean) / std`` (the store's per-channel values, in the graph's metadata ``input_mean`` / ``input_std``)
at every one of the T steps -- NIR has no notion of a held input, so the caller feeds the image T times; there is
no time-normalisation factor (``input_scale`` 1). The default T is the run's T_s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.nir_export import DEFAULT_DT_S, NEURON_FORMS, POOL_FORMS, NIRExportError, to_nir
from pipeline.guards import check_writable, exits_on_error, writing
from pipeline.runs import CheckpointError, load_run
from pipeline.store import atomic_output

__all__ = ["export_run", "main"]


def export_run(run_dir: Path, out: Path, *, T: int | None = None, neuron: str = "lif", pool: str = "sum",
               dt_s: float = DEFAULT_DT_S) -> dict:
    """Write the run's deployed network to ``out`` (NIR HDF5). Returns the graph's metadata.

    Raises CheckpointError (no/corrupt checkpoint) or NIRExportError (a layer NIR cannot express)."""
    import nir

    net, ckpt = load_run(run_dir, "cpu")
    args = ckpt["model_args"]
    extra = {}
    if ckpt.get("input") == "images":  # direct encoding: the normalised image at every step, no time scaling
        T = T if T is not None else int(ckpt["config"]["train"]["T_s"])
        extra = {"input": "image held for T steps (direct encoding), normalised (x / 255 - input_mean) / input_std",
                 "input_mean": [float(v) for v in ckpt["normalize"]["mean"]],
                 "input_std": [float(v) for v in ckpt["normalize"]["std"]]}
    graph, info = to_nir(net, tuple(args["input_hw"]), T=T, neuron=neuron, pool=pool, dt_s=dt_s,
                         metadata={"run": str(run_dir), **extra, "in_channels": int(args["in_channels"]),
                                   "input_hw": [int(v) for v in args["input_hw"]],
                                   "n_classes": int(args["n_classes"]),
                                   "tau_steps": float(net.stages[next(iter(net.stages))].blocks[0].lif.config.tau_steps),
                                   "v_th": float(net.stages[next(iter(net.stages))].blocks[0].lif.config.v_th)})
    with writing("NIR graph", out):
        with atomic_output(out) as tmp:
            nir.write(tmp, graph)
    print(f"wrote {out}: {net.arch}, T={info.T}, {info.n_nodes} nodes, {info.n_neuron_layers} neuron layers "
          f"({info.neuron}), pooling as {info.pool}, input scale {info.input_scale:g}, dt {info.dt_s:g} s")
    return dict(graph.metadata)


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, help="NIR file (default: <run dir>/model.nir)")
    ap.add_argument("--T", type=int, help="inference timesteps the graph is exported for (default: the run's T_s)")
    ap.add_argument("--neuron", choices=NEURON_FORMS, default="lif",
                    help="lif: NIR LIF nodes (hard reset in NIR semantics); li_threshold: exact soft reset")
    ap.add_argument("--pool", choices=POOL_FORMS, default="sum", help="average pooling as SumPool2d (default) or AvgPool2d")
    ap.add_argument("--dt-s", type=float, default=DEFAULT_DT_S,
                    help="Euler step the time constants are written for (snnTorch's importer uses 1e-4)")
    ap.add_argument("--no-progress", action="store_true", help="accepted for symmetry with the other stages")
    args = ap.parse_args(argv)
    out = args.out or args.run_dir / "model.nir"
    check_writable(out.parent, "NIR graph")
    try:
        export_run(args.run_dir, out, T=args.T, neuron=args.neuron, pool=args.pool, dt_s=args.dt_s)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NIRExportError, ValueError) as err:
        print(f"error: {err}\nnothing was written.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
