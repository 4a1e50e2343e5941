"""Documents under hostile use: invalid edits after token-level edits, bad token ids, no-op edits,
bounded history, one document edited from two threads, and `Model.edit_many` (several documents in
shared graph calls) against editing each alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tests_support import assert_same_as_fresh, assert_same_as_full

from vqinc.runtime.document import HISTORY

TEXT = "An utterly charming film. The plot is thin but the acting is superb."


def _snapshot(doc):
    return doc.text, doc.token_ids.copy(), doc.codes.copy(), doc.logits.copy(), len(doc.history)


def _assert_unchanged(doc, snap):
    text, ids, codes, logits, n_hist = snap
    assert doc.text == text and doc.token_ids.tolist() == ids.tolist()
    assert (doc.codes == codes).all() and (doc.logits == logits).all() and len(doc.history) == n_hist


def _split_into_bytes(model, doc, k):
    """Replace token k of `doc` by one token per character of it: a valid but non-canonical tokenisation."""
    piece = model.tokenizer.decode([int(doc.token_ids[k])])
    singles = [model.tokenizer.token_to_id(model.tokenizer.encode(c, add_special_tokens=False).tokens[0])
               for c in piece]
    assert len(singles) > 1 and None not in singles
    doc.edit_tokens(k, 1, singles)
    return len(singles)


def test_invalid_edit_after_non_canonical_token_edit_changes_nothing(loaded):
    model = loaded["llama-none"]
    doc = model.document(TEXT)
    k = next(i for i, t in enumerate(doc.token_ids) if len(model.tokenizer.decode([int(t)])) >= 4)
    _split_into_bytes(model, doc, k)
    snap = _snapshot(doc)
    for bad in [(-1, 0, "x"), (0, 10_000, "x"), (3, 1, "x")]:
        with pytest.raises(ValueError):
            doc.edit(*bad)
        _assert_unchanged(doc, snap)
    with pytest.raises(ValueError, match="surrogate"):
        doc.set_text("\ud800")
    _assert_unchanged(doc, snap)
    doc.edit(0, 2, "A")  # a valid edit re-canonicalises the tokens and equals a fresh document
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)


def test_lone_surrogates_are_refused_everywhere(loaded):
    model = loaded["llama-none"]
    doc = model.document(TEXT)
    snap = _snapshot(doc)
    with pytest.raises(ValueError, match="surrogate"):
        doc.edit(3, 3, "a\udfffb")
    with pytest.raises(ValueError, match="surrogate"):
        doc.set_text("\ud800")
    _assert_unchanged(doc, snap)
    with pytest.raises(ValueError, match="surrogate"):
        model.document("\ud83d")


@pytest.mark.parametrize("ids, exc", [([1.7], TypeError), ([True], TypeError), ([2**70], ValueError),
                                      (np.array([1.5]), TypeError), ("12", TypeError), ([-1], ValueError)])
def test_edit_tokens_refuses_non_integer_ids(loaded, ids, exc):
    doc = loaded["llama-none"].document(TEXT)
    snap = _snapshot(doc)
    with pytest.raises(exc):
        doc.edit_tokens(1, 0, ids)
    _assert_unchanged(doc, snap)


def test_noop_edits_record_nothing(loaded):
    doc = loaded["llama-none"].document(TEXT)
    n = len(doc.history)
    for noop in [(0, 0, ""), (5, 5, ""), (len(TEXT), len(TEXT), "")]:
        s = doc.edit(*noop)
        assert s.macs == 0 and s.graph_calls == 0
    doc.set_text(TEXT)
    doc.edit_tokens(2, 0, [])
    assert len(doc.history) == n


def test_history_is_bounded(loaded):
    doc = loaded["llama-none"].document("x")
    for i in range(HISTORY + 20):
        doc.edit(0, len(doc.text), "ab"[i % 2])
    assert len(doc.history) == HISTORY
    assert doc.stats is doc.history[-1]


def test_one_document_edited_from_two_threads(loaded):
    model = loaded["llama-none"]
    doc = model.document("The proposal adds a keyword.")
    errors = []

    def typist(char, at_start):
        try:
            for _ in range(40):
                end = len(doc.text)  # may be stale when the edit runs: still a valid offset (text only grows)
                doc.edit(0, 0, char) if at_start else doc.edit(end, end, char)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=typist, args=("a", True)), threading.Thread(target=typist, args=("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert doc.text.count("a") == 40 + "The proposal adds a keyword.".count("a")
    assert doc.text.count("b") == 40 + "The proposal adds a keyword.".count("b")
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)


@pytest.mark.parametrize("name", ["llama-none", "llama-rope", "opt-learned"])
def test_edit_many_equals_editing_each_alone(loaded, name):
    model = loaded[name]
    texts = [TEXT, "The proposal adds a keyword to the grammar.", "日本 🙂 x", "a"]
    edits = [(3, 10, "dreary"), (4, 4, "new "), (0, 2, ""), (1, 1, " grammar")]
    together = [model.document(t) for t in texts]
    alone = [model.document(t) for t in texts]
    stats = model.edit_many([(d, *e) for d, e in zip(together, edits, strict=True)])
    assert len(stats) == len(texts)
    for d_many, d_one, e in zip(together, alone, edits, strict=True):
        d_one.edit(*e)
        assert d_many.text == d_one.text
        assert (d_many.codes == d_one.codes).all()
        np.testing.assert_allclose(d_many.logits, d_one.logits, atol=1e-4, rtol=0)
        assert_same_as_fresh(model, d_many)
        assert_same_as_full(model, d_many)


def test_edit_many_applies_repeated_documents_in_order_and_shares_calls(loaded):
    model = loaded["llama-none"]
    a, b = model.document("abc"), model.document("The proposal adds a keyword.")
    stats = model.edit_many([(a, 3, 3, "d"), (b, 4, 12, "film"), (a, 0, 1, "A"), (a, 4, 4, "!")])
    assert a.text == "Abcd!" and b.text == "The film adds a keyword."
    assert stats[0].graph_calls == stats[1].graph_calls  # one engine pass for the first round
    for d in (a, b):
        assert_same_as_fresh(model, d)
        assert_same_as_full(model, d)


def test_edit_many_validates_everything_first(loaded):
    model = loaded["llama-none"]
    a, b = model.document("abc"), model.document("The proposal adds a keyword.")
    snaps = [_snapshot(a), _snapshot(b)]
    with pytest.raises(ValueError, match=r"edits\[2\]"):
        model.edit_many([(a, 0, 1, "x"), (b, 0, 3, "A"), (a, 2, 99, "y")])
    _assert_unchanged(a, snaps[0])
    _assert_unchanged(b, snaps[1])
    with pytest.raises(TypeError, match=r"edits\[0\]"):
        model.edit_many([("not a document", 0, 0, "x")])


def test_edit_many_and_single_edits_from_threads_do_not_deadlock(loaded):
    model = loaded["llama-none"]
    docs = [model.document(f"document {i} with a keyword") for i in range(4)]
    errors = []

    def many(order):
        try:
            for _ in range(15):
                model.edit_many([(docs[i], 0, 0, "x") for i in order])
        except Exception as e:  # pragma: no cover
            errors.append(e)

    def single():
        try:
            for _ in range(15):
                for d in docs:
                    d.edit(0, 0, "y")
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=many, args=([0, 1, 2, 3],)), threading.Thread(target=many, args=([3, 2, 1, 0],)),
               threading.Thread(target=single)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors
    for i, d in enumerate(docs):
        base = f"document {i} with a keyword"
        assert d.text.endswith(base)
        assert d.text.count("x") == 30 + base.count("x") and d.text.count("y") == 15 + base.count("y")
        assert_same_as_fresh(model, d)
        assert_same_as_full(model, d)


def test_large_deletions_give_memory_back_and_stay_exact(loaded):
    model = loaded["llama-none"]
    doc = model.document("The proposal adds a keyword to the grammar. " * 12)
    cap = doc.state.capacity
    doc.edit(10, len(doc.text) - 10, "")
    assert doc.state.capacity < cap / 2  # compacted to the rows left
    assert doc.state.order.tolist() == list(range(doc.state.n))
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)
    doc.edit(5, 5, " grows again: the proposal adds a keyword")
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)
