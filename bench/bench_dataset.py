"""The whole dataset, timed: `pipeline.ingest` + `pipeline.bin` on a DVS-Gesture-sized tree, with peak memory.

    .venv/bin/python bench/bench_dataset.py [--gb 2.7] [--recordings 116] [--repeat 3] [--small]
                                            [--tree DIR] [--code DIR] [--check-against DIR]

Writes a tree in the official DVS128-Gesture layout (``trials_to_train.txt``, ``trials_to_test.txt``,
``userNN_<lighting>.aedat`` with cAER's real AEDAT 3.1 header, ``userNN_<lighting>_labels.csv`` with 12 windows of
~6 s each, gaps of 0.5-1.5 s between them holding a few background events, 1 % of events with the valid bit
cleared, timestamps sorted) of about ``--gb`` GB into a temporary folder (removed afterwards; ``--tree DIR``
keeps it there and reuses it on the next run). Events follow a moving blob (a hand) plus uniform noise, so
columns compress as camera data does rather than as white noise.

Each timed run is a fresh child process (the way ``dvc repro`` runs a stage) that calls ``pipeline.ingest.ingest``
(Zarr store) and then ``pipeline.bin.run`` (T = 16, 64x64, uint8, semantics exact, both splits); the table gives
the seconds inside each call, the child's wall time (interpreter start and imports included), its CPU seconds
(user + system, all threads: on a shared machine these stretch far less than wall time) and its peak RSS
(``ru_maxrss`` from ``os.wait4``: the true process peak, file-backed pages of mapped files included), with the
load average at the start of each run. The raw
tree is read once before timing, so the page cache is warm; one untimed warm-up run on a small tree first fills
Numba's on-disk cache. ``--code DIR`` runs another checkout's ``pipeline`` (e.g. main before a change) on the
same tree. ``--check-against DIR`` instead ingests and bins the small tree with both checkouts and compares
every array and attribute of the stores and caches (timings excepted): exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and "--child" not in sys.argv:
    sys.path.insert(0, str(HERE))  # the tree writer of this checkout (an editable install may point elsewhere)
WINDOWS_PER_RECORDING = 12
EVENT_BYTES = 8  # one AEDAT 3.1 polarity event slot
LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")
BIN = {"T": 16, "out_size": (64, 64), "dtype": "uint8", "semantics": "exact", "by": "time"}


# ------------------------------------------------------------------------------------------ the tree
def _recording(rng: np.random.Generator, n_events: int):
    """Columns (x, y, t, p, valid) and 12 windows of one synthetic recording of about ``n_events`` events."""
    from pipeline.datasets.base import Window

    dur = rng.uniform(5.5e6, 6.5e6, WINDOWS_PER_RECORDING)  # µs per gesture
    gap = rng.uniform(0.5e6, 1.5e6, WINDOWS_PER_RECORDING)  # µs before each gesture
    starts = np.cumsum(gap + np.concatenate([[0], dur[:-1]])).astype(np.int64)
    ends = starts + dur.astype(np.int64)
    windows = [Window(label=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 7][k], start_us=int(starts[k]), end_us=int(ends[k]))
               for k in range(WINDOWS_PER_RECORDING)]
    n_gap = n_events // 50  # 2 % of the events fall between windows (sensor noise while nobody moves)
    n_in = n_events - n_gap
    per = rng.multinomial(n_in, dur / dur.sum())
    ts = [rng.integers(s, e, k) for s, e, k in zip(starts, ends, per)]
    ts.append(rng.integers(0, int(ends[-1]) + 500_000, n_gap))
    t = np.sort(np.concatenate(ts))
    # a blob circling the sensor at ~1 Hz (the hand), sigma 9 px, plus 15 % uniform background events
    phase = t.astype(np.float32) * np.float32(2 * np.pi / 1.1e6)
    cx = 64 + 32 * np.cos(phase)
    cy = 64 + 28 * np.sin(phase * 0.7)
    x = cx + rng.standard_normal(t.size, np.float32) * 9
    y = cy + rng.standard_normal(t.size, np.float32) * 9
    noise = rng.random(t.size, np.float32) < 0.15
    x[noise] = rng.integers(0, 128, int(noise.sum()))
    y[noise] = rng.integers(0, 128, int(noise.sum()))
    x = np.clip(x, 0, 127).astype(np.uint16)
    y = np.clip(y, 0, 127).astype(np.uint16)
    p = (rng.random(t.size, np.float32) < 0.5).astype(np.uint8)
    valid = rng.random(t.size, np.float32) >= 0.01
    return x, y, t, p, valid, windows


def write_tree(root: Path, gb: float, n_recordings: int, seed: int = 0) -> dict:
    """Write the tree; returns its description (also stored as ``root/bench_tree.json`` for reuse)."""
    from pipeline.datasets.dvs_gesture import write_recording, write_trials

    root.mkdir(parents=True, exist_ok=True)
    per_rec = int(gb * 1e9 / EVENT_BYTES / n_recordings)
    names = [f"user{1 + k // len(LIGHTINGS):02d}_{LIGHTINGS[k % len(LIGHTINGS)]}" for k in range(n_recordings)]
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k])
        x, y, t, p, valid, windows = _recording(rng, int(per_rec * rng.uniform(0.8, 1.2)))
        write_recording(root, name, x, y, t, p, windows, valid=valid)
    n_test = max(1, round(n_recordings * 24 / 122))  # the official 98 / 24 proportion, last users tested
    write_trials(root, names[:-n_test], names[-n_test:])
    info = {"gb": gb, "recordings": n_recordings, "seed": seed,
            "bytes": sum(f.stat().st_size for f in root.iterdir() if f.suffix == ".aedat")}
    (root / "bench_tree.json").write_text(json.dumps(info))
    return info


def ensure_tree(root: Path, gb: float, n_recordings: int) -> dict:
    marker = root / "bench_tree.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["gb"] == gb and info["recordings"] == n_recordings:
            return info
    shutil.rmtree(root, ignore_errors=True)
    return write_tree(root, gb, n_recordings)


def warm_page_cache(root: Path) -> None:
    for f in sorted(root.iterdir()):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


# ------------------------------------------------------------------------------------------ one run
def child(raw: str, work: str) -> None:
    """Run in a fresh process: ingest + bin, print one JSON line of timings."""
    t_start = time.perf_counter()
    from pipeline.bin import run
    from pipeline.config import IngestConfig
    from pipeline.frames import BinConfig
    from pipeline.datasets import get_spec
    from pipeline.ingest import ingest

    t_import = time.perf_counter() - t_start
    store = Path(work) / "dvs_gesture.zarr"
    t0 = time.perf_counter()
    attrs = ingest(get_spec("dvs_gesture"), Path(raw), store, IngestConfig(format="zarr"), progress=False)
    t1 = time.perf_counter()
    cfg = BinConfig(T=(BIN["T"],), by=BIN["by"], semantics=BIN["semantics"], out_size=BIN["out_size"],
                    dtype=BIN["dtype"], format="zarr")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        caches = run(cfg, store, Path(work) / "frames", ("train", "test"), progress=False)
    t2 = time.perf_counter()
    print(json.dumps({"import_s": t_import, "ingest_s": t1 - t0, "bin_s": t2 - t1, "events": attrs["counts"]["stored"],
                      "samples": attrs["counts"]["samples"], "store": str(store), "caches": [str(c) for c in caches],
                      "pipeline": str(Path(sys.modules["pipeline"].__file__).parent)}))


def run_child(raw: Path, work: Path, code: Path) -> dict:
    """One timed child process; returns its timings plus wall time and peak RSS (bytes, the child's own
    ``ru_maxrss`` from ``os.wait4``)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(code)}  # this file runs as a script: only `pipeline` comes from `code`
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(raw), str(work)]
    with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=work)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, not by Popen: its rusage is this child's alone
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child failed ({proc.returncode}):\n{(work / 'stderr').read_text()[-4000:]}")
    result = json.loads((work / "stdout").read_text().strip().splitlines()[-1])
    result["wall_s"] = wall
    result["peak_rss"] = usage.ru_maxrss * 1024  # Linux reports KiB
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # all threads, imports included
    return result


