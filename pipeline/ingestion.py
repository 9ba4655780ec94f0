"""Ingestion, the library half of the `pipeline.ingest` stage: raw recordings -> one columnar event store.

`ingest(spec, raw_dir, out, cfg)` reads every recording of a dataset spec and writes the store atomically;
`ingest_and_report` adds the closing report and turns refusals into one error line and an exit code (used by
the ingest stage and by `pipeline.train` when a store is missing).

Every event read is accounted for: the store's ``counts`` attribute reconciles
``events_read = stored + invalid_dropped + outside_windows + out_of_sensor - duplicated_by_overlap``
(an event inside two overlapping windows is stored twice, once per sample).

Empty samples (no event in their window) and empty recordings (no event at all, e.g. a header-only file) are
legal, counted per split (``empty_samples``, ``empty_recordings``; the split's ``empty_recordings`` attribute names
them) and reported; a split whose samples are all empty is refused and no store is published.

Before anything is read or hashed, the whole plan is checked: every recording and label file exists and is
readable, the dataset's up-front checks pass (headers, label csvs), the decoders it needs are installed and the
store's folder is writable. A full disk while writing is one line naming the store and the space it needs.
"""


from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
from numba import njit
from tqdm import tqdm

from pipeline.config import IngestConfig
from pipeline.datasets import DatasetSpec, MissingRawDataError
from pipeline.datasets.base import SPLITS, MissingDecoderError, Recording, check_plan_disjoint, download_instructions
from pipeline.events import DecodedEvents
from pipeline.guards import EVENT_BYTES, check_writable, disk_full, human_bytes, is_disk_full
from pipeline.io.errors import RawDataError
from pipeline.store import EventStoreWriter, StoreError, stable_hash

__all__ = ["ingest", "ingest_and_report", "check_plan", "report", "COUNT_KEYS"]

#: Every count a store reports, always present (zero when nothing happened).
COUNT_KEYS = ("samples", "stored", "events_read", "invalid_dropped", "nonpolarity_skipped", "unused_slots",
              "outside_windows", "out_of_sensor", "reordered", "duplicated_by_overlap", "overlapping_windows",
              "empty_samples", "empty_recordings")


def _file_record(path: Path, name: str, data: bytes) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _read_and_hash(rec) -> tuple[bytes, dict]:
    """A recording's bytes and its provenance record (name, size, sha256)."""
    data = rec.path.read_bytes()
    return data, _file_record(rec.path, rec.name, data)


def _prefetched(recs: list, pool: ThreadPoolExecutor) -> Iterator[tuple[object, bytes, dict]]:
    """``(recording, bytes, record)`` in order, recording k+1 read and hashed in ``pool`` (hashlib releases the
    GIL) while the caller decodes and writes recording k: at most two recordings' bytes in memory."""
    ahead = pool.submit(_read_and_hash, recs[0]) if recs else None
    for k, rec in enumerate(recs):
        data, record = ahead.result()
        ahead = pool.submit(_read_and_hash, recs[k + 1]) if k + 1 < len(recs) else None
        yield rec, data, record


@njit(cache=True, nogil=True)
def _scan(x, y, t, width, height):
    """One pass over a recording: ``(t is non-decreasing, number of events with x >= width or y >= height)``."""
    n_bad = 0
    for j in range(x.shape[0]):
        n_bad += (x[j] >= width) | (y[j] >= height)
    ordered = True
    for j in range(1, t.shape[0]):
        ordered &= t[j] >= t[j - 1]
    return ordered, n_bad


