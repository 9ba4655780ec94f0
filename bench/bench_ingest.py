"""Decode throughput of the AEDAT 3.1 reader vs a per-event ``struct.unpack`` loop (SpikingJelly's approach).

    .venv/bin/python bench/bench_ingest.py [--mb 200]

Generates a DVS128 AEDAT 3.1 file of at least ``--mb`` MB (random events, 4096 per packet, 5 % invalid, with
timestamps crossing 2^31 µs), decodes it with `pipeline.io.aedat3.read_aedat31` on one thread and on all Numba threads (the decode
passes are parallel over packets), and times the per-event Python loop on a slice, extrapolated to the whole file. Outputs are
asserted equal on the slice.
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from pipeline.io.aedat3 import decode_aedat31, read_aedat31, write_aedat31


def struct_loop(buf: bytes, start: int) -> dict[str, list]:
    """The per-event ``struct.unpack`` loop of SpikingJelly's ``load_aedat_v3``, restated: per packet a read of
    ``eventCapacity * eventSize`` bytes, per event ``struct.unpack`` of sliced bytes, appends into a dict of
    lists. (Unlike SpikingJelly it honours eventNumber and the valid bit, so outputs can be compared.)"""
    txyp: dict[str, list] = {"t": [], "x": [], "y": [], "p": []}
    pos = start
    while True:
        header = buf[pos : pos + 28]
        if len(header) < 28:
            break
        e_type = struct.unpack("H", header[0:2])[0]
        e_size = struct.unpack("I", header[4:8])[0]
        e_tsoverflow = struct.unpack("I", header[12:16])[0]
        e_capacity = struct.unpack("I", header[16:20])[0]
        e_number = struct.unpack("I", header[20:24])[0]
        data = buf[pos + 28 : pos + 28 + e_capacity * e_size]
        pos += 28 + e_capacity * e_size
        counter = 0
        if e_type == 1:
            while data[counter : counter + e_size] and counter < e_number * e_size:
                aer_data = struct.unpack("I", data[counter : counter + 4])[0]
                timestamp = struct.unpack("I", data[counter + 4 : counter + 8])[0] | e_tsoverflow << 31
                counter = counter + e_size
                if aer_data & 1:
                    txyp["x"].append((aer_data >> 17) & 0x00001FFF)
                    txyp["y"].append((aer_data >> 2) & 0x00001FFF)
                    txyp["p"].append((aer_data >> 1) & 0x00000001)
                    txyp["t"].append(timestamp)
    return txyp


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200.0)
    args = ap.parse_args(argv)
    n = int(args.mb * 1e6 / 8) + 1
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.aedat"
        t = (1 << 31) - 10_000_000 + np.cumsum(rng.integers(0, 3, n)).astype(np.int64)
        write_aedat31(path, rng.integers(0, 128, n), rng.integers(0, 128, n), t, rng.integers(0, 2, n),
                      valid=rng.random(n) > 0.05)
        size = path.stat().st_size
        read_aedat31(path)  # warm: Numba compile/cache load, page cache
        best = {}
        threads = numba.get_num_threads()
        for n_threads in sorted({1, threads}):
            numba.set_num_threads(n_threads)
            best[n_threads] = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                d = read_aedat31(path)
                best[n_threads] = min(best[n_threads], time.perf_counter() - t0)
        numba.set_num_threads(threads)
        buf = path.read_bytes()
        header_end = buf.index(b"#!END-HEADER\r\n") + 14
        slice_packets = 60  # ~2 MB of packets
        stop = header_end + slice_packets * (28 + 4096 * 8)
        head = buf[:stop]
        t0 = time.perf_counter()
        ref_loop = struct_loop(head, header_end)
        loop_s = (time.perf_counter() - t0) * (size - header_end) / (stop - header_end)
        ref = decode_aedat31(head)
        for f in "xytp":
            assert np.array_equal(getattr(ref, f), np.asarray(ref_loop[f])), f
    print(f"{'bench':<28} {'file MB':>8} {'events':>12} {'s':>7} {'MB/s':>8} {'Mev/s':>8} {'loop s (extrap.)':>17} "
          f"{'speedup':>8}")
    rows = []
    for n_threads, sec in best.items():
        row = {"threads": n_threads, "file_MB": size / 1e6, "events": d.counts["events_read"], "seconds": sec,
               "MB_per_s": size / 1e6 / sec, "speedup_vs_struct_loop": loop_s / sec}
        rows.append(row)
        print(f"{f'aedat3.1 read, {n_threads} thread(s)':<28} {row['file_MB']:>8.1f} {row['events']:>12,} {sec:>7.3f} "
              f"{row['MB_per_s']:>8.0f} {row['events'] / 1e6 / sec:>8.1f} {loop_s:>17.1f} "
              f"{row['speedup_vs_struct_loop']:>7.0f}x")
    print("targets: >= 300 MB/s on one core; >= 100x the per-event struct.unpack loop")
    return {"rows": rows}


if __name__ == "__main__":
    main()
