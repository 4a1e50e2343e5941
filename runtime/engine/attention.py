"""Attention state of one layer: recomputing rows (C float64 for a few rows, the `attend` graph for
more), and the lazy update of rows that only see a few keys come and go.

A row's attention state (per head) is its output o (float32) with a bound o_err on |o − exact|, m
(reference point), den = Σ exp(s_j − m) with its bound den_err, and a margin (how far the exact output
provably lies inside its code's Voronoi cell). When keys come and go, with weights e_x = exp(s_x − m):
    den' = den ± Σ e_x,   o' = (den·o ± Σ e_x v_x) / den',   |o'_exact − o_exact| <= Σ e_x (|v_x| + |o_exact|) / den'
with |o_exact| <= min(vmax, |o| + o_err). First the cheap test: if that movement is at most a quarter of
the margin, o stays and o_err absorbs it (the C kernel only; the numpy path always updates); otherwise o'
is computed, the code kept while either margin bound (through the stored outputs, or margin − movement)
allows, else rescored against the codebook, which proves the nearest code (old or new) whenever o' lies
far enough inside a cell; otherwise the row is recomputed. Every float step is bounded (numerics.py,
_kernels.c), so the proof covers the float computation, not only exact arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vqinc.runtime.engine import kernels
from vqinc.runtime.engine.numerics import EXP_ULPS, KEEP_EPS, U32, U64, Codebook, attention_bounds, gamma
from vqinc.runtime.engine.state import LayerState
from vqinc.runtime.format.spec import ModelSpec

I64 = npt.NDArray[np.int64]
OVERFLOW = 80.0
"""A key whose weight exp(s − m) exceeds e^80 (near float32's limit) is left to a full recomputation."""
CHUNK_ROWS = 192
"""Recomputes of more rows than this run in chunks over the keys each chunk can see (a causal saving)."""
NATIVE_ROWS = 32
"""Recomputes of at most this many rows run in float64 in C (_kernels.c attend64) instead of the `attend`
graph: for a few rows the graph call costs more than the arithmetic (with the blocked kernel, 32 rows over
1,024 keys take ~0.6 ms against ~0.9 ms for the graph inside an edit), and float64 rows are almost never
undecided."""
EMPTY_SLOTS = np.zeros(0, np.int64)
CANCELLATION = 0.25
"""A row whose denominator's error bound exceeds this fraction of it is recomputed (the movement bound
divides by den − err, so it stays sound below this; the limit only keeps it from growing useless)."""


@dataclass(frozen=True)
class KeyDelta:
    """Keys of one layer that change for the queries of an edit: added (new rows), removed (deleted
    rows) and modified (rows whose k, v changed: old and new values, one position)."""

    k: np.ndarray  # (Hkv, A + R + 2M, dh) f32: added, removed, old of modified, new of modified
    v: np.ndarray  # (Hkv, A + R + 2M, dh) f32
    pos: I64  # (A + R + 2M,) position from which queries see each key
    added: int
    removed: int

    @property
    def size(self) -> int:
        return int(self.pos.shape[0])

    @property
    def modified(self) -> int:
        return (self.size - self.added - self.removed) // 2

    @classmethod
    def build(cls, added, removed, old, new) -> KeyDelta:
        """Each argument is (k (Hkv, X, dh), v (Hkv, X, dh), pos (X,)); old and new share positions."""
        parts = (added, removed, old, new)
        return cls(np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1),
                   np.concatenate([p[2] for p in parts]), len(added[2]), len(removed[2]))


@dataclass(frozen=True)
class LazyResult:
    """Masks over the lazy rows: `need` must be recomputed (left untouched); `changed` kept a proven,
    different code (rescored from the updated output; its summaries are stored)."""

    need: npt.NDArray[np.bool_]
    changed: npt.NDArray[np.bool_]


