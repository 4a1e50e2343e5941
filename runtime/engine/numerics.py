"""Sound float error bounds for the incremental engine, and code margins.

Why this exists: a document edited in place and a fresh document built from the same text compute
the same attention rows in different batches and key orders, so their float32 outputs can differ in
the last bits. The engine must still give *identical* codes. It does so by proving, for every code it
keeps or computes, that the exact (real-number) attention output lies in that code's Voronoi cell
with room to spare; rows it cannot prove go through one canonical float64 computation that fresh
and incremental documents share.

Notation, per (row, head): o the exact attention output, ô the float32 one, c_j the code vectors.
- `attention_bounds`: E_o >= |ô − o| for the `attend` graph (float32 scores, Softmax, MatMul), from
  the standard bounds |fl(Σ a_i b_i) − Σ a_i b_i| <= γ_n Σ |a_i b_i|, γ_n = n·u / (1 − n·u), u = 2^-24,
  valid for any summation order (ORT may block and vectorise sums as it likes).
- `code_margins`: r = min_k (s_k − s_j) / (2 |c_k − c_j|) with s_k = |c_k|² − 2 ô·c_k in float64: the
  distance from ô to the nearest Voronoi facet of code j (negative if j is not the nearest code).
  The exact o then lies at least r − E_o inside the cell (triangle inequality).
- Lazy updates (engine): adding key x with weight e_x = exp(s_x − m) moves o by at most
  e_x · (|v_x − c_j| + |o − c_j|) / den; the engine subtracts that from the margin.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vqinc.runtime.engine import kernels

F64 = npt.NDArray[np.float64]
U32 = 2.0**-24
U64 = 2.0**-53
EXP_ULPS = 16
"""Relative error allowed for a vectorised float32 exp (MLAS and Eigen are within a few ulps)."""
KEEP_EPS = 1e-9
"""A lazily kept code needs its exact output at least this far inside the cell: far more than the
float64 canonical computation's own error (~1e-12), so both paths agree on every kept code."""


def gamma(n: int | npt.NDArray, u: float = U32):
    """γ_n = n·u / (1 − n·u): relative error bound of an n-term float sum or dot product."""
    nu = np.asarray(n, np.float64) * u
    return nu / (1.0 - nu)


def attention_bounds(qnorm: F64, kmax: F64, vmax: F64, num_keys: int, head_dim: int, scale: float,
                     u: float = U32) -> tuple[F64, F64]:
    """(E_o, θ), each (H, R), for the `attend` graph (u = 2^-24) or the float64 `refine` graph (u = 2^-53)
    on rows with query norms qnorm (H, R) attending up to `num_keys` key slots with norms at most kmax
    (H,) and vmax (H,): E_o >= |ô − o|, and θ >= the relative error of each softmax weight and of `den`."""
    spread = scale * qnorm * kmax[:, None]  # |s_j| <= spread
    sigma = gamma(head_dim + 2, u) * spread  # scores: scale·q then a dh-term dot product
    g = gamma(num_keys + 1, u)
    theta = 2 * sigma + u * 2 * spread + EXP_ULPS * u + g + 4 * u  # exp(s − m), Σ, 1/Σ, ×
    theta = theta * (1 + 2 * theta)  # higher-order terms
    return ((theta + g * (1 + theta)) * vmax[:, None]) * (1 + 1e-6) + 1e-300, theta


