"""All mutable numeric state of one document, stored by *slot* rather than by position.

An insertion or deletion in the middle of a 1,000-token document would otherwise shift every
per-layer array (tens of MB); instead each row lives in a fixed slot and `order[i]` names the slot
of position i, so an edit touches only the rows it changes. Slots freed by an edit are reused later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class LayerState:
    """Per layer, indexed by slot."""

    x: np.ndarray  # (cap, d) f32 layer input
    q: np.ndarray  # (cap, H, dh) f32
    k: np.ndarray  # (cap, Hkv, dh) f32
    v: np.ndarray  # (cap, Hkv, dh) f32
    m: np.ndarray  # (cap, H) f64 running max of scores (a stabiliser, not necessarily the true max)
    den: np.ndarray  # (cap, H) f64 softmax denominator  Σ exp(s - m)
    num: np.ndarray  # (cap, H, dh) f64 numerator  Σ exp(s - m) v
    margin: np.ndarray  # (cap, H) f32 radius around the current attention output where the code cannot change
    codes: np.ndarray  # (cap, H) i64

    @classmethod
    def empty(cls, cap: int, d: int, h: int, hkv: int, dh: int) -> LayerState:
        return cls(
            x=np.zeros((cap, d), np.float32), q=np.zeros((cap, h, dh), np.float32),
            k=np.zeros((cap, hkv, dh), np.float32), v=np.zeros((cap, hkv, dh), np.float32),
            m=np.full((cap, h), -np.inf), den=np.zeros((cap, h)), num=np.zeros((cap, h, dh)),
            margin=np.zeros((cap, h), np.float32), codes=np.zeros((cap, h), np.int64),
        )

    def grow(self, cap: int) -> None:
        for name, a in vars(self).items():
            b = np.zeros((cap, *a.shape[1:]), a.dtype)
            b[: a.shape[0]] = a
            setattr(self, name, b)


@dataclass
class DocState:
    ids: npt.NDArray[np.int64]  # (n,) token ids in position order, BOS first
    order: npt.NDArray[np.int64]  # (n,) slot of each position
    free: list[int]
    layers: list[LayerState]
    x_out: np.ndarray  # (cap, d) f32 output of the last layer
    y: np.ndarray  # (cap, d) f32 final-norm rows
    pooled_sum: np.ndarray  # (d,) f64 running Σ y over positions
    logits: np.ndarray  # (C,) f32

    @classmethod
    def empty(cls, num_layers: int, d: int, h: int, hkv: int, dh: int, num_labels: int,
              cap: int = 64) -> DocState:
        return cls(
            ids=np.zeros(0, np.int64), order=np.zeros(0, np.int64), free=list(range(cap - 1, -1, -1)),
            layers=[LayerState.empty(cap, d, h, hkv, dh) for _ in range(num_layers)],
            x_out=np.zeros((cap, d), np.float32), y=np.zeros((cap, d), np.float32),
            pooled_sum=np.zeros(d), logits=np.zeros(num_labels, np.float32),
        )

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.y.shape[0])

    def alloc(self, count: int) -> npt.NDArray[np.int64]:
        """`count` unused slots, growing every array (capacity doubles) when needed."""
        if len(self.free) < count:
            old = self.capacity
            cap = max(2 * old, old + count - len(self.free) + 16)
            for layer in self.layers:
                layer.grow(cap)
            for name in ("x_out", "y"):
                a = getattr(self, name)
                b = np.zeros((cap, *a.shape[1:]), a.dtype)
                b[:old] = a
                setattr(self, name, b)
            self.free = list(range(cap - 1, old - 1, -1)) + self.free
        taken = [self.free.pop() for _ in range(count)]
        return np.asarray(taken, np.int64)

    def nbytes(self) -> int:
        """Memory held by the document's arrays (capacity included)."""
        total = self.x_out.nbytes + self.y.nbytes + self.pooled_sum.nbytes + self.ids.nbytes + self.order.nbytes
        return total + sum(a.nbytes for layer in self.layers for a in vars(layer).values())
