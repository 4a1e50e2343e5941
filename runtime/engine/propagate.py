"""Propagation of token-level splices through the stage graphs, for one document or
for many at once.

Per edit: embed the new rows (and their layer-0 q, k, v); then per layer, with C = rows whose
layer input changed:
  1. plan (planner.py): dirty rows, the keys that enter and leave, the queries they touch;
  2. lazy update (attention.py) of untouched queries that see those keys, which proves most codes
     unchanged without recomputing the row;
  3. recompute dirty rows and rows whose code is no longer proven (the `attend` graph), with the
     float64 paths for rows it cannot decide (numerics.py, attention.py);
  4. post (out-projection + MLP, fused with the next layer's q, k, v) for rows whose input or code
     changed; rows whose output changed form the next C.
Finally the final norm, the running pooled sum and the head. Row-wise stages of several documents
run in one call (`apply_many`); attention rows are per document (each has its own keys).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from vqinc.runtime.engine.attention import KeyDelta, lazy_update, recompute_rows
from vqinc.runtime.engine.labels import Relabel, fresh_labels, place
from vqinc.runtime.engine.numerics import Codebook
from vqinc.runtime.engine.planner import EMPTY, EditShape, LayerPlan, edit_shape, plan_layer
from vqinc.runtime.engine.state import DocState
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.format.stages import INCREMENTAL_ROWS, full_macs, savings, stage_macs
from vqinc.runtime.ort.executor import Executor

I64 = npt.NDArray[np.int64]


@dataclass
class EditStats:
    """What one edit cost, next to what a full recompute of the resulting document costs."""

    n_delete: int
    n_insert: int
    num_tokens: int
    rows: dict[str, list[int]] = field(default_factory=dict)
    """Per layer, rows through each step: embed_qkv (rows whose q, k, v were computed), lazy (queries
    updated in place), rescore (of those, rows whose updated output proved a new code without a
    recompute), attend (rows recomputed), refine (of those, rows float32 could not decide, recomputed
    in float64), post."""
    macs: int = 0
    full_macs: int = 0
    near_ties: int = 0
    """(row, head) pairs whose code the float32 path could not prove (recomputed in float64)."""
    canonical_rows: int = 0
    """Rows float64 could not decide either: computed alone, keys in position order (true near-ties)."""
    dense_layers: int = 0
    """Layers where so much changed that every later query was recomputed."""
    graph_calls: int = 0
    wall_ms: float = 0.0
    relabelled: int = 0
    """Existing rows given new position labels (RoPE models with labels; their q and k were recomputed)."""
    compacted: bool = False
    """Every row was relabelled (the labels had no room left, or `doc.compact()`)."""

    @property
    def savings(self) -> float:
        return savings(self.full_macs, self.macs)

    @classmethod
    def nothing(cls, spec: ModelSpec, num_tokens: int) -> EditStats:
        """The stats of an edit that changes nothing (no work; a full recompute would still cost)."""
        return cls(0, 0, num_tokens, {k: [0] * spec.num_layers for k in INCREMENTAL_ROWS},
                   full_macs=full_macs(spec, num_tokens + 1))


@dataclass
class _Job:
    """One document's edit in flight through the layers."""

    state: DocState
    shape: EditShape
    stats: EditStats
    is_new: np.ndarray  # (cap,) bool: slot created by this edit
    changed: I64 = field(default_factory=lambda: EMPTY)  # rows whose current layer's input changed
    pending: tuple[np.ndarray, ...] | None = None  # new q, k, v of `changed`, as (R, H|Hkv, dh)
    y_changed: I64 = field(default_factory=lambda: EMPTY)