def lazy_update(layer: LayerState, slots: I64, qpos: I64, keys: KeyDelta, codebook: Codebook,
                spec: ModelSpec, vmax: np.ndarray) -> LazyResult:
    """Update the attention state of queries `slots` (positions `qpos`) for `keys`, in place.

    Each (row, head) keeps its attention output o (float32) with a bound o_err on its distance to the
    exact output. With weights e_x = exp(s_x − m) of the keys that come and go:
        den' = den ± Σ e_x,   o' = (den·o ± Σ e_x v_x) / den'
    computed in float64, and o_err grows by everything this step can get wrong (_kernels.c lists the
    terms). The code stays while the margin minus the movement |o' − o| and both error bounds stays
    positive; otherwise o' is rescored against the codebook, which proves the nearest code (the old one
    or a new one) without recomputing the row whenever o' lies far enough inside a cell. `vmax` (Hkv,)
    bounds |v| of every value of the layer (the exact output is a mean of values)."""
    n, x = len(slots), keys.size
    if not n or not x:
        return LazyResult(np.zeros(n, bool), np.zeros(n, bool))
    if kernels.NATIVE is not None:  # the bounds below are computed inside the C pass
        return _lazy_update_native(layer, slots, qpos, keys, np.asarray(vmax, np.float64), codebook, spec)
    h, dh = spec.num_heads, spec.head_dim
    kv_head = np.arange(h) // spec.group
    scale = np.float32(dh**-0.5)
    k = keys.k[kv_head]  # (H, X, dh)
    m_rows = layer.m[:, slots]  # (H, n) f32
    # one relative error bound per head for every weight exp(z): float32 dot product, ×scale, −m, exp
    knorm = np.sqrt(np.einsum("hxd,hxd->hx", k, k).max(axis=1)).astype(np.float64) * (1 + 1e-5)  # (H,)
    spread = float(scale) * layer.qnorm[:, slots].max(axis=1) * knorm  # (H,) >= |s|
    eps = gamma(dh + 2) * spread + U32 * (4 * spread + 2 * np.abs(m_rows).max(axis=1)) + EXP_ULPS * U32
    slack = np.exp(eps) * (1 + gamma(x + 4))  # (H,)
    v64 = keys.v.astype(np.float64)
    vnorm = np.sqrt(np.einsum("hxd,hxd->hx", v64, v64)) * (1 + 1e-12)  # (Hkv, X)
    vmax_h = np.maximum(np.asarray(vmax, np.float64), vnorm.max(axis=1))[kv_head] * (1 + 1e-12)  # (H,)
    return _lazy_update_numpy(layer, slots, qpos, keys, vnorm[kv_head], vmax_h, slack, codebook, spec, m_rows)