class Codebook:
    """One layer's codebook (H, K, dh) in float64, with what margins need precomputed. Rows are laid
    out (heads, rows, dh) like the engine's state; `heads` selects a subset of heads (default: all)."""

    def __init__(self, codebook: np.ndarray):
        c = np.asarray(codebook, np.float64)
        h, k, dh = c.shape
        self.c = c  # (H, K, dh)
        self.ct = np.ascontiguousarray(c.transpose(0, 2, 1))  # (H, dh, K)
        self.sq = np.einsum("hkd,hkd->hk", c, c)  # (H, K)
        diff = c[:, :, None, :] - c[:, None, :, :]
        pair = np.sqrt(np.einsum("hjkd,hjkd->hjk", diff, diff))  # (H, K, K)
        # gap_k = (s_k − s_j) · inv[j, k] + pen[j, k]: pen = +inf for k == j and for identical code
        # vectors (equal inputs, equal scores, first index wins on both sides: a facet at infinity)
        valid = pair > 0
        self.inv_2pair = np.where(valid, 0.5 / np.where(valid, pair, 1.0), 0.0)  # (H, K, K)
        self.pen = np.where(valid, 0.0, np.inf)
        self._flat = np.arange(h)[:, None] * k  # (H, 1): row offset of head h in (H·K, ·) tables
        # float64 error of a score: γ(dh+2)(|c|² + 2|o||c|); of a gap: two scores, over 2|c_k − c_j|
        self._cmax = np.sqrt(self.sq.max(axis=1))  # (H,)
        g = gamma(dh + 2, U64) * 2 * self.inv_2pair.max(axis=(1, 2))
        self._err_const, self._err_norm = g * self.sq.max(axis=1), g * 2 * self._cmax
        self.parts = tuple(np.ascontiguousarray(a, np.float64) for a in (
            self.c, self.sq, self.inv_2pair, self.pen, self._err_const, self._err_norm, self._cmax))

    def scores(self, o: F64, heads: npt.NDArray | slice = slice(None)) -> F64:
        """(h, R, K) float64 `|c_k|² − 2 o·c_k` of rows o (h, R, dh)."""
        return self.sq[heads][:, None, :] - 2.0 * np.matmul(o, self.ct[heads])

    def margins(self, o: F64, codes: npt.NDArray[np.int64], heads: npt.NDArray | slice = slice(None),
                scores: F64 | None = None) -> tuple[F64, F64]:
        """(margin, radius), each (h, R): distance of o (h, R, dh) to the nearest facet of the cell of its
        code (codes (h, R); negative when another code is nearer) and |o − c_code|, both minus/plus their
        float64 error."""
        if kernels.NATIVE is not None:
            return self._margins_native(o, codes, heads)
        s = self.scores(o, heads) if scores is None else scores  # (h, R, K)
        idx = (self._flat[heads] + codes).reshape(-1)  # (h·R,) rows of the (H·K, ·) tables
        kk = s.shape[-1]
        sj = s.reshape(-1, kk)[np.arange(idx.size), codes.reshape(-1)].reshape(codes.shape)
        gap = (s - sj[..., None]) * self.inv_2pair.reshape(-1, kk)[idx].reshape(s.shape)
        gap += self.pen.reshape(-1, kk)[idx].reshape(s.shape)
        # |o − c_j|² = |o|² − 2 o·c_j + |c_j|² = |o|² + s_j, rounded up by its float64 error
        o2 = np.einsum("hrd,hrd->hr", o, o)
        onorm = np.sqrt(o2)
        err = self._err_const[heads][:, None] + self._err_norm[heads][:, None] * onorm + 1e-300
        d2_err = gamma(o.shape[-1] + 4, U64) * 2 * (onorm + self._cmax[heads][:, None]) ** 2
        radius = np.sqrt(np.maximum(o2 + sj, 0.0) + d2_err) * (1 + 1e-12)
        return gap.min(axis=-1) - err, radius

    def _margins_native(self, o: F64, codes: npt.NDArray[np.int64], heads: npt.NDArray | slice) -> tuple[F64, F64]:
        """`margins` in C (_kernels.c): scores recomputed there, the same error terms."""
        h, r, dh = o.shape
        parts = self.parts if isinstance(heads, slice) and heads == slice(None) else self._select(heads)
        margin, radius = np.empty((h, r)), np.empty((h, r))
        kernels.NATIVE.margins(np.ascontiguousarray(o, np.float64), np.ascontiguousarray(codes, np.int64), *parts,
                       margin, radius, h, r, self.c.shape[1], dh)
        return margin, radius

    def _select(self, heads) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(a[heads]) for a in self.parts)

    def nearest(self, o: F64, heads: npt.NDArray | slice = slice(None)) -> tuple[npt.NDArray[np.int64], F64]:
        """(codes (h, R), scores) of rows o (h, R, dh) by float64 scores, first index on ties: the
        encode of the float64 paths."""
        s = self.scores(o, heads)
        return np.argmin(s, axis=-1).astype(np.int64), s

    def value_distances(self, v: F64) -> F64:
        """(H, X, K): |v_x − c_k| for value rows v (H, X, dh), rounded up past their float64 error
        (|v|² − 2 v·c + |c|² with an error below γ(dh+2)(|v| + |c|)² before the square root)."""
        v2 = np.einsum("hxd,hxd->hx", v, v)[..., None]
        d2 = v2 - 2.0 * np.matmul(v, self.ct) + self.sq[:, None, :]
        bound = gamma(v.shape[-1] + 2, U64) * (np.sqrt(v2) + np.sqrt(self.sq)[:, None, :]) ** 2
        return np.sqrt(np.maximum(d2, 0.0) + bound) * (1 + 1e-12)
