"""Bursts in `DocumentManager`: `compose_edits` (one splice equal to a sequence of character edits,
overlapping, adjacent and deleting ones included), and the manager coalescing the edits of one document
queued behind the one it takes: one engine edit, every request answered in order (`coalesced`), the
document then equal to a fresh one and to full.onnx; an edit that does not fit stops the merge and gets
its own error."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import WORDS, assert_chunks_same_as_full

from vqinc.runtime.serve.manager import DocumentManager, _Job, compose_edits


def apply(text: str, edits) -> str:
    for a, b, u in edits:
        text = text[:a] + u + text[b:]
    return text


@st.composite
def bursts(draw):
    """A text and edits on it, each valid on the text the ones before it leave: small alphabets and
    short texts, so that edits overlap, touch and undo each other often."""
    alphabet = st.sampled_from("ab ")
    text = draw(st.text(alphabet, max_size=12))
    edits, n = [], len(text)
    for _ in range(draw(st.integers(0, 8))):
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + draw(st.integers(0, 4)))))
        u = draw(st.text(alphabet, max_size=3))
        edits.append((a, b, u))
        n += len(u) - (b - a)
    return text, edits


@settings(max_examples=2000, deadline=None)
@given(case=bursts())
def test_composed_edit_equals_the_edits_one_by_one(case):
    text, edits = case
    s, e, t = compose_edits(text, edits)
    assert 0 <= s <= e <= len(text)
    assert text[:s] + t + text[e:] == apply(text, edits)
    if len(t) and e > s:  # trimmed: the splice neither starts nor ends by rewriting a character unchanged
        assert text[s] != t[0] and text[e - 1] != t[-1]


def test_compose_examples():
    assert compose_edits("hello", []) == (0, 0, "")
    assert compose_edits("", [(0, 0, "a"), (1, 1, "b"), (2, 2, "c")]) == (0, 0, "abc")  # typing
    assert compose_edits("abc", [(2, 3, ""), (1, 2, ""), (0, 1, "")]) == (0, 3, "")  # backspaces
    assert compose_edits("abc", [(3, 3, "x"), (3, 4, "")]) == (3, 3, "")  # typed, then deleted
    assert compose_edits("0123456789", [(2, 3, "X"), (7, 8, "Y")]) == (2, 8, "X3456Y")  # apart
    with pytest.raises(ValueError, match=r"edit 1: edit span \[0, 5\) is invalid.*<= 4"):
        compose_edits("abc", [(0, 0, "x"), (0, 5, "")])


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


def assert_doc_is_fresh(model, doc) -> None:
    """A manager's document == `model.document(doc.text, chunked=True)`: tokens and codes exactly,
    logits within 1e-4; and each chunk == full.onnx."""
    ref = model.document(doc.text, chunked=True)
    assert doc.token_ids.tolist() == ref.token_ids.tolist()
    for c, r in zip(doc.chunk_codes(), ref.chunk_codes(), strict=True):
        assert int((c != r).sum()) == 0
    np.testing.assert_allclose(doc.logits, ref.logits, atol=1e-4, rtol=0)
    assert_chunks_same_as_full(model, doc)


@st.composite
def word_bursts(draw):
    text = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=12)))
    edits, n = [], len(text)
    for _ in range(draw(st.integers(2, 12))):
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + draw(st.integers(0, 6)))))
        u = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=2)))
        edits.append((a, b, u))
        n += len(u) - (b - a)
    return text, edits


@settings(max_examples=30, deadline=None)
@given(case=word_bursts())
def test_a_burst_is_one_engine_edit_and_exact(model, case):
    """Edits queued together (no worker: they run at `run_pending`) are one engine edit; every request
    gets its reply, with its own tag, in order; the document equals a fresh one."""
    text, edits = case
    mgr = DocumentManager(model, threaded=False)
    try:
        mgr.open("d", text)
        mgr.run_pending()
        n_before = len(mgr.batches)
        futures = [mgr.edit("d", a, b, u, tag=i) for i, (a, b, u) in enumerate(edits)]
        assert mgr.run_pending() == len(edits)
        assert len(mgr.batches) == n_before + 1  # one engine edit for the burst
        results = [f.result() for f in futures]
        assert [r.tag for r in results] == list(range(len(edits)))
        final = apply(text, edits)
        doc = mgr._docs["d"].doc
        assert doc.text == final
        assert_doc_is_fresh(model, doc)
        for r in results:
            assert r.error is None and r.coalesced == len(edits) and r.num_chars == len(final)
            assert r.to_json(mgr.labels)["coalesced"] == len(edits)
            np.testing.assert_allclose(r.logits, doc.logits, atol=0, rtol=0)
    finally:
        mgr.shutdown()


class GatedModel:
    """The model, whose `document` waits for `gate` (to hold the worker while edits queue up)."""

    def __init__(self, model):
        self._m, self.gate = model, threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self._m, name)

    def document(self, text="", chunked=None):
        self.gate.wait(30)
        return self._m.document(text, chunked=chunked)


def test_random_bursts_through_the_worker(model):
    """Keystrokes faster than the model: with the worker thread, whatever bursts form, every reply comes,
    in order, and the document ends equal to a fresh one."""
    rng = np.random.default_rng(0)
    gated = GatedModel(model)
    mgr = DocumentManager(gated)
    try:
        text = "An utterly charming film."
        mgr.open("d", text).result(30)
        futures = []
        gated.gate.clear()  # the worker blocks building "blocker": the first 60 edits surely form one burst
        blocker = mgr.open("blocker", "x")
        for i in range(120):
            if i == 60:
                gated.gate.set()  # then the worker races the rest: bursts of any size
            a = int(rng.integers(0, len(text) + 1))
            b = min(len(text), a + int(rng.integers(0, 3)))
            u = str(rng.choice(WORDS)) if rng.random() < 0.7 else ""
            futures.append(mgr.edit("d", a, b, u, tag=i))
            text = text[:a] + u + text[b:]
        results = [f.result(30) for f in futures]
        assert blocker.result(30).error is None
        assert [r.tag for r in results] == list(range(120))
        assert results[-1].num_chars == len(text) and all(r.error is None for r in results)
        doc = mgr._docs["d"].doc
        assert doc.text == text
        assert_doc_is_fresh(model, doc)
        assert max(r.coalesced for r in results) >= 60
    finally:
        mgr.shutdown()


def test_a_burst_stops_at_an_edit_that_does_not_fit(model):
    """An edit that does not fit the text it applies to (here one put on the queue behind the manager's
    checks) is not merged: the edits before it run as one, it is answered with its error and changes
    nothing, and the edits after it run next."""
    mgr = DocumentManager(model, threaded=False)
    try:
        mgr.open("d", "The film.")
        mgr.run_pending()
        rec = mgr._docs["d"]
        good = [mgr.edit("d", 0, 3, "A"), mgr.edit("d", 1, 1, " fine")]  # "A fine film."
        bad = _Job("edit", rec, 40, 41, "x", tag="bad")
        mgr._queue.append(bad)
        after = mgr.edit("d", 0, 1, "One")  # "One fine film."
        assert mgr.run_pending() == 4
        for f in good:
            assert f.result().error is None and f.result().coalesced == 2
        res = bad.future.result()
        assert res.code == "bad_request" and "[40, 41) is invalid" in res.error and res.tag == "bad"
        assert after.result().coalesced == 1 and after.result().error is None
        assert rec.doc.text == "One fine film."
        assert_doc_is_fresh(model, rec.doc)
    finally:
        mgr.shutdown()
