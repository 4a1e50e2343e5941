"""All mutable numeric state of one document, stored by *slot* rather than by position.

An insertion in the middle of a document would otherwise shift every per-layer array; instead each
row lives in a fixed slot, `order[i]` names the slot of position i and `pos[slot]` the position of a
slot (-1 when free). Graphs read whole K/V buffers with `pos` as the key positions, so no edit
gathers or shifts them. Slots freed by an edit are reused later; capacity grows by a quarter, and
after large deletions the rows are compacted back to an eighth of spare capacity (`compact`).

Per layer and slot the state keeps what an edit needs to avoid recomputing rows: the layer input x,
q, k, v, and per head the attention output o (float32) with a bound o_err on its error, the softmax
summary (m, den, den_err), the margin of its code and the code. A row that is not recomputed has its
o updated from the keys that come and go (attention.lazy_update), which proves its code, old or new.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from vqinc.runtime.format.spec import ModelSpec

I64 = npt.NDArray[np.int64]


def _slots(axis: int):
    """A LayerState array whose axis `axis` is the slot (grow and compact move along it)."""
    return field(metadata={"slot_axis": axis})


def slot_axis(f) -> int:
    return f.metadata["slot_axis"]


@dataclass
class LayerState:
    """One layer. Row arrays are indexed by slot; per-head arrays are (heads, slots)."""

    x: np.ndarray = _slots(0)  # (cap, d) f32 layer input
    q: np.ndarray = _slots(1)  # (H, cap, dh) f32
    k: np.ndarray = _slots(1)  # (Hkv, cap, dh) f32; empty slots hold finite values (zeros or a freed row)
    v: np.ndarray = _slots(1)  # (Hkv, cap, dh) f32
    qnorm: np.ndarray = _slots(1)  # (H, cap) f32 |q| per head, for score error bounds
    m: np.ndarray = _slots(1)  # (H, cap) f32 softmax reference point: the max score at the row's last full computation
    den: np.ndarray = _slots(1)  # (H, cap) f64 Σ_j exp(s_j − m) over the visible keys, kept current by lazy updates
    den_err: np.ndarray = _slots(1)  # (H, cap) f64 bound on |den − exact|
    o: np.ndarray = _slots(1)  # (H, cap, dh) f32 attention output (the last computed or lazily updated one)
    o_err: np.ndarray = _slots(1)  # (H, cap) f64 upper bound on |o − exact output|
    margin: np.ndarray = _slots(1)  # (H, cap) f64 lower bound on the exact output's distance inside its code's cell
    codes: np.ndarray = _slots(0)  # (cap, H) i64

    @classmethod
    def empty(cls, cap: int, spec: ModelSpec) -> LayerState:
        h, hkv, dh, d = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.d_model
        return cls(
            x=np.zeros((cap, d), np.float32), q=np.zeros((h, cap, dh), np.float32),
            k=np.zeros((hkv, cap, dh), np.float32), v=np.zeros((hkv, cap, dh), np.float32),
            qnorm=np.zeros((h, cap), np.float32), m=np.zeros((h, cap), np.float32),
            den=np.ones((h, cap)), den_err=np.zeros((h, cap)), o=np.zeros((h, cap, dh), np.float32),
            o_err=np.zeros((h, cap)), margin=np.zeros((h, cap)), codes=np.zeros((cap, h), np.int64),
        )

    def grow(self, cap: int) -> None:
        for f in fields(self):
            a = getattr(self, f.name)
            axis = slot_axis(f)
            shape = list(a.shape)
            old = shape[axis]
            shape[axis] = cap
            b = np.zeros(shape, a.dtype)
            b[(slice(None),) * axis + (slice(0, old),)] = a
            setattr(self, f.name, b)


@dataclass
class DocState:
    ids: I64  # (n,) token ids in position order, BOS first
    order: I64  # (n,) slot of each position
    pos: I64  # (cap,) position of each slot, -1 if the slot is free
    labels: I64  # (cap,) RoPE label of each slot (labels.py); equal to pos where the model has none
    free: list[int]  # free slots, popped from the end (lowest slot first for a fresh document)
    layers: list[LayerState]
    y: np.ndarray  # (cap, d) f32 final-norm rows (the head pools them)
    pooled_sum: np.ndarray  # (d,) f64 running Σ y over positions
    logits: np.ndarray  # (C,) f32
    kmax: np.ndarray  # (L, Hkv) f64 upper bound on |k| of any key ever stored (error bounds)
    vmax: np.ndarray  # (L, Hkv) f64 upper bound on |v| of any value ever stored
    need_rate: list[float]
    """Per layer, the running estimate of the fraction of lazy queries recomputed per changed key (it
    only steers the planner's lazy-or-dense choice; both are exact)."""

    @classmethod
    def empty(cls, spec: ModelSpec, cap: int = 64) -> DocState:
        return cls(
            ids=np.zeros(0, np.int64), order=np.zeros(0, np.int64), pos=np.full(cap, -1, np.int64),
            labels=np.zeros(cap, np.int64),
            free=list(range(cap - 1, -1, -1)), layers=[LayerState.empty(cap, spec) for _ in range(spec.num_layers)],
            y=np.zeros((cap, spec.d_model), np.float32), pooled_sum=np.zeros(spec.d_model),
            logits=np.zeros(spec.num_labels, np.float32),
            kmax=np.zeros((spec.num_layers, spec.num_kv_heads)), vmax=np.zeros((spec.num_layers, spec.num_kv_heads)),
            need_rate=[0.01] * spec.num_layers,
        )

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.pos.shape[0])

    def alloc(self, count: int) -> I64:
        """`count` unused slots, growing every array by a quarter (at least) when needed."""
        if len(self.free) < count:
            old = self.capacity
            cap = max(old + old // 4 + 16, old + count - len(self.free) + 16)
            for layer in self.layers:
                layer.grow(cap)
            y = np.zeros((cap, self.y.shape[1]), np.float32)
            y[:old] = self.y
            self.y = y
            self.pos = np.concatenate([self.pos, np.full(cap - old, -1, np.int64)])
            self.labels = np.concatenate([self.labels, np.zeros(cap - old, np.int64)])
            self.free = list(range(cap - 1, old - 1, -1)) + self.free
        if count == 0:
            return np.zeros(0, np.int64)
        taken = self.free[-count:][::-1]
        del self.free[-count:]
        return np.asarray(taken, np.int64)

    def release(self, slots: I64) -> None:
        self.pos[slots] = -1
        self.free.extend(int(s) for s in slots[::-1])
        if self.capacity > 1.3 * self.n + 16 and self.capacity > 64:  # the state stays within ~3x a KV cache
            self.compact()

    def compact(self) -> None:
        """Move the rows to slots 0 .. n-1 in position order and drop the spare capacity beyond a
        margin (after large deletions). Values move, never change: every proof in the state still holds."""
        n, order = self.n, self.order
        cap = max(64, n + n // 8 + 16)
        for layer in self.layers:
            for f in fields(layer):
                a = getattr(layer, f.name)
                axis = slot_axis(f)
                b = np.zeros(a.shape[:axis] + (cap,) + a.shape[axis + 1:], a.dtype)
                if axis == 0:
                    b[:n] = a[order]
                else:
                    b[:, :n] = a[:, order]
                setattr(layer, f.name, b)
        y = np.zeros((cap, self.y.shape[1]), np.float32)
        y[:n] = self.y[order]
        self.y = y
        labels = np.zeros(cap, np.int64)
        labels[:n] = self.labels[order]
        self.labels = labels
        self.order = np.arange(n, dtype=np.int64)
        self.pos = np.concatenate([np.arange(n, dtype=np.int64), np.full(cap - n, -1, np.int64)])
        self.free = list(range(cap - 1, n - 1, -1))

    def nbytes(self) -> int:
        """Memory held by the document's arrays (capacity included)."""
        arrays = ("ids", "order", "pos", "labels", "y", "pooled_sum", "kmax", "vmax")
        total = sum(getattr(self, f).nbytes for f in arrays)
        return total + sum(getattr(layer, f.name).nbytes for layer in self.layers for f in fields(layer))
