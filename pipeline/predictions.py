"""A run's per-sample test predictions: ``<run>/predictions.csv``, written by `pipeline.evaluate`, read by the report.

One row per test sample, in the order of the event store's test split, one column per inference T::

    index,recording,label,pred_T1,pred_T2,pred_T4
    0,12,3,3,3,3
    1,12,7,1,7,7

``index`` is the sample's position in the split (0-based), ``recording`` its recording id (the store's
``recording`` array; an image run's file names the column ``source_index`` and holds each image's index in the
raw dataset, the image store's ``source_index``), ``label`` the true class and ``pred_T<T>`` the class the deployed network predicts when it
runs T timesteps (argmax of the time-averaged logits, as `pipeline.evaluate` scores it). Plain text, no wall clock:
the same predictions are the same bytes, so the file is a reproducible DVC output. Two runs are *paired* (McNemar,
the paired bootstrap in `pipeline.stats`) only when their ``index``, ``recording`` and ``label`` columns agree.

A library module (numpy + csv only): the evaluate stage writes the text, the report stage reads it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FILENAME", "SAMPLE_IDS", "Predictions", "PredictionsError", "format_predictions", "read_predictions"]

FILENAME = "predictions.csv"
#: The second column's name: an event sample's recording id, or an image's index in the raw dataset.
SAMPLE_IDS = ("recording", "source_index")


class PredictionsError(ValueError):
    """A predictions file is malformed (names the file and the csv row)."""


@dataclass(frozen=True)
class Predictions:
    """Per-sample predictions of one run.

    Ts: inference timestep counts, ``(K,)`` ints, in column order. index, recording, label: ``(N,)`` int64.
    pred: ``(K, N)`` int64, ``pred[k, i]`` is the class predicted for sample ``i`` at ``Ts[k]``.
    sample_id: the second column's name, one of `SAMPLE_IDS`: ``recording`` (event stores) or ``source_index``
    (image stores; ``recording`` then holds each image's index in the raw dataset).
    """

    Ts: tuple[int, ...]
    index: np.ndarray
    recording: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    sample_id: str = "recording"

    def __post_init__(self) -> None:
        n = len(self.label)
        if len(self.index) != n or len(self.recording) != n or self.pred.shape != (len(self.Ts), n):
            raise PredictionsError(f"inconsistent shapes: index {len(self.index)}, recording {len(self.recording)}, "
                                   f"label {n}, pred {self.pred.shape} for T={list(self.Ts)}")
        if len(set(self.Ts)) != len(self.Ts):
            raise PredictionsError(f"duplicate inference T in {list(self.Ts)}")
        if self.sample_id not in SAMPLE_IDS:
            raise PredictionsError(f"sample_id {self.sample_id!r}; choose one of {', '.join(SAMPLE_IDS)}")

    def correct(self, T: int) -> np.ndarray:
        """``(N,)`` bool: was sample i classified correctly at T timesteps? KeyError when T was not evaluated."""
        if T not in self.Ts:
            raise KeyError(f"no predictions at T={T} (evaluated: {list(self.Ts)})")
        return self.pred[self.Ts.index(T)] == self.label

    def same_samples(self, other: "Predictions") -> bool:
        """True when both runs scored the same test samples in the same order (the condition for pairing)."""
        return (self.sample_id == other.sample_id and np.array_equal(self.index, other.index)
                and np.array_equal(self.recording, other.recording) and np.array_equal(self.label, other.label))


def format_predictions(p: Predictions) -> str:
    """The csv text of ``p`` (header + one row per sample, ``\\n`` line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", p.sample_id, "label", *(f"pred_T{T}" for T in p.Ts)])
    cols = np.vstack([p.index, p.recording, p.label, p.pred]).astype(np.int64)
    w.writerows(cols.T.tolist())
    return buf.getvalue()


def read_predictions(path: str | Path) -> Predictions:
    """Parse ``predictions.csv``; a malformed file is a PredictionsError naming the file and the row."""
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:3] not in (["index", sid, "label"] for sid in SAMPLE_IDS) or not all(
            c.startswith("pred_T") for c in rows[0][3:]):
        raise PredictionsError(f"{path}: row 1: expected the header index,recording,label,pred_T<T>... (an image "
                               f"run: index,source_index,label,...); got {rows[0] if rows else 'an empty file'}")
    try:
        Ts = tuple(int(c[len("pred_T"):]) for c in rows[0][3:])
    except ValueError:
        raise PredictionsError(f"{path}: row 1: a column is not pred_T<integer>: {rows[0][3:]}") from None
    width = 3 + len(Ts)
    values = np.empty((len(rows) - 1, width), np.int64)
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise PredictionsError(f"{path}: row {r}: {len(row)} fields, expected {width}")
        try:
            values[r - 2] = [int(v) for v in row]
        except ValueError:
            raise PredictionsError(f"{path}: row {r}: a field is not an integer: {row}") from None
    return Predictions(Ts, values[:, 0].copy(), values[:, 1].copy(), values[:, 2].copy(),
                       np.ascontiguousarray(values[:, 3:].T), sample_id=rows[0][1])
