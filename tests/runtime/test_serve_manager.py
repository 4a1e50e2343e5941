"""`DocumentManager` with the tiny models: results equal a fresh document and full.onnx after every job,
limits give clear errors and change nothing, a refused edit (over the model's window) is recovered from,
edits of one document stay in order, and edits of several documents that arrive together go through the
real `model.edit_many` (one call), with a correct answer per document when that call refuses the batch
(it changes nothing then, and the manager redoes the edits one by one)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import WORDS, full_onnx_logits

from vqinc.runtime.serve.manager import DocumentManager, LimitError, NotOpenError, ServeError, ServeLimits


def assert_result_is_fresh(model, res, text: str) -> None:
    """A manager result equals `model.document(text, chunked=True)`: label, probabilities and logits within 1e-4."""
    ref = model.document(text, chunked=True)
    assert res.error is None, res.error
    assert res.label == ref.label
    np.testing.assert_allclose(res.logits, ref.logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(res.probs, ref.probs, atol=1e-4, rtol=0)
    assert res.num_tokens == len(ref.token_ids) and res.num_chars == len(text)
    oracle = full_onnx_logits(model, text)  # outside the engine (None: a chunked text, no one-graph oracle)
    if oracle is not None:
        np.testing.assert_allclose(res.logits, oracle, atol=1e-4, rtol=0)


class ManyModel:
    """The real model, recording the size of each `edit_many` call (which it passes on to the real one),
    and with a gate that holds `document` (so that edits queue up behind it)."""

    def __init__(self, model, refuse: bool = False):
        self._m, self.calls, self.refuse = model, [], refuse
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self._m, name)

    def document(self, text="", chunked=None):
        self.gate.wait(30)
        return self._m.document(text, chunked=chunked)

    def edit_many(self, edits):
        self.calls.append(len(edits))
        if self.refuse:  # as the real one refuses an invalid batch: before anything changes
            raise ValueError("batch refused")
        return self._m.edit_many(edits)


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


@st.composite
def sequences(draw):
    text = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=10)))
    edits, n = [], len(text)
    for _ in range(draw(st.integers(1, 5))):
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        piece = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=3)))
        edits.append((a, b, piece))
        n += len(piece) - (b - a)
    return text, edits


@settings(max_examples=40)
@given(case=sequences())
def test_every_result_equals_a_fresh_document(model, case):
    text, edits = case
    mgr = DocumentManager(model)
    try:
        assert_result_is_fresh(model, mgr.open("d", text, tag=0).result(30), text)
        for i, (a, b, piece) in enumerate(edits, 1):
            res = mgr.edit("d", a, b, piece, tag=i).result(30)
            text = text[:a] + piece + text[b:]
            assert res.tag == i
            assert_result_is_fresh(model, res, text)
        assert mgr.stats("d")["summary"]["edits"] == len(edits) + 1
        assert mgr.close("d").result(30).closed and not mgr.is_open("d")
    finally:
        mgr.shutdown()


def test_limits_are_clear_and_change_nothing(model):
    mgr = DocumentManager(model, ServeLimits(max_documents=2, max_chars=50))
    try:
        mgr.open("a", "An utterly charming film.").result(30)
        mgr.open("b", "").result(30)
        with pytest.raises(LimitError, match=r"2 documents are open.*--max-documents 2"):
            mgr.open("c", "x")
        mgr.open("a", "re-opening an open key replaces it").result(30)  # not a new document
        with pytest.raises(LimitError, match=r"51 characters is over this server's limit of 50"):
            mgr.open("b", "x" * 51)
        assert mgr.is_open("b")  # the refused re-open left the old document alone
        with pytest.raises(LimitError, match=r"would make the document 60 characters"):
            mgr.edit("b", 0, 0, "y" * 60)
        with pytest.raises(ServeError, match=r"edit span \[3, 1\) is invalid.*<= 0"):
            mgr.edit("b", 3, 1, "")
        with pytest.raises(ServeError, match="start must be an integer, got str"):
            mgr.edit("b", "0", 0, "")
        with pytest.raises(ServeError, match="text must be a string"):
            mgr.edit("b", 0, 0, None)
        with pytest.raises(NotOpenError, match="'zzz' is not open"):
            mgr.edit("zzz", 0, 0, "x")
        res = mgr.edit("b", 0, 0, "still fine").result(30)
        assert_result_is_fresh(model, res, "still fine")
        assert mgr.num_open == 2
    finally:
        mgr.shutdown()


def test_documents_longer_than_the_window_are_chunked(model):
    """A document that grows past the model's window is cut into chunks (ChunkedDocument) and keeps its
    results; cut down again, it is one chunk."""
    mgr = DocumentManager(model)
    long_piece = " proposal" * 300  # far over the tiny model's 255 tokens
    try:
        mgr.open("d", "The film.").result(30)
        res = mgr.edit("d", 4, 4, long_piece).result(30)
        text = "The " + long_piece + "film."
        assert_result_is_fresh(model, res, text)
        assert res.num_tokens > model.max_positions
        res = mgr.edit("d", 0, 3, "A").result(30)
        text = "A" + text[3:]
        assert_result_is_fresh(model, res, text)
        res = mgr.edit("d", 2, 2 + len(long_piece), "").result(30)
        assert_result_is_fresh(model, res, "A film.")
        res = mgr.open("e", long_piece).result(30)  # an open over the window, then cut down
        assert_result_is_fresh(model, res, long_piece)
        assert_result_is_fresh(model, mgr.edit("e", 20, len(long_piece), "").result(30), long_piece[:20])
    finally:
        mgr.shutdown()


def test_edits_of_one_document_stay_in_order(model):
    mgr = DocumentManager(model)
    try:
        mgr.open("d", "").result(30)
        futures = [mgr.edit("d", i, i, "ab"[i % 2], tag=i) for i in range(40)]
        results = [f.result(30) for f in futures]
        assert [r.tag for r in results] == list(range(40))
        assert_result_is_fresh(model, results[-1], "ab" * 20)
    finally:
        mgr.shutdown()


def test_concurrent_edits_go_through_edit_many(model):
    many = ManyModel(model)
    mgr = DocumentManager(many)
    texts = {k: f"Document {k}: an utterly charming film." for k in "abcd"}
    try:
        for k, t in texts.items():
            mgr.open(k, t).result(30)
        many.gate.clear()  # the worker blocks building "blocker" while edits of a..d queue up
        blocker = mgr.open("blocker", "x")
        futures = {k: mgr.edit(k, 0, 8, "Review") for k in texts}
        many.gate.set()
        blocker.result(30)
        for k, f in futures.items():
            res = f.result(30)
            assert res.batch == 4
            assert_result_is_fresh(model, res, "Review" + texts[k][8:])
        assert many.calls == [4]
    finally:
        mgr.shutdown()


def test_refused_edit_many_answers_each_document(model):
    """The batch call refuses four edits (changing nothing, as the real one does): the manager redoes
    them one by one, each with its own answer; one grows past the window and is chunked."""
    many = ManyModel(model, refuse=True)
    mgr = DocumentManager(many)
    try:
        for k in "abcd":
            mgr.open(k, f"Doc {k}.").result(30)
        many.gate.clear()
        blocker = mgr.open("blocker", "x")
        futures = {k: mgr.edit(k, 0, 3, "Text") for k in "abc"}
        futures["d"] = mgr.edit("d", 0, 0, " proposal" * 300)
        many.gate.set()
        blocker.result(30)
        for k in "abc":
            assert_result_is_fresh(model, futures[k].result(30), f"Text {k}.")
        assert_result_is_fresh(model, futures["d"].result(30), " proposal" * 300 + "Doc d.")
        assert many.calls == [4]
    finally:
        mgr.shutdown()


def test_shutdown_closes_everything(model):
    mgr = DocumentManager(model)
    mgr.open("a", "x").result(30)
    mgr.shutdown()
    assert mgr.num_open == 0
    with pytest.raises(ServeError, match="shutting down"):
        mgr.open("b", "y")


def test_without_a_worker_jobs_run_in_the_callers_thread_as_one_batch(model):
    """`threaded=False` (one front-end on one event loop): nothing runs until `run_pending`, which runs
    everything queued in order, the edits of different documents as one `edit_many` call."""
    many = ManyModel(model)
    mgr = DocumentManager(many, threaded=False)
    opens = [mgr.open(k, f"Doc {k}.") for k in "abc"]
    edits = [mgr.edit(k, 0, 3, "Text") for k in "abc"] + [mgr.edit("a", 0, 0, "1. ")]
    assert not any(f.done() for f in opens + edits)
    assert mgr.run_pending() == 7 and all(f.done() for f in opens + edits)
    assert many.calls == [3]  # a, b, c together; a's second edit after them, on its own
    assert_result_is_fresh(model, edits[-1].result(), "1. Text a.")
    for k, f in zip("bc", edits[1:3], strict=True):
        assert_result_is_fresh(model, f.result(), f"Text {k}.")
    mgr.shutdown()
    assert mgr.num_open == 0