# ------------------------------------------------------------------------------------------ comparison
def _walk(node, prefix=""):
    import zarr

    for name, child_node in sorted(node.members()):
        path = f"{prefix}{name}"
        if isinstance(child_node, zarr.Group):
            yield path, None, dict(child_node.attrs)
            yield from _walk(child_node, path + "/")
        else:
            yield path, child_node[...], dict(child_node.attrs)


def compare_products(a: Path, b: Path) -> list[str]:
    """Every difference in arrays, dtypes, shapes and attributes between two Zarr groups (timings ignored)."""
    import zarr

    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    problems = []
    ignore = {"seconds"}
    ra = {k: v for k, v in dict(ga.attrs).items() if k not in ignore}
    rb = {k: v for k, v in dict(gb.attrs).items() if k not in ignore}
    for k in sorted(set(ra) | set(rb)):
        va, vb = ra.get(k), rb.get(k)
        if k == "source" and isinstance(va, dict):  # a cache's source path names its own store
            va, vb = {**va, "path": None}, {**(vb or {}), "path": None}
        if va != vb:
            problems.append(f"{a.name}: root attr {k!r} differs")
    ma = {p: (arr, at) for p, arr, at in _walk(ga)}
    mb = {p: (arr, at) for p, arr, at in _walk(gb)}
    if set(ma) != set(mb):
        problems.append(f"{a.name}: members differ: {sorted(set(ma) ^ set(mb))}")
    for p in sorted(set(ma) & set(mb)):
        (xa, aa), (xb, ab) = ma[p], mb[p]
        if aa != ab:
            problems.append(f"{a.name}/{p}: attrs differ")
        if (xa is None) != (xb is None):
            problems.append(f"{a.name}/{p}: group vs array")
        elif xa is not None and (xa.dtype != xb.dtype or xa.shape != xb.shape or not np.array_equal(xa, xb)):
            problems.append(f"{a.name}/{p}: array differs ({xa.dtype}{xa.shape} vs {xb.dtype}{xb.shape})")
        if xa is not None:
            za, zb = ga[p], gb[p]
            if (za.chunks, za.shards, za.fill_value) != (zb.chunks, zb.shards, zb.fill_value):
                problems.append(f"{a.name}/{p}: chunking differs ({za.chunks}/{za.shards} vs {zb.chunks}/{zb.shards})")
    return problems