def _lazy_update_numpy(layer: LayerState, slots: I64, qpos: I64, keys: KeyDelta, vnorm: np.ndarray,
                       vmax: np.ndarray, slack: np.ndarray, codebook: Codebook, spec: ModelSpec,
                       m_rows: np.ndarray) -> LazyResult:
    """`lazy_update` in numpy (where the C kernels are not built): the same steps and bounds."""
    h, dh = spec.num_heads, spec.head_dim
    a, r, mod = keys.added, keys.removed, keys.modified
    kv_head = np.arange(h) // spec.group
    z = np.matmul(layer.q[:, slots], keys.k[kv_head].transpose(0, 2, 1))  # (H, n, X) f32
    z *= np.float32(dh**-0.5)
    z -= m_rows[..., None]
    overflow = (z > OVERFLOW - 1).any(axis=(0, 2))  # a weight near float32's range: recompute the row
    e = np.exp(np.minimum(z, OVERFLOW).astype(np.float64))  # float64: within the bound of a float32 exp
    e *= keys.pos[None, None, :] <= qpos[None, :, None]  # keys after a query are not visible to it
    sign = np.concatenate([np.ones(a), -np.ones(r + mod), np.ones(mod)])
    add, rem = e[..., :a].sum(-1), e[..., a:a + r].sum(-1)
    change = (e[..., a + r + mod:] - e[..., a + r:a + r + mod]).sum(-1)
    moved = e[..., a + r:].sum(-1)
    den0, derr = layer.den[:, slots], layer.den_err[:, slots]
    sl = slack[:, None]
    den = den0 + add - rem + change
    total = add + rem + moved
    err = derr + total * (sl - 1) + gamma(6, U64) * (den0 + total) + keys.size * 2.0**-126
    safe = (den - err > 0) & (err <= CANCELLATION * den) & ~overflow[None, :]
    o_old = layer.o[:, slots].astype(np.float64)  # (H, n, dh)
    onorm = np.sqrt(np.einsum("hnd,hnd->hn", o_old, o_old)) * (1 + 1e-12)
    ev = np.einsum("hnx,hx->hn", e, vnorm)
    num = den0[..., None] * o_old + np.matmul(e * sign, keys.v[kv_head].astype(np.float64))
    on = (num / np.where(safe, den, 1.0)[..., None]).astype(np.float32)
    on64 = on.astype(np.float64)
    gsum = gamma(keys.size + 8, U64)
    oerr0 = layer.o_err[:, slots]
    en = derr * onorm + (den0 + derr) * oerr0 + (sl - 1) * sl * ev + gsum * (den0 * onorm + ev) + \
        keys.size * 2.0**-126 * vmax[:, None]
    oe = (en + vmax[:, None] * err) / np.where(safe, den, 1.0) * (1 + gsum) + \
        (2 * U32 + gsum) * np.sqrt(np.einsum("hnd,hnd->hn", on64, on64)) * (1 + 1e-12)
    delta = np.sqrt(np.einsum("hnd,hnd->hn", on64 - o_old, on64 - o_old)) * (1 + 1e-12)
    margin = layer.margin[:, slots] - delta - oerr0 - oe
    codes = layer.codes[slots].T.copy()  # (H, n)
    for hh in range(h):  # rescore from o' where the cheap bound does not prove the code
        idx = np.nonzero(safe[hh] & ~(margin[hh] > KEEP_EPS))[0]
        if len(idx):
            c, sc = codebook.nearest(on64[hh, idx][None], [hh])
            f, _ = codebook.margins(on64[hh, idx][None], c, [hh], sc)
            codes[hh, idx], margin[hh, idx] = c[0], f[0] - oe[hh, idx]
    need = ~(safe & (margin > KEEP_EPS)).all(axis=0)
    keep = ~need
    rows = slots[keep]
    changed = keep & (codes != layer.codes[slots].T).any(axis=0)
    layer.den[:, rows], layer.den_err[:, rows] = den[:, keep], err[:, keep]
    layer.o[:, rows], layer.o_err[:, rows], layer.margin[:, rows] = on[:, keep], oe[:, keep], margin[:, keep]
    layer.codes[rows] = codes[:, keep].T
    return LazyResult(need, changed)


def _lazy_update_native(layer: LayerState, slots: I64, qpos: I64, keys: KeyDelta, vmax: np.ndarray,
                        codebook: Codebook, spec: ModelSpec) -> LazyResult:
    """`lazy_update` in one C pass over the rows (_kernels.c), its bounds (|v_x|, the largest |v|, the
    weights' `slack`) computed there as the numpy path computes them, from the rows' |q| and m."""
    n = len(slots)
    need, changed = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    c, sq, inv, pen, err_const, err_norm, _ = codebook.parts
    kernels.NATIVE.lazy_update(
        layer.q, np.ascontiguousarray(keys.k, np.float32), np.ascontiguousarray(keys.v, np.float32),
        np.ascontiguousarray(keys.pos, np.int64), np.ascontiguousarray(slots, np.int64),
        np.ascontiguousarray(qpos, np.int64), layer.m, layer.codes, layer.qnorm, np.ascontiguousarray(vmax),
        layer.den, layer.den_err, layer.o, layer.o_err, layer.margin, codebook.ct, sq, inv, pen, err_const, err_norm,
        need, changed, spec.num_heads, spec.num_kv_heads, layer.q.shape[1], spec.head_dim, keys.size, c.shape[1], n,
        keys.added, keys.removed, keys.modified, float(np.float32(spec.head_dim**-0.5)), float(gamma(6, U64)),
        KEEP_EPS, CANCELLATION, float(EXP_ULPS))
    return LazyResult(need.view(bool), changed.view(bool))