class Engine:
    """Driver holding no document state: `apply(state, row, n_delete, new_ids)` mutates a DocState in place."""

    def __init__(self, executor: Executor, spec: ModelSpec, codebooks: list[np.ndarray]):
        self.executor, self.spec = executor, spec
        self.codebooks = [Codebook(c) for c in codebooks]
        self.macs = stage_macs(spec)

    def apply(self, state: DocState, row: int, n_delete: int, new_ids: I64, labels: I64 | None = None) -> EditStats:
        """Replace rows [row, row + n_delete) by `new_ids`; validation is the caller's job. `labels`: the
        position labels of every row, for a build (an empty `state`) with given labels."""
        return self.apply_many([(state, row, n_delete, new_ids, labels)])[0]

    def apply_many(self, edits: list[tuple]) -> list[EditStats]:
        """Apply one splice `(state, row, n_delete, new_ids[, labels])` to each of several distinct
        documents, sharing the row-wise graph calls."""
        t0, calls0 = time.perf_counter(), self.executor.calls
        jobs = [self._start(*e) for e in edits]
        self._embed(jobs)
        for layer_idx in range(self.spec.num_layers):
            for job in jobs:
                self._attention(job, layer_idx)
            self._post(jobs, layer_idx)
        self._head(jobs)
        wall = (time.perf_counter() - t0) * 1e3
        for job in jobs:
            job.state.release(job.shape.deleted_slots)
            job.stats.full_macs = full_macs(self.spec, job.state.n)
            job.stats.wall_ms = wall
            job.stats.graph_calls = self.executor.calls - calls0
        return [job.stats for job in jobs]

    # -- set-up ------------------------------------------------------------------------------
    def _start(self, st: DocState, row: int, n_delete: int, new_ids: I64, labels: I64 | None = None) -> _Job:
        new_ids = np.asarray(new_ids, np.int64)
        s = len(new_ids)
        new_slots = st.alloc(s)
        before = st.order
        st.order = np.concatenate([before[:row], new_slots, before[row + n_delete:]])
        st.ids = np.concatenate([st.ids[:row], new_ids, st.ids[row + n_delete:]])
        shape = edit_shape(before, row, n_delete, new_slots, st.order)
        st.pos[shape.deleted_slots] = -1  # invisible as keys from now on; readable until released
        end = st.n if s != n_delete else row + s  # positions that changed
        st.pos[st.order[row:end]] = np.arange(row, end)
        relabel = self._label(st, row, s, labels)
        if relabel is not None:
            shape = replace(shape, relabelled=st.order[relabel.moved])
        else:
            st.labels[st.order[row:end]] = np.arange(row, end)
        is_new = np.zeros(st.capacity, bool)
        is_new[new_slots] = True
        stats = EditStats(n_delete, s, st.n - 1, {k: [] for k in INCREMENTAL_ROWS})
        if relabel is not None:
            stats.relabelled, stats.compacted = len(relabel.moved), relabel.compacted
        job = _Job(st, shape, stats, is_new)
        if self.spec.positions == "learned" and len(shape.moved_slots):  # absolute positions are inputs
            job.changed = np.union1d(new_slots, shape.moved_slots).astype(np.int64)
        else:
            job.changed = np.sort(new_slots)
        return job

    def _label(self, st: DocState, row: int, k: int, labels: I64 | None) -> Relabel | None:
        """Position labels of the inserted rows (given, or placed by labels.py); None without labels."""
        spec = self.spec
        if not spec.labelled:
            return None
        if labels is not None:  # a build with given labels (every row new)
            st.labels[st.order] = labels
            return Relabel(labels, EMPTY, False)
        if st.n == k:  # a fresh document
            relabel = Relabel(fresh_labels(st.n, spec.position_scale), EMPTY, False)
        else:
            relabel = place(st.labels[st.order], max(row, 1), k, spec.position_scale, spec.label_limit)
        st.labels[st.order] = relabel.labels
        return relabel

    def _embed(self, jobs: list[_Job]) -> None:
        """Layer 0's input and q, k, v of new rows (and, with learned positions, shifted rows)."""
        todo = [j for j in jobs if len(j.changed)]
        if not todo:
            return
        ids = np.concatenate([j.state.ids[j.state.pos[j.changed]] for j in todo])
        positions = np.concatenate([j.state.labels[j.changed] for j in todo])
        x, q, k, v = self.executor.run("embed_qkv", ids=ids, positions=positions)
        for j, sl in zip(todo, _splits(todo), strict=True):
            j.state.layers[0].x[j.changed] = x[sl]
            j.pending = (q[sl], k[sl], v[sl])
            j.stats.macs += len(j.changed) * self.macs["embed_qkv"].per_row

    # -- one layer of one document -------------------------------------------------------------
    def _attention(self, job: _Job, li: int) -> None:
        st, stats, spec = job.state, job.stats, self.spec
        L = st.layers[li]
        plan = plan_layer(st.pos, st.order, job.changed, job.shape, spec.positions, job.is_new, st.need_rate[li])
        dirty_q, dirty_k, dirty_v = self._dirty_qkv(job, li, plan)
        stats.rows["embed_qkv"].append(len(plan.dirty))
        if len(plan.lazy):
            keys = self._key_delta(job, L, plan, dirty_k, dirty_v)
            lazy = lazy_update(L, plan.lazy, st.pos[plan.lazy], keys, self.codebooks[li], spec, st.vmax[li])
            need, lazy_changed = lazy.need, plan.lazy[lazy.changed]  # plan.lazy is in position order
        else:
            need, lazy_changed = np.zeros(0, bool), EMPTY
        if len(plan.lazy) and plan.changed_keys:
            observed = 1.0 - (1.0 - need.mean()) ** (1.0 / plan.changed_keys)
            st.need_rate[li] = 0.7 * st.need_rate[li] + 0.3 * observed
        stats.rows["lazy"].append(len(plan.lazy))
        stats.macs += int(len(plan.lazy) * plan.changed_keys * spec.num_heads * spec.head_dim)
        self._store_qkv(st, li, plan.dirty, dirty_q, dirty_k, dirty_v)
        recompute = _union(plan.recompute, plan.lazy[need]) if need.any() else plan.recompute
        code_changed = EMPTY
        refined = 0
        if len(recompute):
            old = L.codes[recompute]
            res = recompute_rows(self._attend_fn(li), self._refine, L, recompute, st.pos, st.order,
                                 st.kmax[li], st.vmax[li], self.codebooks[li], spec)
            L.codes[recompute] = res.codes
            code_changed = recompute[(res.codes != old).any(axis=1) | job.is_new[recompute]]
            refined = res.refined
            stats.near_ties += res.refined
            stats.canonical_rows += res.canonical_rows
            visible = st.pos[recompute] + 1
            stats.macs += (int(visible.sum()) + res.canonical_pairs) * self.macs["attend"].per_pair
            stats.macs += len(recompute) * self.macs["attend"].per_row
            if refined:
                stats.macs += refined * int(visible.max()) * self.macs["refine"].per_pair
        stats.rows["attend"].append(len(recompute))
        stats.rows["refine"].append(refined)
        stats.dense_layers += int(plan.dense)
        stats.rows["rescore"].append(len(lazy_changed))
        job.changed = _union(job.changed, _union(code_changed, lazy_changed))  # rows that need post

    @staticmethod
    def _key_delta(job: _Job, L, plan: LayerPlan, dirty_k: np.ndarray, dirty_v: np.ndarray) -> KeyDelta:
        """The keys unchanged queries see come and go: new rows (added), deleted rows (removed), and dirty
        rows that existed before (modified: old values still in the state, new ones pending)."""
        st = job.state
        new = job.is_new[plan.dirty]
        old_rows = plan.dirty[~new]
        kt, vt = dirty_k.transpose(1, 0, 2), dirty_v.transpose(1, 0, 2)
        deleted = job.shape.deleted_slots
        return KeyDelta.build(
            (kt[:, new], vt[:, new], st.pos[plan.dirty[new]]),
            (L.k[:, deleted], L.v[:, deleted], np.full(len(deleted), job.shape.row, np.int64)),
            (L.k[:, old_rows], L.v[:, old_rows], st.pos[old_rows]),
            (kt[:, ~new], vt[:, ~new], st.pos[old_rows]))

    def _dirty_qkv(self, job: _Job, li: int, plan: LayerPlan) -> tuple[np.ndarray, ...]:
        """New q, k, v (R, H|Hkv, dh) of `plan.dirty`, in its order: the pending values of rows whose
        input changed, and (rope) the qkv graph on rows whose position moved."""
        rows, parts = job.changed, job.pending if job.pending is not None else _empty_qkv(self.spec)
        if len(plan.qkv):
            st = job.state
            moved = self.executor.run("qkv", li, x=st.layers[li].x[plan.qkv], positions=st.labels[plan.qkv])
            job.stats.macs += len(plan.qkv) * self.macs["qkv"].per_row
            rows = np.concatenate([rows, plan.qkv])
            parts = tuple(np.concatenate([a, b]) for a, b in zip(parts, moved, strict=True))
        if not len(plan.qkv):  # rows are job.changed, sorted already
            return parts
        perm = np.argsort(rows, kind="stable")  # plan.dirty is the sorted union of the two
        return tuple(a[perm] for a in parts)

    def _store_qkv(self, st: DocState, li: int, rows: I64, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        if not len(rows):
            return
        L = st.layers[li]
        L.q[:, rows] = q.transpose(1, 0, 2)
        L.k[:, rows] = k.transpose(1, 0, 2)
        L.v[:, rows] = v.transpose(1, 0, 2)
        # float32 norms of dh terms are within dh·2^-24 relative: rounded up by 1e-5 they are upper bounds
        L.qnorm[:, rows] = np.sqrt(np.einsum("rhd,rhd->hr", q, q)) * np.float32(1 + 1e-5)
        up = 1 + 1e-5
        st.kmax[li] = np.maximum(st.kmax[li], np.sqrt(np.einsum("rhd,rhd->h", k, k) if len(rows) == 1 else
                                                      np.einsum("rhd,rhd->rh", k, k).max(0)) * up)
        st.vmax[li] = np.maximum(st.vmax[li], np.sqrt(np.einsum("rhd,rhd->h", v, v) if len(rows) == 1 else
                                                      np.einsum("rhd,rhd->rh", v, v).max(0)) * up)

    def _attend_fn(self, li: int):
        def run(q, k, v, qpos, kpos):
            return self.executor.run("attend", li, q=q, k=k, v=v, qpos=qpos, kpos=kpos)
        return run

    def _refine(self, q, k, v, qpos, kpos):
        return self.executor.run("refine", q=q, k=k, v=v, qpos=qpos, kpos=kpos)

    # -- row-wise stages, shared by all documents ----------------------------------------------
    def _post(self, jobs: list[_Job], li: int) -> None:
        last = li == self.spec.num_layers - 1
        for j in jobs:
            j.stats.rows["post"].append(len(j.changed))
        todo = [j for j in jobs if len(j.changed)]
        for j in jobs:
            if not len(j.changed):
                j.pending = None
        if not todo:
            return
        x = _gather([j.state.layers[li].x for j in todo], todo)
        codes = _gather([j.state.layers[li].codes for j in todo], todo)
        if last:
            (y,) = self.executor.run("final", x=x, codes=codes)
            for j, sl in zip(todo, _splits(todo), strict=True):
                self._pool(j, y[sl])
                j.stats.macs += len(j.changed) * self.macs["final"].per_row
            return
        positions = _gather([j.state.labels for j in todo], todo)
        out, q, k, v = self.executor.run("post", li, x=x, codes=codes, positions=positions)
        for j, sl in zip(todo, _splits(todo), strict=True):
            nxt = j.state.layers[li + 1].x
            rows = j.changed
            differs = (out[sl] != nxt[rows]).any(axis=1) | j.is_new[rows]
            j.stats.macs += len(rows) * self.macs["post"].per_row
            j.changed = rows[differs]
            nxt[j.changed] = out[sl][differs]
            j.pending = (q[sl][differs], k[sl][differs], v[sl][differs])

    def _pool(self, job: _Job, y: np.ndarray) -> None:
        st, rows = job.state, job.changed
        old = st.y[rows].astype(np.float64)
        old[job.is_new[rows]] = 0.0
        st.pooled_sum += y.astype(np.float64).sum(axis=0) - old.sum(axis=0)
        st.y[rows] = y
        job.y_changed = rows

    def _head(self, jobs: list[_Job]) -> None:
        todo = []
        for j in jobs:
            st = j.state
            deleted = j.shape.deleted_slots
            if len(deleted):
                st.pooled_sum -= st.y[deleted].astype(np.float64).sum(axis=0)
            if len(j.y_changed) or len(deleted) or len(j.shape.new_slots):
                todo.append(j)
        if not todo:
            return
        if self.spec.pooling == "mean":
            pooled = np.stack([j.state.pooled_sum / j.state.n for j in todo])
        else:
            pooled = np.stack([j.state.y[j.state.order[-1]].astype(np.float64) for j in todo])
        (logits,) = self.executor.run("head", pooled=pooled.astype(np.float32))
        for j, row in zip(todo, logits, strict=True):
            j.state.logits = row
            j.stats.macs += self.macs["head"].per_row


def _union(a: I64, b: I64) -> I64:
    """np.union1d of `a` (sorted, distinct) and `b` (distinct), without its sort when b is empty."""
    if not len(b):
        return a
    if not len(a):
        return np.sort(b)
    return np.union1d(a, b).astype(np.int64)


def _gather(arrays: list[np.ndarray], jobs: list[_Job]) -> np.ndarray:
    """Rows `changed` of each job's array, concatenated (one job: the gather alone)."""
    if len(jobs) == 1:
        return arrays[0][jobs[0].changed]
    return np.concatenate([a[j.changed] for a, j in zip(arrays, jobs, strict=True)])


def _splits(jobs: list[_Job]) -> list[slice]:
    """Row ranges of each job's `changed` rows inside a concatenated batch."""
    out, start = [], 0
    for j in jobs:
        out.append(slice(start, start + len(j.changed)))
        start += len(j.changed)
    return out


def _empty_qkv(spec: ModelSpec) -> tuple[np.ndarray, ...]:
    h, hkv, dh = spec.num_heads, spec.num_kv_heads, spec.head_dim
    return (np.zeros((0, h, dh), np.float32), np.zeros((0, hkv, dh), np.float32), np.zeros((0, hkv, dh), np.float32))
