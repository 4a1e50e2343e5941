"""Attention state of one layer: recomputing rows with the `attend` graph, and the lazy update of
rows that only see a few keys come and go.

A row's attention summary (per head) is m (reference point), den = Σ exp(s_j − m), a margin (how far
the exact output lies inside its code's Voronoi cell) and a radius (how far it lies from its code
vector). When keys are added or removed, with weights e_x = exp(s_x − m):
    den' = den ± Σ e_x,   o' − o = Σ ±e_x (v_x − o) / den',  |o' − o| <= Σ e_x (|v_x − c_code| + radius) / den'
and a key whose k, v changed moves o by e_new (v_new − v_old) + (e_new − e_old)(v_old − o), small when
the key barely changed. The margin shrinks and the radius grows by that bound; the code provably stays
while the margin is positive. Every float step is bounded (numerics.py), so the proof covers the
float computation, not only exact arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vqinc.runtime.config import ModelSpec
from vqinc.runtime.numerics import EXP_ULPS, KEEP_EPS, U32, U64, Codebook, attention_bounds, gamma
from vqinc.runtime.state import LayerState

I64 = npt.NDArray[np.int64]
OVERFLOW = 80.0
"""A key whose weight exp(s − m) exceeds e^80 (near float32's limit) is left to a full recomputation."""
CHUNK_ROWS = 192
"""Recomputes of more rows than this run in chunks over the keys each chunk can see (a causal saving)."""
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


def lazy_update(layer: LayerState, slots: I64, qpos: I64, keys: KeyDelta, codebook: Codebook,
                spec: ModelSpec) -> npt.NDArray[np.bool_]:
    """Update the attention summaries of queries `slots` (positions `qpos`) for `keys`, in place.

    Returns a mask over `slots` of rows that must be recomputed instead (their code might change, or
    the update is numerically unsafe); those rows' summaries are left untouched. The work per (row,
    key) is two float32 matmuls and a few float32 passes; roundings are covered by one relative bound
    per head (`slack`)."""
    n, x = len(slots), keys.size
    if not n or not x:
        return np.zeros(n, bool)
    h, dh, kc = spec.num_heads, spec.head_dim, spec.num_codes
    a, r, mod = keys.added, keys.removed, keys.modified
    kv_head = np.arange(h) // spec.group
    scale = np.float32(dh**-0.5)
    k = keys.k[kv_head]  # (H, X, dh)
    m_rows = layer.m[:, slots]  # (H, n) f32
    z = np.matmul(layer.q[:, slots], k.transpose(0, 2, 1))  # (H, n, X) f32
    z *= scale
    z -= m_rows[..., None]
    # one relative error bound per head for every float32 weight exp(z): dot product, ×scale, −m, exp
    knorm = np.sqrt(np.einsum("hxd,hxd->hx", k, k).max(axis=1)).astype(np.float64) * (1 + 1e-5)  # (H,)
    spread = float(scale) * layer.qnorm[:, slots].max(axis=1) * knorm  # (H,) >= |s|
    eps = gamma(dh + 2) * spread + U32 * (4 * spread + 2 * np.abs(m_rows).max(axis=1)) + EXP_ULPS * U32
    slack = (np.exp(eps) * (1 + gamma(x + 4)))[:, None]  # also the float32 sums and the rounding of |v − c|
    if z.max() > OVERFLOW - 1:  # a weight near float32's range: those rows are recomputed
        overflow = (z.max(axis=2) > OVERFLOW - 1).any(axis=0)
        np.minimum(z, OVERFLOW, out=z)
    else:
        overflow = False
    e = np.exp(z, out=z)
    if keys.pos.max() > qpos.min():  # some keys sit after some of these queries
        e *= keys.pos[None, None, :] <= qpos[None, :, None]
    dist = codebook.value_distances(keys.v[kv_head].astype(np.float64))  # (H, X, K) |v_x − c_k|
    code_at = (np.arange(h * n) * (kc + 2) + layer.codes[slots].T.ravel())  # flat index of (h, i, code)
    # added and removed keys: one matmul gives Σ e |v − c_k| for every k, Σ e added, Σ e removed
    w = np.zeros((h, a + r + mod, kc + 2), np.float32)
    w[..., :kc] = dist[:, :a + r + mod]
    w[:, :a, kc] = 1
    w[:, a:a + r, kc + 1] = 1
    ew = e[..., :a + r + mod]
    if mod:  # modified keys: |e_new − e_old| in place of e, and each key counted once
        ew = ew.copy()
        ew[..., a + r:] = np.abs(e[..., a + r + mod:] - e[..., a + r:a + r + mod])
        w[:, a + r:, kc + 1] = 1  # Σ |Δe| joins the removed column: both multiply (|v − c| + radius)
    sums = np.matmul(ew, w).reshape(h * n, kc + 2)
    to_code = sums.ravel()[code_at].reshape(h, n).astype(np.float64)
    e_add = sums[:, kc].reshape(h, n).astype(np.float64)
    spent = e_add + sums[:, kc + 1].reshape(h, n)  # Σ weights that move o by (|v − c| + radius) each
    if mod:
        e_new = e[..., a + r + mod:]
        v64 = keys.v[kv_head].astype(np.float64)
        dv = np.sqrt(((v64[:, a + r + mod:] - v64[:, a + r:a + r + mod]) ** 2).sum(axis=-1))  # (H, M)
        to_code += np.matmul(e_new, dv[..., None].astype(np.float32))[..., 0]
        change = np.matmul(e[..., a + r:], np.concatenate([-np.ones(mod), np.ones(mod)]).astype(np.float32))
        moved_mass = np.matmul(e[..., a + r:], np.ones(2 * mod, np.float32)).astype(np.float64)
        fuzz = (slack - 1) * moved_mass * (dist[:, a + r:].max(axis=(1, 2))[:, None] + layer.radius[:, slots])
    else:
        change, moved_mass, fuzz = 0.0, 0.0, 0.0
    rem_only = np.matmul(e[..., a:a + r], np.ones(r, np.float32)) if r else 0.0
    den0 = layer.den[:, slots]
    den = den0 + e_add - rem_only + change
    total = e_add + rem_only + moved_mass  # every weight entering den's update
    # float32 exp may underflow to 0: an absolute error below 2^-126 per key
    err = layer.den_err[:, slots] + total * (slack - 1) + gamma(6, U64) * (den0 + total) + x * 2.0**-126
    radius = layer.radius[:, slots]
    low = den - err
    safe = (low > 0) & (err <= CANCELLATION * den)
    mu = ((to_code + radius * spent) * slack + fuzz) / np.where(safe, low, 1.0)
    margin = layer.margin[:, slots] - mu
    need = (~safe | (margin <= KEEP_EPS)).any(axis=0) | overflow
    if not need.all():
        keep, cols = slots[~need], ~need
        layer.den[:, keep] = den[:, cols]
        layer.den_err[:, keep] = err[:, cols]
        layer.margin[:, keep] = margin[:, cols]
        layer.radius[:, keep] = radius[:, cols] + mu[:, cols]
    return need


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
    if len(slots) <= CHUNK_ROWS:  # few rows: attend over the whole key buffer, no copies
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
    canonical = np.nonzero(rows.unsure().any(axis=0))[0]
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
        self.margin, self.radius = np.zeros(shape), np.zeros(shape)

    def store(self, heads, idx: I64, o: np.ndarray, m: np.ndarray, den: np.ndarray, codes: np.ndarray, u: float,
              num_keys: int, scores: np.ndarray | None = None) -> None:
        """Rows idx of `heads` computed with unit roundoff u: o (h, r, dh) float64, m, den, codes (h, r)."""
        margin, radius = self.codebook.margins(o, codes, heads, scores)
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
        self.codes[at], self.margin[at], self.radius[at] = codes, margin - e_o, radius + e_o
        self.m[at], self.den[at], self.den_err[at] = m32, den, 2 * theta * den

    def unsure(self) -> npt.NDArray[np.bool_]:
        """(H, R): is the exact output not provably more than KEEP_EPS inside its code's cell?"""
        return self.margin <= KEEP_EPS

    def commit(self) -> None:
        layer, slots = self.layer, self.slots
        layer.m[:, slots], layer.den[:, slots], layer.den_err[:, slots] = self.m, self.den, self.den_err
        layer.margin[:, slots], layer.radius[:, slots] = self.margin, self.radius
