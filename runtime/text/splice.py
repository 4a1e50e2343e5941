"""The one single-splice arithmetic: where two sequences first differ, and the minimal splice between them.

Shared by the tokeniser (text and token splices), the document (a splice to the canonical tokens), the
past-KV baseline (cut the cache at the first changed token) and the benchmarks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


def first_difference(old: npt.ArrayLike, new: npt.ArrayLike) -> int:
    """Index of the first position where two id arrays differ (the shorter length if one is a prefix)."""
    old, new = np.asarray(old), np.asarray(new)
    lim = min(len(old), len(new))
    neq = np.flatnonzero(old[:lim] != new[:lim])
    return int(neq[0]) if len(neq) else lim


def id_splice(old: npt.ArrayLike, new: npt.ArrayLike) -> tuple[int, int, I64]:
    """Minimal single splice turning ids `old` into `new`: (start, end in old, replacement)."""
    old, new = np.asarray(old, np.int64), np.asarray(new, np.int64)
    p = first_difference(old, new)
    tail = min(len(old), len(new)) - p
    s = first_difference(old[len(old) - tail:][::-1], new[len(new) - tail:][::-1])
    return p, len(old) - s, new[p:len(new) - s]


def common_prefix(x: str, y: str) -> int:
    """Length of the common prefix of two strings, comparing in chunks (C speed) before the last few."""
    lim, p, step = min(len(x), len(y)), 0, 4096
    while step:
        while p + step <= lim and x[p : p + step] == y[p : p + step]:
            p += step
        step //= 8
    while p < lim and x[p] == y[p]:
        p += 1
    return p


def text_splice(old: str, new: str) -> tuple[int, int, str]:
    """The minimal single splice `(start, end, replacement)` with `old[:start] + replacement + old[end:] == new`."""
    p = common_prefix(old, new)
    s = common_prefix(old[p:][::-1], new[p:][::-1])
    return p, len(old) - s, new[p : len(new) - s]
