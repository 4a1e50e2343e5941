"""The core invariant: after any edit sequence a document equals a fresh one built from its final text
(tokens identical, codes identical, logits within 1e-4), in every positional mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import WORDS, assert_same_as_full, edit_checking_every_step, kernel_path

MODES = ["llama-none", "llama-rope", "llama-rope-plain", "opt-learned"]


@pytest.mark.parametrize("name", MODES)
def test_fresh_document_matches_pytorch(loaded, exported, name):
    model, e = loaded[name], exported[name]
    text = "Backwards compatibility is preserved: nothing that parses today changes meaning."
    doc = model.document(text)
    ids = model.encode_ids(text)
    with torch.no_grad():
        out = e.torch_model(torch.from_numpy(ids)[None])
    np.testing.assert_allclose(doc.logits, out.logits[0].numpy(), atol=1e-4)
    assert (doc.codes == torch.stack(out.codes)[:, 0].numpy()).all()
    assert doc.stats.macs == doc.stats.full_macs  # a fresh build does exactly the full work


@st.composite
def edit_sequences(draw):
    text = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=12)))
    edits = []
    n = len(text)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "start", "end", "all"]))
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        piece = "".join(draw(st.lists(st.sampled_from(WORDS), max_size=3)))
        if kind == "insert":
            b = a
        elif kind == "delete":
            piece = ""
        elif kind == "start":
            a = 0
            b = max(a, min(b, n))
        elif kind == "end":
            a, b = min(a, n), n
        elif kind == "all":
            a, b = 0, n
        edits.append((a, b, piece))
        n = n - (b - a) + len(piece)
    return text, edits


@pytest.mark.parametrize("name", MODES)
@given(case=edit_sequences())
def test_random_edit_sequences_equal_fresh(loaded, name, case):
    edit_checking_every_step(loaded[name], *case)


@pytest.mark.parametrize("name", MODES)
@settings(max_examples=40)
@given(case=edit_sequences())
def test_random_edit_sequences_equal_fresh_on_the_numpy_path(loaded, name, case):
    """The engine without its C kernels (a machine without a compiler) keeps the same guarantee."""
    with kernel_path("numpy"):
        edit_checking_every_step(loaded[name], *case)


@pytest.mark.parametrize("name", MODES)
def test_noop_edit_recomputes_nothing(loaded, name):
    doc = loaded[name].document("An utterly charming film, though its second half drags.")
    before, n_hist = doc.codes.copy(), len(doc.history)
    s = doc.edit(10, 10, "")
    assert all(v == [0] * loaded[name].num_layers for v in s.rows.values())
    assert s.macs == 0 and s.graph_calls == 0
    assert (doc.codes == before).all()
    assert len(doc.history) == n_hist  # a no-op records nothing


@pytest.mark.parametrize("name", MODES)
def test_edit_then_undo_restores_every_code(loaded, name):
    text = "Rejected ideas: a decorator, a context manager, and a new builtin function."
    doc = loaded[name].document(text)
    codes, logits = doc.codes.copy(), doc.logits.copy()
    doc.edit(16, 27, "an awful film")
    doc.edit(16, 16 + len("an awful film"), text[16:27])
    assert doc.text == text
    assert (doc.codes == codes).all()
    np.testing.assert_allclose(doc.logits, logits, atol=1e-5)
    assert_same_as_full(loaded[name], doc)


@pytest.mark.parametrize("name", MODES)
def test_edits_one_by_one_equal_composed_edit(loaded, name):
    model = loaded[name]
    text = "The proposal adds a keyword to the grammar."
    one = model.document(text)
    for i, ch in enumerate("new "):  # typed a key at a time
        one.edit(13 + i, 13 + i, ch)
    composed = model.document(text)
    composed.edit(13, 13, "new ")
    assert one.text == composed.text
    if model.spec.labelled:  # four insertions label their tokens unlike one: same text, other labels
        assert not np.array_equal(one.positions, composed.positions)
        composed = model.document(composed.text, positions=one.positions)
    assert (one.codes == composed.codes).all()
    np.testing.assert_allclose(one.logits, composed.logits, atol=1e-4)
    assert_same_as_full(model, one)


@pytest.mark.parametrize("name", MODES)
@given(data=st.data())
def test_token_edits_equal_fresh_from_ids(loaded, name, data):
    model = loaded[name]
    vocab = model.tokenizer.get_vocab_size()
    ids = data.draw(st.lists(st.integers(1, vocab - 1), max_size=30))
    doc = model.document_ids(ids)
    for _ in range(3):
        pos = data.draw(st.integers(0, len(ids)))
        nd = data.draw(st.integers(0, len(ids) - pos))
        new = data.draw(st.lists(st.integers(1, vocab - 1), max_size=4))
        doc.edit_tokens(pos, nd, new)
        ids = ids[:pos] + new + ids[pos + nd:]
        ref = model.document_ids(ids, positions=doc.positions if model.spec.labelled else None)
        assert doc.token_ids.tolist() == ids
        assert (doc.codes == ref.codes).all()
        np.testing.assert_allclose(doc.logits, ref.logits, atol=1e-4)
        assert_same_as_full(model, doc, ids)


def test_insertion_is_sparse_without_positions(loaded):
    """NoPE: a one-token insertion computes QKV for the new token only in layer 0; later layers add only
    rows whose attention code flipped."""
    model = loaded["llama-none"]
    doc = model.document(" ".join(["grammar keyword proposal"] * 10))
    s = doc.edit(40, 40, "x")
    assert s.n_insert == 1 and s.rows["embed_qkv"][0] == 1
    assert s.rows["embed_qkv"][1] <= s.rows["post"][0]  # layer 1's new rows: outputs that changed
    assert max(s.rows["post"]) < len(doc.token_ids) / 2  # out-projection + MLP only where codes changed
    assert s.macs < s.full_macs / 3


def test_learned_positions_fall_back_to_prefix_reuse(loaded):
    """OPT's absolute positions: an insertion changes every later input row; the prefix is reused."""
    model = loaded["opt-learned"]
    doc = model.document(" ".join(["grammar keyword proposal"] * 10))
    n = len(doc.token_ids)
    s = doc.edit(0, 0, "x")
    assert s.rows["embed_qkv"][0] >= n - 2
    s = doc.edit(len(doc.text), len(doc.text), " x")
    assert s.rows["embed_qkv"][0] <= 3


def test_the_full_onnx_oracle_sees_one_wrong_code_or_logit(loaded):
    """assert_same_as_full is a check: a document whose state is off by one code, or by 1e-3 in one logit,
    fails it (the state is tampered with directly; the engine never sees it)."""
    model = loaded["llama-rope"]
    doc = model.document("The proposal adds a keyword to the grammar.")
    assert_same_as_full(model, doc)
    layer = doc.state.layers[1]
    row = int(doc.state.order[3])
    saved = layer.codes[row, 0]
    layer.codes[row, 0] = (saved + 1) % model.spec.num_codes
    with pytest.raises(AssertionError, match="1 codes differ from full.onnx"):
        assert_same_as_full(model, doc)
    layer.codes[row, 0] = saved
    doc.state.logits[0] += 1e-3
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_same_as_full(model, doc)