def _prepare(ev: DecodedEvents, path: Path, spec: DatasetSpec, out_of_sensor: str, counts: Counter) -> DecodedEvents:
    """Sort by time if needed (counted) and apply the out-of-sensor policy."""
    x, y, t, p = ev.x, ev.y, ev.t, ev.p
    w, h, _ = spec.sensor_size
    ordered, n_bad = _scan(x, y, t, w, h) if len(t) else (True, 0)
    if not ordered:
        order = np.argsort(t, kind="stable")
        counts["reordered"] += int(np.count_nonzero(order != np.arange(len(t))))
        x, y, t, p = x[order], y[order], t[order], p[order]
    if n_bad:
        bad = (x >= w) | (y >= h)
        if out_of_sensor == "error":
            k = int(np.flatnonzero(bad)[0])
            raise RawDataError(
                path,
                f"event {k} (t={int(t[k])} µs) has x={int(x[k])}, y={int(y[k])} outside the {w}x{h} sensor "
                f"({int(bad.sum())} such events; --set ingest.out_of_sensor=drop drops and counts them)",
            )
        counts["out_of_sensor"] += int(bad.sum())
        keep = ~bad
        x, y, t, p = x[keep], y[keep], t[keep], p[keep]
    return DecodedEvents(x, y, t, p, ev.counts, ev.header)


def _need_file(path: Path, what: str) -> int:
    """The size of a raw file the plan names; MissingRawDataError / RawDataError before anything is read."""
    if not path.is_file():
        raise MissingRawDataError(f"{path} not found ({what})")
    if not os.access(path, os.R_OK):
        raise RawDataError(path, f"not readable by this user ({what})")
    return path.stat().st_size


def check_plan(spec: DatasetSpec, plan: dict[str, list[Recording]]) -> int:
    """Validate the whole plan before any recording is read or hashed: every recording and every label file
    exists and is readable, and the spec's optional ``check_recording`` passes on each (DVS-Gesture: the AEDAT
    header and the label csv parse). Returns the bytes of the recordings (for the disk-space estimate)."""
    total = 0
    check = getattr(spec, "check_recording", None)
    for split_name, recs in plan.items():
        for rec in recs:
            total += _need_file(rec.path, f"a recording of the {split_name} split")
            for extra in spec.label_files(rec):
                _need_file(extra, f"the label file of {rec.path}")
            if check is not None:
                check(rec)
    return total


def _all_empty(split_name: str, counts: Counter, raw_dir: Path) -> RawDataError:
    return RawDataError(raw_dir, f"every one of the {counts['samples']} samples of the {split_name} split is empty "
                                 f"(no event in its window; {counts['empty_recordings']} of its recordings hold no "
                                 f"event at all): training or scoring on all-zero frames would be meaningless")


