"""Position labels for RoPE models: an edit never renumbers the rows it does not touch.

Without labels an insertion shifts every later position, so with RoPE every later query and key
changes and re-attends (a full suffix recompute per keystroke). With labels each row carries an
integer label and RoPE sees `label / scale` (`ModelSpec.position_scale`, a power of two, so the division
is exact in float32): a fresh document's row i has label i·scale. A deletion leaves a gap. An insertion
of k rows between the labels a and b of its neighbours takes k evenly spaced integers strictly inside
(a, b); at the end of the document a + scale, a + 2·scale, ... Only when (a, b) has no room for them are
existing rows relabelled: the smallest window of rows around the insertion (doubling) whose label
range leaves a spacing of at least `scale // 64` is spread evenly (list labelling: a keystroke relabels
no row, a run of them relabels a window now and then). When even the whole document has no such room,
or the labels would pass `limit`, every row is relabelled i·scale (a compaction).

The invariant is then "equal to a fresh build of the same text *with the same labels*"
(`model.document(text, positions=doc.positions)`); relabelled rows are reported, because in RoPE mode
their q and k change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Relabel:
    """Labels of every row after an insertion, in position order, and what changed."""

    labels: I64
    """(n,) strictly increasing, BOS (row 0) at 0."""
    moved: I64
    """Indices of existing rows whose label changed (new rows not included)."""
    compacted: bool
    """Every row was relabelled i·scale."""


def fresh_labels(n: int, scale: int) -> I64:
    """Labels of a fresh document of n rows (BOS included)."""
    return np.arange(n, dtype=np.int64) * scale


def check_labels(labels: object, n: int, limit: int) -> I64:
    """`labels` as the labels of a document of n rows (BOS first, at 0); ValueError naming the rule."""
    a = np.asarray(labels)
    if a.ndim != 1 or a.shape[0] != n or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"positions must be {n} integers (BOS first), got {a.dtype} of shape {a.shape}")
    a = a.astype(np.int64)
    if n and a[0] != 0:
        raise ValueError(f"positions must start at 0 (the BOS row), got {int(a[0])}")
    if np.any(np.diff(a) <= 0):
        raise ValueError("positions must be strictly increasing")
    if n and a[-1] > limit:
        raise ValueError(f"positions must stay <= {limit}, got {int(a[-1])}")
    return a


def place(labels: I64, row: int, k: int, scale: int, limit: int) -> Relabel:
    """Labels after inserting k rows at `row` (1 <= row: BOS keeps label 0). `labels` (n,) holds the
    document after the splice, in position order; the values at [row, row + k) are ignored."""
    labels = labels.copy()
    n = len(labels)
    if k == 0:
        return Relabel(labels, np.zeros(0, np.int64), False)
    a = labels[row - 1]
    if row + k == n:  # at the end: the natural spacing
        new = a + scale * np.arange(1, k + 1, dtype=np.int64)
        if new[-1] <= limit:
            labels[row:] = new
            return Relabel(labels, np.zeros(0, np.int64), False)
    elif labels[row + k] - a > k:  # room inside the gap
        labels[row:row + k] = a + (labels[row + k] - a) * np.arange(1, k + 1, dtype=np.int64) // (k + 1)
        return Relabel(labels, np.zeros(0, np.int64), False)
    return _spread(labels, row, k, scale, limit)


def _spread(labels: I64, row: int, k: int, scale: int, limit: int) -> Relabel:
    """Relabel the smallest window around the insertion that has room, or the whole document."""
    n, old = len(labels), labels.copy()
    min_gap = max(scale // 64, 1)
    w = max(k, 4)
    while True:
        lo, hi = max(1, row - w), min(n, row + k + w)
        left, count = int(labels[lo - 1]), hi - lo
        if hi == n:  # an open end: spread at the natural spacing if the limit allows it
            right = left + scale * (count + 1)
            fits = right - scale <= limit
        else:
            right = int(labels[hi])
            fits = right - left >= (count + 1) * min_gap
        if fits:
            labels[lo:hi] = left + (right - left) * np.arange(1, count + 1, dtype=np.int64) // (count + 1)
            break
        if lo == 1 and hi == n:
            return compact(old, row, k, scale)
        w *= 2
    existing = np.r_[lo:row, row + k:hi]
    return Relabel(labels, existing[labels[existing] != old[existing]].astype(np.int64), False)


def compact(labels: I64, row: int, k: int, scale: int) -> Relabel:
    """Every row relabelled i·scale (rows [row, row + k) are new and not reported as moved)."""
    new = fresh_labels(len(labels), scale)
    existing = np.r_[0:row, row + k:len(labels)]
    return Relabel(new, existing[new[existing] != labels[existing]].astype(np.int64), True)
