"""A 1-minute DVXplorer recording (640x480, AEDAT 4) through `pipeline.ingest recordings` and `pipeline.bin`.

    .venv/bin/python -m bench.bench_recording [--seconds 60] [--rate 2e6] [--T 16] [--out-size 128 128]

Writes the recording with dv-processing (iniVation's writer, LZ4 as DV records; uniformly random pixels and
times, which compress worse than a real scene) plus a labels csv cutting it into 1-second samples, then times:

1. the `aedat` decoder alone (iterating its packets) and `pipeline.io.aedat4.read_aedat4` (packets -> columns):
   MB/s of file and events/s;
2. ``python -m pipeline.ingest recordings --raw DIR --name dvx_bench`` and
   ``python -m pipeline.bin dvx_bench --T 16 --out-size 128 128 --dtype uint8``, each in a child process: wall time
   and peak RSS (``ru_maxrss`` of the child).

Needs the dev extra (dv-processing, aedat). Prints the machine's load average first: the numbers are only
comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_recording(path: Path, seconds: int, rate: float, t0: int = 1_700_000_000_000_000) -> int:
    """dv-processing writes ``seconds`` x ``rate`` random events on a 640x480 DVXplorer; returns the count."""
    import dv_processing as dv

    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.EventOnlyConfig("DVXplorer_DXA00093", (640, 480)))
    n = 0
    for s in range(seconds):
        for k in range(10):  # 100 ms batches, as a camera delivers them
            batch = dv.data.generate.uniformEventsWithinTimeRange(
                t0 + s * 1_000_000 + k * 100_000, timedelta(milliseconds=100), (640, 480), int(rate / 10), seed=s * 10 + k)
            writer.writeEvents(batch)
            n += batch.size()
    del writer
    return n


def child(module: str, args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB, the child's own ``ru_maxrss``) of ``python -m module args``."""
    peak_file = cwd / f".peak-{module}"
    code = ("import resource, runpy, sys\n"
            f"sys.argv = [{module!r}, *{args!r}]\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__')\n"
            "finally:\n"
            f"    open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    return wall, int(peak_file.read_text()) / 1e6  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=float, default=2e6, help="events per second")
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--out-size", type=int, nargs=2, default=[128, 128])
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_rec_"))
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rec = raw / "dvx.aedat4"
    t = time.perf_counter()
    n = write_recording(rec, args.seconds, args.rate)
    mb = rec.stat().st_size / 1e6
    print(f"wrote {rec}: {n:,} events, {mb:.0f} MB ({time.perf_counter() - t:.1f} s with dv-processing)")
    t0 = 1_700_000_000_000_000
    (raw / "dvx_labels.csv").write_text("class,start_us,end_us\n" + "".join(
        f"{'ab'[s % 2]},{t0 + s * 1_000_000},{t0 + (s + 1) * 1_000_000}\n" for s in range(args.seconds)))
    (raw / "trials_to_train.txt").write_text("dvx.aedat4\n")
    (raw / "trials_to_test.txt").write_text("")

    import aedat

    from pipeline.io.aedat4 import read_aedat4

    t = time.perf_counter()
    m = sum(len(p["events"]) for p in aedat.Decoder(str(rec)) if "events" in p)
    dec = time.perf_counter() - t
    t = time.perf_counter()
    ev = read_aedat4(rec)
    full = time.perf_counter() - t
    assert len(ev.t) == m == n
    del ev
    print(f"aedat decoder alone: {dec:.2f} s = {mb / dec:.0f} MB/s, {n / dec / 1e6:.1f} M events/s")
    print(f"read_aedat4 (decoder + columns): {full:.2f} s = {mb / full:.0f} MB/s, {n / full / 1e6:.1f} M events/s")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = {k: str(work / v.split("/", 1)[1]) for k, v in params["paths"].items()}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    wall, peak = child("pipeline.ingest", ["recordings", "--raw", str(raw), "--name", "dvx_bench", "--no-progress"],
                       work)
    print(f"ingest: {wall:.1f} s, peak RSS {peak:.2f} GB")
    wall, peak = child("pipeline.bin", ["dvx_bench", "--T", str(args.T), "--out-size", *map(str, args.out_size),
                                        "--dtype", "uint8", "--splits", "train", "--no-progress"], work)
    print(f"bin (T={args.T}, {args.out_size[0]}x{args.out_size[1]}, uint8, {args.seconds} samples of 1 s): "
          f"{wall:.1f} s, peak RSS {peak:.2f} GB")
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
