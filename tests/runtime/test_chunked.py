"""ChunkedDocument (runtime/chunked.py): documents longer than the window, on the tiny models (window 255 tokens).

The invariant, per chunk: after any edit sequence the chunks are a fresh chunking of the final text, every
chunk's codes equal a fresh build's (and full.onnx's), its logits within 1e-4; the document's logits follow
the stated rule (checked against PyTorch)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import assert_chunks_same_as_full

from vqinc.runtime.chunked import ChunkedDocument
from vqinc.runtime.document import Document
from vqinc.runtime.text.chunking import ChunkConfig

CFG = ChunkConfig(max_tokens=255, min_chars=60, period=3, max_chars=500, hash_window=8, single_max_chars=300)
SENTENCES = [
    "The proposal adds a keyword to the grammar.", "Existing code keeps working; the new form is opt-in.",
    "An utterly charming film, though its second half drags.", "Rejected ideas: a decorator, a context manager.",
    "Backwards compatibility is preserved.", "", "Nothing that parses today changes meaning tomorrow.",
]


def long_text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choices(SENTENCES, k=rng.randint(0, 2))) for _ in range(lines))


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


def assert_same_as_fresh(model, doc: ChunkedDocument) -> None:
    ref = ChunkedDocument(model, doc.text, doc.config)
    assert doc.bounds == ref.bounds, "the chunks are a fresh chunking of the text"
    assert doc.token_ids.tolist() == ref.token_ids.tolist()
    for k, (a, b) in enumerate(zip(doc.chunk_codes(), ref.chunk_codes(), strict=True)):
        assert (a == b).all(), f"chunk {k}: {(a != b).sum()} codes differ from a fresh build"
    for a, b in zip(doc.chunk_logits(), ref.chunk_logits(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    np.testing.assert_allclose(doc.logits, ref.logits, atol=1e-4, rtol=0)
    assert_chunks_same_as_full(model, doc)


def test_long_text_is_several_chunks_within_the_window(model):
    text = long_text(0, 120)
    doc = model.document(text, chunking=CFG)
    assert isinstance(doc, ChunkedDocument) and len(doc.chunks) >= 4
    assert doc.num_tokens + 1 > model.max_positions, "the whole text does not fit one window"
    assert "".join(doc.text[c.start:c.end] for c in doc.chunks) == text
    assert all(0 < c.num_tokens <= model.max_positions - 1 for c in doc.chunks)
    assert doc.stats.chunks_built == len(doc.chunks) and doc.stats.macs >= doc.stats.full_macs


def test_result_rule_against_pytorch(model, exported):
    """mean pooling: the token-weighted mean of the chunks' final hidden rows (BOS rows included), then the head;
    each chunk's codes and logits also equal full.onnx on its tokens."""
    doc = ChunkedDocument(model, long_text(1, 80), CFG)
    tm = exported["llama-none"].torch_model
    hidden = []
    for chunk, codes in zip(doc.chunks, doc.chunk_codes(), strict=True):
        ids = model.encode_ids(doc.text[chunk.start:chunk.end])
        with torch.no_grad():
            out = tm(torch.from_numpy(ids)[None])
        hidden.append(out.hidden[0])
        full_logits, full_codes = model.run_full(ids)
        assert (codes == full_codes).all()
        np.testing.assert_allclose(chunk.logits, full_logits[0], atol=1e-4, rtol=0)
    with torch.no_grad():
        want = tm.classifier(torch.cat(hidden).mean(0, keepdim=True))[0].numpy()
    np.testing.assert_allclose(doc.logits, want, atol=1e-4, rtol=0)


def test_one_chunk_is_exactly_a_plain_document(model):
    text = "The proposal adds a keyword to the grammar."
    plain, chunked = model.document(text), model.document(text, chunked=True)
    assert isinstance(plain, Document) and isinstance(chunked, ChunkedDocument)
    assert len(chunked.chunks) == 1
    assert (chunked.logits == plain.logits).all() and (chunked.chunk_codes()[0] == plain.codes).all()


@st.composite
def edit_sequences(draw):
    text = long_text(draw(st.integers(0, 3)), draw(st.integers(5, 90)))
    n, edits = len(text), []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["type", "delete", "paste", "newline", "cut", "all"]))
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + {"cut": 2000}.get(kind, 40))))
        piece = {"type": draw(st.sampled_from(["x", " the", "é🙂"])), "delete": "", "newline": "\n",
                 "paste": "\n".join(draw(st.lists(st.sampled_from(SENTENCES), max_size=12))), "cut": ""}.get(kind, "")
        if kind in ("type", "newline"):
            b = a
        if kind == "all":
            a, b, piece = 0, n, draw(st.sampled_from(["", long_text(9, 40)]))
        edits.append((a, b, piece))
        n += len(piece) - (b - a)
    return text, edits