def check_against(other: Path, raw: Path, scratch: Path) -> int:
    res_new = run_child(raw, scratch / "new", HERE)
    res_old = run_child(raw, scratch / "old", other)
    assert res_old["pipeline"] != res_new["pipeline"], "both runs imported the same pipeline package"
    problems = compare_products(Path(res_new["store"]), Path(res_old["store"]))
    names_new = sorted(Path(c).name for c in res_new["caches"])
    names_old = sorted(Path(c).name for c in res_old["caches"])
    if names_new != names_old:
        problems.append(f"cache names differ: {names_new} vs {names_old}")
    for cn, co in zip(sorted(res_new["caches"]), sorted(res_old["caches"])):
        problems += compare_products(Path(cn), Path(co))
    print(f"compared {res_new['pipeline']} with {res_old['pipeline']}: store ({res_new['events']:,} events, "
          f"{res_new['samples']} samples) and {len(names_new)} frame caches")
    for p in problems:
        print("  DIFF", p)
    print("identical (every array, dtype, shape, chunking and attribute; timings excepted)" if not problems
          else f"{len(problems)} differences")
    return 1 if problems else 0


# ------------------------------------------------------------------------------------------ main
def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.7, help="raw tree size in GB (default 2.7, the real dataset's)")
    ap.add_argument("--recordings", type=int, default=116)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (median and spread reported)")
    ap.add_argument("--small", action="store_true", help="a quick check: 0.05 GB, 8 recordings, 1 run")
    ap.add_argument("--tree", type=Path, help="keep the raw tree in DIR and reuse it (default: a temp dir, removed)")
    ap.add_argument("--code", type=Path, default=HERE, help="checkout whose pipeline package runs (default: this one)")
    ap.add_argument("--check-against", type=Path, metavar="DIR",
                    help="compare stores and caches of the small tree with those of another checkout")
    ap.add_argument("--child", nargs=2, metavar=("RAW", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    if args.small or args.check_against:
        args.gb, args.recordings, args.repeat = 0.05, 8, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset-"))
    try:
        raw = args.tree or tmp / "raw"
        t0 = time.perf_counter()
        info = ensure_tree(raw, args.gb, args.recordings)
        gen_s = time.perf_counter() - t0
        if args.check_against:
            sys.exit(check_against(args.check_against.resolve(), raw, tmp))
        warm_page_cache(raw)
        if not args.small:  # untimed warm-up: Numba's on-disk cache, imports in the OS cache
            warm_raw = tmp / "warm_raw"
            write_tree(warm_raw, 0.01, 4)
            run_child(warm_raw, tmp / "warm", args.code)
            shutil.rmtree(warm_raw)
        runs = []
        for _ in range(args.repeat):
            warm_page_cache(raw)
            load = _load()
            r = run_child(raw, tmp / "work", args.code)
            r["load"] = load
            runs.append(r)
        store_bytes = sum(f.stat().st_size for f in Path(runs[-1]["store"]).rglob("*") if f.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the raw tree too, unless it lives in --tree
    med = {k: statistics.median(r[k] for r in runs) for k in ("ingest_s", "bin_s", "wall_s", "cpu_s", "peak_rss")}
    total = [r["ingest_s"] + r["bin_s"] for r in runs]
    print(f"tree: {info['recordings']} recordings, {info['bytes'] / 1e9:.2f} GB AEDAT 3.1 ({runs[0]['events']:,} events "
          f"stored, {runs[0]['samples']} samples), written in {gen_s:.0f} s; warm page cache; "
          f"{os.cpu_count()} CPUs; code {runs[0]['pipeline']}")
    print(f"{'run':<8} {'ingest s':>9} {'bin s':>7} {'total s':>8} {'child wall s':>13} {'child CPU s':>12} "
          f"{'peak RSS GB':>12} {'load (1/5/15 min)':>18}")
    for i, r in enumerate(runs):
        print(f"{i + 1:<8} {r['ingest_s']:>9.2f} {r['bin_s']:>7.2f} {r['ingest_s'] + r['bin_s']:>8.2f} "
              f"{r['wall_s']:>13.2f} {r['cpu_s']:>12.2f} {r['peak_rss'] / 1e9:>12.2f} {r['load']:>18}")
    spread = f" (spread {min(total):.2f}..{max(total):.2f})" if len(runs) > 1 else ""
    print(f"{'median':<8} {med['ingest_s']:>9.2f} {med['bin_s']:>7.2f} {statistics.median(total):>8.2f} "
          f"{med['wall_s']:>13.2f} {med['cpu_s']:>12.2f} {med['peak_rss'] / 1e9:>12.2f}{spread}")
    print(f"load after: {_load()} (1/5/15 min; on a shared machine wall times stretch, CPU seconds much less)")
    print(f"store {store_bytes / 1e9:.2f} GB on disk; bin: T={BIN['T']}, {BIN['out_size'][0]}x{BIN['out_size'][1]}, "
          f"{BIN['dtype']}, both splits. Target: <= 20 s end to end on 2 cores, <= 1 GB peak")
    return {"runs": runs, "median": med, "tree": info, "store_bytes": store_bytes}


if __name__ == "__main__":
    main()
