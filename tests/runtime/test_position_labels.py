"""RoPE position labels (runtime/engine/labels.py, issue 19 item 1): an insertion takes labels between
its neighbours and renumbers nothing, so a RoPE insertion re-attends only rows whose codes change (as
NoPE does); rows are relabelled only when a gap has no room left, and a document always equals a fresh
build of its text with the same labels, and full.onnx at those labels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import assert_same_as_fresh, assert_same_as_full

from vqinc.runtime.engine.labels import check_labels, fresh_labels, place

SCALE = 1 << 16
TEXT = " ".join(["grammar keyword proposal"] * 10)


# -- the labelling policy alone ---------------------------------------------------------------------
@settings(max_examples=100)
@given(ops=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), st.integers(0, 5)), min_size=1, max_size=60),
       scale=st.sampled_from([4, 64, SCALE]))
def test_labels_stay_increasing_and_move_only_what_they_report(ops, scale):
    limit = 2 * 64 * scale
    labels = fresh_labels(8, scale)
    for where, n_delete, k in ops:
        row = 1 + int(where * (len(labels) - 1))
        n_delete = min(n_delete, len(labels) - row)
        kept = np.concatenate([labels[:row], labels[row + n_delete:]])
        if len(kept) + k > 60:
            k = 0
        spliced = np.concatenate([kept[:row], np.full(k, -1, np.int64), kept[row:]])
        r = place(spliced, row, k, scale, limit)
        check_labels(r.labels, len(spliced), limit)  # BOS at 0, strictly increasing, within the limit
        old = np.concatenate([kept[:row], kept[row:]])
        new_old = np.concatenate([r.labels[:row], r.labels[row + k:]])  # the existing rows, after
        moved = np.flatnonzero(new_old != old)
        reported = np.where(r.moved < row, r.moved, r.moved - k)
        assert sorted(moved.tolist()) == sorted(reported.tolist())
        if r.compacted:
            assert np.array_equal(r.labels, fresh_labels(len(spliced), scale))
        labels = r.labels


def test_an_insertion_with_room_moves_nothing():
    labels = fresh_labels(5, SCALE)
    r = place(np.concatenate([labels[:3], [-1, -1], labels[3:]]), 3, 2, SCALE, 1 << 40)
    assert len(r.moved) == 0 and not r.compacted
    assert np.array_equal(r.labels[:3], labels[:3]) and np.array_equal(r.labels[5:], labels[3:])
    assert labels[2] < r.labels[3] < r.labels[4] < labels[3]


def test_typing_at_one_point_relabels_a_window_not_the_document():
    """16 keystrokes halve one gap of 2^16 down to nothing; the 17th spreads a small window."""
    labels = fresh_labels(200, SCALE)
    relabelled = []
    for _ in range(40):
        row = 100
        r = place(np.concatenate([labels[:row], [-1], labels[row:]]), row, 1, SCALE, 1 << 40)
        labels = r.labels
        relabelled.append(len(r.moved))
        assert not r.compacted
    assert relabelled[:15] == [0] * 15  # the gap had room
    assert 0 < max(relabelled) < 40 and sum(relabelled) < 200  # windows, never the whole document


def test_check_labels_names_the_rule():
    with pytest.raises(ValueError, match="start at 0"):
        check_labels([1, 2], 2, 100)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_labels([0, 5, 5], 3, 100)
    with pytest.raises(ValueError, match="integers"):
        check_labels([0.0, 1.5], 2, 100)
    with pytest.raises(ValueError, match="<= 100"):
        check_labels([0, 101], 2, 100)


# -- documents ------------------------------------------------------------------------------------
def test_rope_insertion_is_sparse_with_labels_and_dense_without(loaded):
    labelled, plain = loaded["llama-rope"], loaded["llama-rope-plain"]
    assert labelled.spec.position_scale == SCALE and plain.spec.position_scale == 1
    doc = labelled.document(TEXT)
    s = doc.edit(40, 40, "x")
    assert s.n_insert == 1 and s.relabelled == 0 and not s.compacted
    assert s.rows["embed_qkv"][0] == 1  # layer 0: the new row only, no renumbered row
    assert all(r <= p for r, p in zip(s.rows["embed_qkv"][1:], s.rows["post"], strict=False))
    assert_same_as_fresh(labelled, doc)
    assert_same_as_full(labelled, doc)
    d2 = plain.document(TEXT)
    s2 = d2.edit(40, 40, "x")
    assert s2.rows["embed_qkv"][0] > 20  # every later row moved: its q, k recomputed
    assert s.macs < s2.macs


def test_keystrokes_at_one_point_stay_exact_through_relabelling(loaded):
    model = loaded["llama-rope"]
    doc = model.document(TEXT)
    at, total = 30, 0
    for ch in "incremental":
        s = doc.edit(at, at, ch)
        at += 1
        total += s.relabelled
        assert not s.compacted
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)
    assert total < len(doc.token_ids)
    p = doc.positions
    assert np.all(np.diff(p) > 0) and p[0] > 0


def test_a_fresh_build_with_given_labels_equals_the_edited_document(loaded):
    model = loaded["llama-rope"]
    doc = model.document(TEXT)
    doc.edit(10, 25, "")  # a deletion leaves a gap
    doc.edit(5, 5, "new words ")
    ref = model.document(doc.text, positions=doc.positions)
    assert np.array_equal(ref.positions, doc.positions)
    assert (ref.codes == doc.codes).all()
    np.testing.assert_allclose(ref.logits, doc.logits, atol=1e-4, rtol=0)
    assert not np.array_equal(doc.positions, model.document(doc.text).positions)


def test_compact_relabels_every_token(loaded):
    model = loaded["llama-rope"]
    doc = model.document(TEXT)
    doc.edit(10, 25, "")
    assert not np.array_equal(doc.positions, np.arange(1, len(doc.token_ids) + 1) * SCALE)
    s = doc.compact()
    assert s.compacted and doc.stats.compacted
    assert np.array_equal(doc.positions, np.arange(1, len(doc.token_ids) + 1) * SCALE)
    assert_same_as_full(model, doc)


def test_positions_argument_is_checked(loaded):
    model, none = loaded["llama-rope"], loaded["llama-none"]
    n = len(model.document(TEXT).token_ids)
    with pytest.raises(ValueError, match="needs a RoPE model exported with position labels"):
        none.document(TEXT, positions=np.arange(1, n + 1))
    with pytest.raises(ValueError, match="one label per token"):
        model.document(TEXT, positions=np.arange(1, n))
    with pytest.raises(ValueError, match="strictly increasing"):
        model.document(TEXT, positions=np.ones(n, np.int64))
    with pytest.raises(ValueError, match="integers"):
        model.document(TEXT, positions=np.arange(1, n + 1) * 0.5)
    with pytest.raises(ValueError, match="plain Document"):
        model.document(TEXT, positions=np.arange(1, n + 1), chunked=True)


def test_a_failed_edit_keeps_the_labels(loaded, monkeypatch):
    model = loaded["llama-rope"]
    doc = model.document(TEXT)
    doc.edit(10, 25, "")
    before = doc.positions
    real = model.executor.run

    def boom(name, layer=None, **feeds):
        if name == "post":
            raise RuntimeError("simulated device failure")
        return real(name, layer, **feeds)

    monkeypatch.setattr(model.executor, "run", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        doc.edit(3, 3, "more ")
    monkeypatch.undo()
    assert np.array_equal(doc.positions, before)
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)