@settings(max_examples=25)
@given(case=edit_sequences())
def test_random_edit_sequences_equal_fresh_chunking(model, case):
    text, edits = case
    doc = ChunkedDocument(model, text, CFG)
    for a, b, piece in edits:
        st_ = doc.edit(a, b, piece)
        text = text[:a] + piece + text[b:]
        assert doc.text == text
        assert st_.num_chunks == len(doc.chunks) and st_.num_tokens == doc.num_tokens
        assert_same_as_fresh(model, doc)


def test_a_keystroke_touches_one_chunk(model):
    doc = ChunkedDocument(model, long_text(2, 150), CFG)
    rng = random.Random(3)
    touched = []
    for _ in range(30):
        at = rng.randrange(len(doc.text))
        s = doc.edit(at, at, "x")
        touched.append(s.chunks_edited + s.chunks_built)
        assert s.macs < s.full_macs
    assert sorted(touched)[len(touched) // 2] == 1
    assert_same_as_fresh(model, doc)


def test_growing_past_the_window_and_back(model):
    doc = model.document("A short start.\n", chunked=True, chunking=CFG)
    assert len(doc.chunks) == 1
    for k in range(12):  # appends, like typing at the end
        doc.edit(len(doc.text), len(doc.text), long_text(k, 8) + "\n")
    assert len(doc.chunks) > 2
    assert_same_as_fresh(model, doc)
    doc.edit(20, len(doc.text), "")
    assert len(doc.chunks) == 1
    assert_same_as_fresh(model, doc)
    np.testing.assert_allclose(doc.logits, model.document(doc.text).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [(-1, 0, "x"), (0, 10**9, ""), (5, 4, ""), (0, 1, b"x"), (0.0, 1, "x"),
                                 (0, 1, "\ud800"), (True, 1, "x")])
def test_invalid_edit_changes_nothing(model, bad):
    doc = ChunkedDocument(model, long_text(4, 60), CFG)
    before = (doc.text, doc.bounds, doc.logits, [c.copy() for c in doc.chunk_codes()], len(doc.history))
    with pytest.raises((ValueError, TypeError)):
        doc.edit(*bad)
    assert (doc.text, doc.bounds) == before[:2] and (doc.logits == before[2]).all()
    assert all((a == b).all() for a, b in zip(doc.chunk_codes(), before[3], strict=True))
    assert len(doc.history) == before[4]


def test_ten_megabyte_paste_is_refused_and_changes_nothing(model):
    doc = model.document(long_text(5, 60), chunking=CFG)
    text, logits = doc.text, doc.logits
    with pytest.raises(ValueError, match="at most 1,000,000"):
        doc.edit(3, 3, "x" * 10_000_000)
    with pytest.raises(ValueError, match="at most 1,000,000"):
        model.document("y" * 10_000_000)
    assert doc.text == text and (doc.logits == logits).all()
    doc.edit(3, 3, "ok ")  # still usable
    assert_same_as_fresh(model, doc)


def test_deleting_everything(model):
    doc = ChunkedDocument(model, long_text(6, 60), CFG)
    st_ = doc.edit(0, len(doc.text), "")
    assert doc.text == "" and doc.bounds == [0, 0] and st_.num_tokens == 0
    assert_same_as_fresh(model, doc)
    np.testing.assert_allclose(doc.logits, model.document("").logits, atol=1e-4, rtol=0)
    doc.edit(0, 0, long_text(7, 50))
    assert_same_as_fresh(model, doc)


def test_noop_edit_records_nothing(model):
    doc = ChunkedDocument(model, long_text(8, 60), CFG)
    n = len(doc.history)
    assert doc.edit(5, 5, "").macs == 0 and doc.edit(0, 3, doc.text[:3]).macs == 0
    assert len(doc.history) == n


def test_edit_many_mixes_plain_and_chunked(model):
    long_a, long_b, short = long_text(10, 70), long_text(11, 70), "Backwards compatibility is preserved."
    docs = [model.document(long_a, chunking=CFG), model.document(long_b, chunking=CFG), model.document(short)]
    refs = [model.document(long_a, chunking=CFG), model.document(long_b, chunking=CFG), model.document(short)]
    edits = [(0, 10, 10, "new "), (1, 0, 5, ""), (2, 0, 1, "b"), (0, 200, 200, "\nmore\n"), (1, 3, 3, "x")]
    model.edit_many([(docs[i], a, b, s) for i, a, b, s in edits])
    for i, a, b, s in edits:
        refs[i].edit(a, b, s)
    for d, r in zip(docs, refs, strict=True):
        assert d.text == r.text
        np.testing.assert_allclose(d.logits, r.logits, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"edits\[1\]"):  # one invalid edit: nothing changes
        model.edit_many([(docs[0], 0, 0, "z"), (docs[1], 0, 10**6, "")])
    assert docs[0].text == refs[0].text