@dataclass(frozen=True)
class Recomputed:
    """Codes of recomputed rows, and how many needed the float64 paths."""

    codes: np.ndarray  # (R, H) i64
    refined: int
    """(row, head) pairs the float32 result could not decide, settled in float64."""
    canonical_rows: int
    """Rows float64 could not decide either (true near-ties): computed alone, keys in position order."""
    canonical_pairs: int


AttendFn = Callable[..., list[np.ndarray]]


def recompute_rows(run_attend: AttendFn, run_refine: AttendFn, layer: LayerState, slots: I64, pos: I64, order: I64,
                   kmax: np.ndarray, vmax: np.ndarray, codebook: Codebook, spec: ModelSpec) -> Recomputed:
    """Recompute the attention of rows `slots` over all their visible keys and store their summaries.

    Three tiers, each proving codes or passing rows on: the float32 `attend` graph on all rows; float64
    (numpy, per head) for the (row, head) pairs whose float32 margin is below its error bound; and for
    rows float64 cannot decide either, the float64 `refine` graph on that row alone with exactly its keys
    in position order. The last is the canonical computation: a fresh document reaching the same
    near-tie row runs the very same computation on the very same inputs, so summation order cannot
    split them."""
    rows = _Rows(layer, slots, kmax, vmax, codebook, spec)
    if kernels.NATIVE is not None and len(slots) <= NATIVE_ROWS:  # a few rows: float64 in C, no graph call
        # attend64, then what rows.store does with its float64 result (codes, margins, bounds), in one C call
        _, sq, inv, pen, err_const, err_norm, _ = codebook.parts
        kernels.NATIVE.recompute64(
            layer.q, layer.k, layer.v, pos, order, np.ascontiguousarray(slots, np.int64), layer.qnorm,
            np.ascontiguousarray(kmax, np.float64), np.ascontiguousarray(vmax, np.float64), codebook.ct, sq, inv, pen,
            err_const, err_norm, rows.o, rows.m, rows.den, rows.den_err, rows.o_err, rows.margin, rows.codes,
            spec.num_heads, spec.num_kv_heads, layer.k.shape[1], spec.head_dim, len(slots), len(order),
            codebook.c.shape[1], float(np.float32(spec.head_dim**-0.5)), float(EXP_ULPS))
    elif len(slots) <= CHUNK_ROWS:  # few rows: attend over the whole key buffer, no copies
        o, m, den, codes = run_attend(layer.q[:, slots], layer.k, layer.v, pos[slots], pos)
        rows.store(slice(None), np.arange(len(slots)), o.astype(np.float64), m, den, codes.T, U32, layer.k.shape[1])
    else:  # many rows (a rebuild, a dense suffix): chunks in position order, each over the keys it can see
        by_pos = np.argsort(pos[slots], kind="stable")
        for idx in np.array_split(by_pos, -(-len(slots) // CHUNK_ROWS)):
            keys = order[:int(pos[slots[idx]].max()) + 1]
            k, v = np.ascontiguousarray(layer.k[:, keys]), np.ascontiguousarray(layer.v[:, keys])
            o, m, den, codes = run_attend(layer.q[:, slots[idx]], k, v, pos[slots[idx]], np.arange(len(keys)))
            rows.store(slice(None), idx, o.astype(np.float64), m, den, codes.T, U32, len(keys))
    unsure = rows.unsure()  # (H, R)
    refined = int(unsure.sum())
    for h in np.nonzero(unsure.any(axis=1))[0]:
        r = np.nonzero(unsure[h])[0]
        o64, m64, den64 = _attention64(layer, h, slots[r], pos, spec)
        code, s = codebook.nearest(o64[None], [h])
        rows.store([h], r, o64[None], m64[None], den64[None], code, U64, layer.k.shape[1], s)
    canonical = np.nonzero(rows.unsure().any(axis=0))[0] if refined else EMPTY_SLOTS
    pairs = 0
    for r in canonical:
        b = slots[r]
        keys = order[:pos[b] + 1]
        pairs += len(keys)
        o, m, den = run_refine(layer.q[:, b:b + 1], np.ascontiguousarray(layer.k[:, keys]),
                               np.ascontiguousarray(layer.v[:, keys]), pos[b:b + 1], np.arange(len(keys)))
        code, s = codebook.nearest(o)
        rows.store(slice(None), np.array([r]), o, m, den, code, U64, len(keys), s)
    rows.commit()
    return Recomputed(rows.codes.T, refined, len(canonical), pairs)


def _attention64(layer: LayerState, h: int, rows: I64, pos: I64, spec: ModelSpec):
    """Head h of rows over all their visible keys in float64: (o (r, dh), m (r,), den (r,))."""
    kv = h // spec.group
    q = layer.q[h, rows].astype(np.float64) * np.float64(np.float32(spec.head_dim**-0.5))
    s = q @ layer.k[kv].astype(np.float64).T  # (r, C)
    visible = (pos[None, :] >= 0) & (pos[None, :] <= pos[rows][:, None])
    s = np.where(visible, s, -np.inf)
    m = s.max(axis=1)
    p = np.exp(s - m[:, None])
    den = p.sum(axis=1)
    return (p @ layer.v[kv].astype(np.float64)) / den[:, None], m, den


class _Rows:
    """Summaries of rows being recomputed, (heads, rows) like the layer state, before they are stored."""

    def __init__(self, layer: LayerState, slots: I64, kmax: np.ndarray, vmax: np.ndarray, codebook: Codebook,
                 spec: ModelSpec):
        self.layer, self.slots, self.codebook, self.spec = layer, slots, codebook, spec
        kv_head = np.arange(spec.num_heads) // spec.group
        self.kmax, self.vmax = kmax[kv_head], vmax[kv_head]
        self.qnorm = layer.qnorm[:, slots].astype(np.float64)
        shape = (spec.num_heads, len(slots))
        self.codes = np.zeros(shape, np.int64)
        self.m, self.den, self.den_err = np.zeros(shape, np.float32), np.zeros(shape), np.zeros(shape)
        self.margin, self.o_err = np.zeros(shape), np.zeros(shape)
        self.o = np.zeros((*shape, spec.head_dim), np.float32)

    def store(self, heads, idx: I64, o: np.ndarray, m: np.ndarray, den: np.ndarray, codes: np.ndarray, u: float,
              num_keys: int, scores: np.ndarray | None = None) -> None:
        """Rows idx of `heads` computed with unit roundoff u: o (h, r, dh) float64, m, den, codes (h, r)."""
        margin, _ = self.codebook.margins(o, codes, heads, scores)
        hs = np.arange(self.spec.num_heads)[heads]
        e_o, theta = attention_bounds(self.qnorm[hs][:, idx], self.kmax[hs], self.vmax[hs], num_keys,
                                      self.spec.head_dim, float(np.float32(self.spec.head_dim**-0.5)), u)
        if m.dtype == np.float32:  # the float32 graph: m is the stored reference point as it is
            m32, den = m, den.astype(np.float64)
        else:  # float64 paths: store m in float32 and rescale den to it
            m32 = m.astype(np.float32)
            den = den * np.exp(m - m32.astype(np.float64))
        at = (slice(None), slice(None)) if isinstance(heads, slice) and len(idx) == self.codes.shape[1] \
            else np.ix_(hs, idx)
        o32 = o.astype(np.float32)  # stored in float32: its rounding joins the error bound
        o_err = e_o + (0.0 if u == U32 else U32 * np.sqrt(np.einsum("hrd,hrd->hr", o, o)) * (1 + 1e-6))
        self.codes[at], self.margin[at], self.o_err[at], self.o[at] = codes, margin - e_o, o_err, o32
        self.m[at], self.den[at], self.den_err[at] = m32, den, 2 * theta * den

    def unsure(self) -> npt.NDArray[np.bool_]:
        """(H, R): is the exact output not provably more than KEEP_EPS inside its code's cell?"""
        return self.margin <= KEEP_EPS

    def commit(self) -> None:
        layer, slots = self.layer, self.slots
        layer.m[:, slots], layer.den[:, slots], layer.den_err[:, slots] = self.m, self.den, self.den_err
        layer.margin[:, slots], layer.o_err[:, slots], layer.o[:, slots] = self.margin, self.o_err, self.o
