"""The planner: which rows of one layer an edit touches, and how. Pure numpy on slot and position
arrays; it runs no graph, so it is unit-tested without ONNX Runtime.

For one layer, given the rows whose layer input changed:
  dirty      rows whose q, k, v change (changed inputs; in "rope" mode also rows whose RoPE position changed:
             every row after an insertion or deletion, or with position labels only the relabelled ones);
             their keys change for every later query, and their own attention is recomputed in full
  lazy       unchanged queries that see a changed key: their attention summary is updated in place,
             and they are recomputed only if their code might change
  recompute  the dirty rows, or, when the cost model says the lazy path would cost more ("dense"),
             every query from the first affected position on

A key is visible to a query iff its position is not after the query's. Positions are in the edited
document's coordinates; relative order of surviving rows never changes, and a deleted key counts as
sitting at the edit position, so every query after the edit saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class EditShape:
    """Where an edit happened, in slots and positions of the edited document."""

    row: int
    """First position of the splice (new coordinates)."""
    new_slots: I64
    """Slots of the inserted rows (no old values)."""
    deleted_slots: I64
    """Slots of the deleted rows (their old k, v still readable during the edit)."""
    moved_slots: I64
    """Rows whose position index changed (after an insertion or deletion of a different length)."""
    relabelled: I64 = field(default_factory=lambda: EMPTY)
    """Rows whose RoPE position changed: `moved_slots` without position labels; with them only the rows
    an insertion relabelled (labels.py), usually none."""


@dataclass(frozen=True)
class Costs:
    """Relative costs for choosing between the lazy and the dense path, in units of one (query, key)
    pair of the `attend` graph. Measured on a 2-core x86 machine with engine v2 (benchmarks/README.md): a
    lazy update costs about `per_row` pairs per query plus `per_key` pairs per (query, changed key)."""

    per_row: float = 40.0
    per_key: float = 1.5


@dataclass(frozen=True)
class LayerPlan:
    dirty: I64
    qkv: I64
    """Dirty rows whose q, k, v still have to be computed (moved rows in rope mode)."""
    lazy: I64
    recompute: I64
    dense: bool
    first: int
    """First position whose attention can change (the document length when nothing can)."""
    changed_keys: int
    """Keys that enter, leave or change for the lazy queries (modified keys count twice)."""


def plan_layer(pos: I64, order: I64, changed: I64, edit: EditShape, positions: str, is_new: npt.NDArray[np.bool_],
               need_rate: float = 0.0, costs: Costs = Costs()) -> LayerPlan:
    """Plan one layer. `pos` (cap,) is the position of each slot (-1 free), `order` (n,) the slot of each
    position, `changed` the rows whose layer input changed (sorted), `is_new` (cap,) marks rows the edit
    inserted, `need_rate` the expected fraction of lazy queries per changed key that end up recomputed."""
    moved = edit.relabelled if positions == "rope" else EMPTY
    if len(moved):
        dirty = np.union1d(changed, moved).astype(np.int64)
        qkv = moved[~np.isin(moved, changed)]
    else:
        dirty, qkv = changed, EMPTY
    n = len(order)
    first = int(pos[dirty].min()) if len(dirty) else n
    if len(edit.deleted_slots):
        first = min(first, edit.row)
    suffix = order[first:]
    mark = np.zeros(len(pos), bool)
    mark[dirty] = True
    lazy = suffix[~mark[suffix]]
    new = int(is_new[dirty].sum())
    changed_keys = new + len(edit.deleted_slots) + 2 * (len(dirty) - new)
    dense = len(lazy) > 0 and _dense_is_cheaper(len(lazy), changed_keys, len(pos), need_rate, costs)
    recompute = np.sort(suffix) if dense else dirty
    return LayerPlan(dirty, qkv, EMPTY if dense else lazy, recompute, dense, first, changed_keys)


def _dense_is_cheaper(n_lazy: int, changed_keys: int, num_keys: int, need_rate: float, costs: Costs) -> bool:
    """Lazy: update every lazy query, then recompute the expected fraction of them. Dense: recompute all."""
    expected = 1.0 - (1.0 - min(max(need_rate, 0.0), 1.0)) ** changed_keys
    lazy = costs.per_row + costs.per_key * changed_keys + expected * num_keys
    return lazy >= num_keys


def edit_shape(order_before: I64, row: int, n_delete: int, new_slots: I64, order_after: I64) -> EditShape:
    """The `EditShape` of replacing positions [row, row + n_delete) of `order_before` by `new_slots`."""
    deleted = order_before[row:row + n_delete].copy()
    moved = order_after[row + len(new_slots):] if len(new_slots) != n_delete else EMPTY
    return EditShape(row, new_slots, deleted, moved, moved)
