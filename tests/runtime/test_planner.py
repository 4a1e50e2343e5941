"""The planner alone (no ONNX Runtime): which rows an edit makes dirty, which keys come and go, which
queries are updated lazily, and when the suffix goes dense."""

from __future__ import annotations

import numpy as np

from vqinc.runtime.engine.planner import edit_shape, plan_layer


def _doc(n: int, cap: int = 512, seed: int = 0):
    """A document of n rows stored in shuffled slots: (pos (cap,), order (n,))."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(cap)[:n].astype(np.int64)
    pos = np.full(cap, -1, np.int64)
    pos[order] = np.arange(n)
    return pos, order


def _new(pos, slots):
    mask = np.zeros(len(pos), bool)
    mask[slots] = True
    return mask


NONE = np.zeros(0, np.int64)


def _splice(pos, order, row, n_delete, new_slots):
    after = np.concatenate([order[:row], new_slots, order[row + n_delete:]])
    shape = edit_shape(order, row, n_delete, new_slots, after)
    pos = pos.copy()
    pos[shape.deleted_slots] = -1
    pos[after] = np.arange(len(after))
    return pos, after, shape


def test_insertion_without_positions_touches_only_the_new_row_and_later_queries():
    pos, order = _doc(10, seed=1)
    free = np.setdiff1d(np.arange(len(pos)), order)[:1]
    pos, order, shape = _splice(pos, order, 4, 0, free)
    plan = plan_layer(pos, order, free, shape, "none", _new(pos, free))
    assert plan.dirty.tolist() == free.tolist() and plan.first == 4
    assert not plan.dense and plan.changed_keys == 1 and plan.qkv.size == 0
    assert sorted(plan.lazy.tolist()) == sorted(order[5:].tolist())  # later queries see one new key
    assert plan.recompute.tolist() == free.tolist()


def test_deletion_removes_keys_at_the_edit_position():
    pos, order = _doc(10, seed=2)
    deleted = order[3:5].copy()
    pos, order, shape = _splice(pos, order, 3, 2, np.zeros(0, np.int64))
    plan = plan_layer(pos, order, NONE, shape, "none", _new(pos, NONE))
    assert plan.dirty.size == 0 and plan.first == 3 and plan.changed_keys == len(deleted)
    assert sorted(plan.lazy.tolist()) == sorted(order[3:].tolist())


def test_changed_rows_remove_their_old_keys_and_add_new_ones():
    pos, order = _doc(12, seed=3)
    shape = edit_shape(order, 12, 0, np.zeros(0, np.int64), order)  # a later layer of an edit at the end
    changed = np.sort(order[[2, 7]])
    plan = plan_layer(pos, order, changed, shape, "none", _new(pos, NONE))
    assert sorted(plan.dirty.tolist()) == sorted(changed.tolist())
    assert plan.changed_keys == 4 and plan.first == 2  # old and new values of both
    assert set(plan.lazy.tolist()) == set(order[2:].tolist()) - set(changed.tolist())


def test_rope_insertion_recomputes_every_moved_row():
    pos, order = _doc(10, seed=4)
    free = np.setdiff1d(np.arange(len(pos)), order)[:2]
    pos, order, shape = _splice(pos, order, 6, 0, free)
    plan = plan_layer(pos, order, free, shape, "rope", _new(pos, free))
    moved = order[8:]
    assert sorted(plan.qkv.tolist()) == sorted(moved.tolist())  # positions moved, inputs did not
    assert set(plan.dirty.tolist()) == set(free.tolist()) | set(moved.tolist())
    assert plan.lazy.size == 0  # nothing after the edit is left to update lazily


def test_rope_substitution_stays_sparse():
    pos, order = _doc(10, seed=5)
    free = np.setdiff1d(np.arange(len(pos)), order)[:1]
    pos, order, shape = _splice(pos, order, 3, 1, free)
    plan = plan_layer(pos, order, free, shape, "rope", _new(pos, free))
    assert plan.qkv.size == 0 and plan.dirty.tolist() == free.tolist() and len(plan.lazy) == 6


def test_dense_when_the_lazy_path_would_cost_more():
    pos, order = _doc(400, seed=6)
    shape = edit_shape(order, 400, 0, NONE, order)
    few = np.sort(order[[100, 150]])
    sparse = plan_layer(pos, order, few, shape, "none", _new(pos, NONE), need_rate=0.01)
    assert not sparse.dense and len(sparse.lazy) == 298 and sparse.recompute.tolist() == few.tolist()
    many = np.sort(order[100:300])  # 400 changed keys: updating each later query costs more than redoing it
    plan = plan_layer(pos, order, many, shape, "none", _new(pos, NONE), need_rate=0.01)
    assert plan.dense and plan.lazy.size == 0
    assert sorted(plan.recompute.tolist()) == sorted(order[100:].tolist())
    # a high observed recompute rate makes even a few changed keys go dense
    assert plan_layer(pos, order, few, shape, "none", _new(pos, NONE), need_rate=0.9).dense


def test_nothing_changed_plans_nothing():
    pos, order = _doc(8, seed=7)
    shape = edit_shape(order, 8, 0, NONE, order)
    plan = plan_layer(pos, order, NONE, shape, "none", _new(pos, NONE))
    assert plan.first == 8 and plan.lazy.size == 0 and plan.recompute.size == 0 and not plan.dense