def ingest(spec: DatasetSpec, raw_dir: Path, out: Path, cfg: IngestConfig, split: str | None = None,
           progress: bool = True) -> dict:
    """Read every raw recording of ``spec`` under ``raw_dir`` and write the event store ``out`` atomically.

    Returns the root attributes written (counts, sources, store_id ...). Refused before any work (nothing
    read, nothing written): a missing or unreadable recording or label file (MissingRawDataError /
    RawDataError), a missing optional decoder (MissingDecoderError), an unwritable store folder
    (NotWritableError). Refused after decoding, before publishing: a split whose samples are all empty
    (RawDataError). A full disk is a DiskFullError naming the store.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    if hasattr(spec, "for_raw"):  # generated datasets record their own geometry next to the raw files
        spec = spec.for_raw(raw_dir)
    split = split or cfg.splits.get(spec.name, spec.default_split)
    val = cfg.val.get(spec.name, spec.default_val)
    val = int(val) if val >= 1 and val == int(val) else val  # 4, not 4.0, in the manifest (and the store id)
    plan = spec.recordings(raw_dir, split, val)
    check_plan_disjoint(plan, raw_dir)
    if not plan.get("val"):  # ingest.val = 0: no validation split in the store
        plan = {k: v for k, v in plan.items() if k != "val"}
    raw_bytes = check_plan(spec, plan)
    check_writable(out.parent, "event store")
    done: Counter = Counter()  # raw bytes decoded so far and their events: for the disk-space estimate
    try:
        return _ingest(spec, raw_dir, out, cfg, split, plan, progress, done, val)
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise disk_full("event store", out, *_store_estimate(raw_bytes, done)) from None


def _store_estimate(raw_bytes: int, done: Counter) -> tuple[int, str]:
    """Uncompressed bytes the whole store needs: 13 bytes per event, the events extrapolated from those of the
    raw bytes decoded so far (8 raw bytes per event, AEDAT's slot size, before the first recording is decoded)."""
    per_byte = done["events"] / done["bytes"] if done["bytes"] and done["events"] else 1 / 8
    events = int(raw_bytes * per_byte)
    return EVENT_BYTES * events, (f"{EVENT_BYTES} bytes per event before compression, ~{events:,} events in "
                                  f"{human_bytes(raw_bytes)} of raw files")


def _ingest(spec: DatasetSpec, raw_dir: Path, out: Path, cfg: IngestConfig, split: str,
            plan: dict[str, list[Recording]], progress: bool, done: Counter, val: float) -> dict:
    sources: list[dict] = []
    totals: Counter = Counter(dict.fromkeys(COUNT_KEYS, 0))
    overlaps: list[dict] = []
    empty_names: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    n_recs = sum(len(r) for r in plan.values())
    bar = tqdm(total=n_recs, desc=f"ingest {spec.name}", unit="rec", disable=not progress, file=sys.stderr)
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read")
    with reader, EventStoreWriter(out, cfg.format, chunk_events=cfg.chunk_events,
                                  shard_events=cfg.shard_events) as writer:
        for split_name, recs in plan.items():
            sw = writer.split(split_name)
            counts: Counter = Counter(dict.fromkeys(COUNT_KEYS, 0))
            rec_attrs = []
            empty_recs = empty_names[split_name] = []
            overlaps_before = len(overlaps)
            for rec_idx, (rec, data, record) in enumerate(_prefetched(recs, reader)):
                decoded = spec.decode(data, rec.path)
                done["bytes"] += len(data)
                done["events"] += len(decoded.t)
                del data  # the decoded columns are all that is needed from here on
                sources.append({**record, **(decoded.header or {})})
                for extra in spec.label_files(rec):
                    sources.append(_file_record(extra, str(Path(rec.name).parent / extra.name), extra.read_bytes()))
                ev = _prepare(decoded, rec.path, spec, cfg.out_of_sensor, counts)
                for k, v in ev.counts.items():
                    counts[k] += v
                if len(ev.t) == 0:  # a header-only file, or every event dropped: legal, counted and named
                    counts["empty_recordings"] += 1
                    empty_recs.append(rec.name)
                windows = spec.windows(rec, ev)
                covered = np.zeros(len(ev.t), dtype=bool)
                order = sorted(windows, key=lambda w: w.start_us)
                for a, b in zip(order[:-1], order[1:]):
                    if b.start_us < a.end_us:
                        overlaps.append({"recording": rec.name, "rows": [a.row, b.row]})
                for w in windows:
                    lo, hi = np.searchsorted(ev.t, [w.start_us, w.end_us], side="left")
                    counts["duplicated_by_overlap"] += int(np.count_nonzero(covered[lo:hi]))
                    covered[lo:hi] = True
                    sw.add(ev.x[lo:hi], ev.y[lo:hi], ev.t[lo:hi], ev.p[lo:hi], label=w.label, recording=rec_idx,
                           start_us=w.start_us, end_us=w.end_us)
                    counts["samples"] += 1
                    counts["stored"] += int(hi - lo)
                    counts["empty_samples"] += int(hi == lo)
                counts["outside_windows"] += int(len(ev.t) - np.count_nonzero(covered))
                rec_attrs.append({"name": rec.name, **rec.meta})
                bar.update(1)
            counts["overlapping_windows"] = len(overlaps) - overlaps_before
            if counts["samples"] and counts["empty_samples"] == counts["samples"]:
                raise _all_empty(split_name, counts, raw_dir)  # the store is not published
            writer.finish_split(split_name, {"recordings": rec_attrs, "counts": dict(counts),
                                             "empty_recordings": empty_recs,
                                             "label_hist": np.bincount(sw.meta["label"], minlength=len(spec.classes)).tolist()})
            totals.update({f"{split_name}.{k}": v for k, v in counts.items()})
            for k, v in counts.items():
                totals[k] += v
        validation = _validation_manifest(spec, plan, val)
        identity = {"dataset": spec.name, "split_scheme": split, "reader_version": spec.reader_version,
                    "sources": sources, "out_of_sensor": cfg.out_of_sensor, "validation": validation}
        attrs = {
            "dataset": spec.name,
            "classes": list(spec.classes),
            "sensor_size": list(spec.sensor_size),
            "split_scheme": split,
            "validation": validation,
            "reader_version": spec.reader_version,
            "sources": sources,
            "counts": {k: int(v) for k, v in totals.items()},
            "overlaps": overlaps,
            "store_id": stable_hash(identity),
        }
        writer.finish(attrs)
    bar.close()
    attrs["seconds"] = round(time.perf_counter() - t0, 2)
    attrs["empty_recordings"] = empty_names  # also in each split's attributes
    return attrs


def _validation_manifest(spec: DatasetSpec, plan: dict[str, list[Recording]], val: float) -> dict:
    """The store's ``validation`` attribute: the size asked for (``ingest.val.<dataset>``), the spec's rule in
    words, the validation recordings by name and, where recordings carry a user, the validation users."""
    recs = plan.get("val", [])
    out = {"size": val, "rule": spec.val_rule, "recordings": [r.name for r in recs]}
    if recs and all("user" in r.meta for r in recs):
        out["users"] = sorted({r.meta["user"] for r in recs})
    return out


def report(attrs: dict, out: Path) -> str:
    """The closing report: samples (empty ones too) and events per split, everything dropped, and a warning
    line per split that holds empty samples or recordings."""
    c = attrs["counts"]
    lines = [f"event store {out} ({attrs['dataset']}, split scheme {attrs['split_scheme']}, {attrs['seconds']} s)"]
    lines.append(f"  {'split':<6} {'samples':>8} {'empty':>6} {'events':>14}")
    splits = [s for s in SPLITS if f"{s}.samples" in c]
    for split in splits:
        lines.append(f"  {split:<6} {c.get(split + '.samples', 0):>8} {c.get(split + '.empty_samples', 0):>6} "
                     f"{c.get(split + '.stored', 0):>14,}")
    lines.append(
        "  read {:,} | invalid dropped {:,} | non-polarity skipped {:,} | outside every window {:,} | "
        "out of sensor {:,} | reordered {:,} | overlapping windows {}".format(
            c.get("events_read", 0), c.get("invalid_dropped", 0), c.get("nonpolarity_skipped", 0),
            c.get("outside_windows", 0), c.get("out_of_sensor", 0), c.get("reordered", 0),
            c.get("overlapping_windows", 0)))
    val = attrs.get("validation") or {}
    if val.get("recordings"):
        who = f"users {', '.join(map(str, val['users']))}" if "users" in val else f"{len(val['recordings'])} recordings"
        lines.append(f"  validation: {who} of the training side (ingest.val = {val['size']}; {val['rule']})")
    else:
        lines.append("  validation: none (ingest.val = 0)")
    for split in splits:
        n, empty, recs = (c.get(f"{split}.{k}", 0) for k in ("samples", "empty_samples", "empty_recordings"))
        if empty or recs:
            names = attrs.get("empty_recordings", {}).get(split, [])
            shown = f": {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" if names else ""
            lines.append(f"  warning: {split}: {empty} of {n} samples are empty (no event in their window: all-zero "
                         f"frames); {recs} recording(s) hold no event at all{shown}")
    return "\n".join(lines)


def ingest_and_report(spec: DatasetSpec, raw: Path, out: Path, cfg: IngestConfig, split: str | None = None,
                      progress: bool = True) -> int:
    """`ingest`, then the closing report; a missing or malformed raw file becomes a message (what to download,
    or the file and position at fault) and an exit code instead of a traceback."""
    try:
        attrs = ingest(spec, raw, out, cfg, split, progress=progress)
    except MissingRawDataError as err:
        print(f"error: raw data for {spec.name} is missing: {err}\n{download_instructions(spec, raw)}",
              file=sys.stderr)
        return 2
    except MissingDecoderError as err:
        print(f"error: {err}\nno event store was written.", file=sys.stderr)
        return 2
    except (RawDataError, StoreError) as err:
        print(f"error: {err}\nno event store was written.", file=sys.stderr)
        return 1
    print(report(attrs, out))
    return 0


