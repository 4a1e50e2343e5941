"""Propagation of one token-level splice through the stage graphs (DESIGN.md §4).

Per layer, with C = positions whose layer input changed:
  1. QKV for C (plus, in "rope" mode, every position whose index shifted).
  2. Attention accumulators: queries whose q changed are recomputed over all their keys; every other
     query that sees a changed key has the old keys' contributions subtracted and the new ones added
     (float64 accumulators; a query whose denominator cancels by > 1e6x is recomputed instead).
  3. Re-encode only queries whose attention output may have crossed a code boundary: a query whose
     output moved less than its stored margin keeps its code (triangle inequality) and its margin
     shrinks by the distance moved.
  4. Out-projection + MLP for positions whose input or code changed; rows whose output changed form
     the next layer's C.
Then the final norm for the last layer's changed rows and the running pooled sum.
Every multiply-heavy step runs in an ORT session; numpy gathers, scatters and keeps books.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vqinc.runtime.manifest import Manifest
from vqinc.runtime.sessions import Sessions
from vqinc.runtime.state import DocState

I64 = npt.NDArray[np.int64]
EMPTY = np.zeros(0, np.int64)
CANCELLATION = 1e-6  # den may shrink by this factor before the subtraction is distrusted
NEAR_TIE = 1e-5  # margins below this are counted as float-tie risks in the stats
ATTN_CHUNK_BYTES = 64 << 20


@dataclass
class EditStats:
    """What one edit cost, next to what a full recompute of the resulting document costs."""

    n_delete: int
    n_insert: int
    num_tokens: int
    rows: dict[str, list[int]] = field(default_factory=dict)
    """stage -> rows run per layer: qkv, attn_full (queries recomputed), attn_update (queries
    updated), encode, post."""
    macs: int = 0
    full_macs: int = 0
    near_ties: int = 0
    """Encoded (row, head) pairs whose code margin was below 1e-5: where float noise could flip a code."""
    wall_ms: float = 0.0

    @property
    def savings(self) -> float:
        return self.full_macs / max(self.macs, 1)


def full_macs(man: Manifest, n: int) -> int:
    """Multiply-accumulates of computing a document of n rows from scratch with the stage graphs."""
    g = man.graphs
    per_row = g["qkv"].macs_per_row + g["encode"].macs_per_row + g["post"].macs_per_row
    pairs = n * (n + 1) // 2
    return man.num_layers * (n * per_row + pairs * g["attention"].macs_per_row) + g["head"].macs_per_row


def _union(*arrays: I64) -> I64:
    return np.unique(np.concatenate(arrays)) if arrays else EMPTY


class Engine:
    """Stateless driver: `apply(state, row, n_delete, new_ids)` mutates a DocState in place."""

    def __init__(self, sessions: Sessions):
        self.s = sessions
        m = sessions.manifest
        self.man = m
        self.positions = m.positions
        self.pooling = m.pooling
        self.macs = {k: v.macs_per_row for k, v in m.graphs.items()}

    def apply(self, st: DocState, row: int, n_delete: int, new_ids: I64) -> EditStats:
        """Replace rows [row, row + n_delete) by `new_ids`; validation is the caller's job."""
        t0 = time.perf_counter()
        s, r, n_old = len(new_ids), n_delete, st.n
        n = n_old - r + s
        stats = EditStats(n_delete=r, n_insert=s, num_tokens=n,
                          rows={k: [] for k in ("qkv", "attn_full", "attn_update", "encode", "post")})
        new_slots = st.alloc(s)  # before freeing: freed slots keep their old values during this edit
        freed = st.order[row:row + r].copy()
        st.order = np.concatenate([st.order[:row], new_slots, st.order[row + r:]])
        st.ids = np.concatenate([st.ids[:row], np.asarray(new_ids, np.int64), st.ids[row + r:]])
        is_new = np.zeros(st.capacity, bool)
        is_new[new_slots] = True
        new_rows = np.arange(row, row + s)
        shifted = np.arange(row + s, n) if s != r else EMPTY
        changed = _union(new_rows, shifted) if self.positions == "learned" else new_rows
        moved_pos = shifted if self.positions == "rope" else EMPTY

        if len(changed):
            (x0,) = self.s.embed.run(ids=st.ids[changed], positions=changed)
            st.layers[0].x[st.order[changed]] = x0
        for layer_idx in range(self.man.num_layers):
            changed = self._layer(st, layer_idx, changed, moved_pos, row, r, s, freed, is_new, stats)
        self._head(st, changed, freed, is_new, stats)
        st.free.extend(int(x) for x in freed)
        stats.full_macs = full_macs(self.man, n)
        stats.wall_ms = (time.perf_counter() - t0) * 1e3
        return stats

    # -- one layer ---------------------------------------------------------------------------
    def _layer(self, st: DocState, li: int, changed: I64, moved_pos: I64, row: int, r: int, s: int,
               freed: I64, is_new: np.ndarray, stats: EditStats) -> I64:
        L, order, n = st.layers[li], st.order, st.n
        dirty = _union(changed, moved_pos)  # positions whose q/k/v must be recomputed
        survivors = dirty[~is_new[order[dirty]]]
        old_k, old_v = L.k[order[survivors]], L.v[order[survivors]]  # fancy indexing copies
        if len(dirty):
            q, k, v = self.s.qkv[li].run(x=L.x[order[dirty]], positions=dirty)
            sl = order[dirty]
            L.q[sl], L.k[sl], L.v[sl] = q, k, v
            stats.macs += len(dirty) * self.macs["qkv"]
        stats.rows["qkv"].append(len(dirty))

        # Queries with unchanged q that may see a changed key: update their accumulators.
        first_key = min(([int(dirty[0])] if len(dirty) else []) + ([row] if r else []), default=n)
        is_dirty = np.zeros(n, bool)
        is_dirty[dirty] = True
        update = np.arange(first_key, n)
        update = update[~is_dirty[update]]
        redo = EMPTY
        attn_before = attn_after = None
        if len(update):
            rem_k = np.concatenate([L.k[freed], old_k]) if r else old_k
            rem_v = np.concatenate([L.v[freed], old_v]) if r else old_v
            rem_pos = np.concatenate([np.full(r, row), survivors]) if r else survivors
            attn_before, attn_after, redo = self._update(L, order, update, rem_k, rem_v, rem_pos, dirty, stats)
        stats.rows["attn_update"].append(len(update))
        full = _union(dirty, update[redo]) if len(redo) else dirty
        if len(full):
            self._full_rows(L, order, full, stats)
        stats.rows["attn_full"].append(len(full))

        # Which queries need re-encoding?
        enc = full
        if len(update):
            keep = ~redo_mask(len(update), redo)
            up, before, after = update[keep], attn_before[keep], attn_after[keep]
            moved = np.linalg.norm((after - before).astype(np.float64), axis=-1)  # (u, H)
            sl = order[up]
            margin = L.margin[sl].astype(np.float64)
            need = (moved >= margin * (1 - 1e-4) - 1e-7).any(axis=1)
            L.margin[sl[~need]] = (margin[~need] - moved[~need]).astype(np.float32)
            enc = _union(full, up[need])
        code_changed = EMPTY
        if len(enc):
            sl = order[enc]
            attn = (L.num[sl] / L.den[sl][..., None]).astype(np.float32)
            codes, margin = self.s.encode[li].run(attn=attn)
            diff = (codes != L.codes[sl]).any(axis=1) | is_new[sl]
            L.codes[sl], L.margin[sl] = codes, margin
            code_changed = enc[diff]
            stats.macs += len(enc) * self.macs["encode"]
            stats.near_ties += int((margin < NEAR_TIE).sum())
        stats.rows["encode"].append(len(enc))

        post = _union(changed, code_changed)
        stats.rows["post"].append(len(post))
        if not len(post):
            return EMPTY
        sl = order[post]
        (out,) = self.s.post[li].run(x=L.x[sl], codes=L.codes[sl])
        stats.macs += len(post) * self.macs["post"]
        nxt = st.layers[li + 1].x if li + 1 < self.man.num_layers else st.x_out
        differs = (out != nxt[sl]).any(axis=1) | is_new[sl]
        nxt[sl] = out
        return post[differs]

    def _update(self, L, order: I64, pos: I64, rem_k, rem_v, rem_pos: I64, added: I64, stats: EditStats):
        """Subtract removed keys' and add changed keys' contributions for queries at positions `pos`.

        Returns (attention output before, after, indices into pos to recompute in full)."""
        slots = order[pos]
        q = L.q[slots]
        m, den, num = L.m[slots], L.den[slots], L.num[slots]
        before = (num / den[..., None]).astype(np.float32)
        ref = den
        if len(rem_pos):
            mask = rem_pos[None, :] <= pos[:, None]
            mo, dr, nr = self.s.attention.run(q=q, k=rem_k, v=rem_v, mask=mask, m_in=m)
            scale = np.exp(m - mo)
            ref = den * scale
            den, num, m = ref - dr, num * scale[..., None] - nr, mo
            stats.macs += int(mask.sum()) * self.macs["attention"]
        if len(added):
            sl = order[added]
            mask = added[None, :] <= pos[:, None]
            mo, da, na = self.s.attention.run(q=q, k=L.k[sl], v=L.v[sl], mask=mask, m_in=m)
            scale = np.exp(m - mo)
            den, num, m = den * scale + da, num * scale[..., None] + na, mo
            ref = ref * scale
            stats.macs += int(mask.sum()) * self.macs["attention"]
        redo = np.nonzero((den <= CANCELLATION * ref).any(axis=1))[0]
        L.m[slots], L.den[slots], L.num[slots] = m, den, num
        with np.errstate(invalid="ignore", divide="ignore"):
            after = (num / den[..., None]).astype(np.float32)
        return before, after, redo

    def _full_rows(self, L, order: I64, rows: I64, stats: EditStats) -> None:
        """Recompute the accumulators of queries `rows` over all their visible keys, in chunks."""
        h, dh = L.q.shape[1], L.q.shape[2]
        per_pair = h * (8 * dh + 24)
        start = 0
        while start < len(rows):
            last = int(rows[min(len(rows) - 1, start)])
            step = max(1, ATTN_CHUNK_BYTES // max(per_pair * (last + 1), 1))
            chunk = rows[start:start + step]
            nk = int(chunk[-1]) + 1
            keys = order[:nk]
            mask = np.arange(nk)[None, :] <= chunk[:, None]
            sl = order[chunk]
            m, den, num = self.s.attention.run(q=L.q[sl], k=L.k[keys], v=L.v[keys], mask=mask,
                                               m_in=np.full((len(chunk), h), -np.inf))
            L.m[sl], L.den[sl], L.num[sl] = m, den, num
            stats.macs += int(mask.sum()) * self.macs["attention"]
            start += step

    # -- head --------------------------------------------------------------------------------
    def _head(self, st: DocState, changed: I64, freed: I64, is_new: np.ndarray, stats: EditStats) -> None:
        if len(freed):
            st.pooled_sum -= st.y[freed].astype(np.float64).sum(axis=0)
        if len(changed):
            sl = st.order[changed]
            (y,) = self.s.final.run(x=st.x_out[sl])
            old = st.y[sl].astype(np.float64)
            old[is_new[sl]] = 0.0
            st.pooled_sum += y.astype(np.float64).sum(axis=0) - old.sum(axis=0)
            st.y[sl] = y
        pooled = st.pooled_sum / st.n if self.pooling == "mean" else st.y[st.order[-1]].astype(np.float64)
        (logits,) = self.s.head.run(pooled=pooled[None, :].astype(np.float32))
        st.logits = logits[0]
        stats.macs += self.macs["head"]


def redo_mask(size: int, redo: I64) -> np.ndarray:
    m = np.zeros(size, bool)
    m[redo] = True
    return m
