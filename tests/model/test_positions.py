"""Label-invariant training (model/positions.py): the positions it trains on are the ones the runtime's
position labels produce, and the torch model at those positions equals the runtime's labelled document."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vqinc.model.positions import jittered_positions, pad_positions, positions_after_edit


@given(n=st.integers(1, 200), rate=st.floats(0, 0.3), seed=st.integers(0, 10**6))
def test_jittered_positions_are_increasing_from_zero(n, rate, seed):
    p = jittered_positions(n, random.Random(seed), rate)
    assert len(p) == n and p[0] == 0.0
    assert all(b > a for a, b in zip(p, p[1:], strict=False))
    if rate == 0:
        assert p == [float(i) for i in range(n)]


def test_positions_after_edit_keep_every_other_row():
    p = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert positions_after_edit(p, 1, 0, 3) == [0.0, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 4.0]
    assert positions_after_edit(p, 1, 2, 1) == [0.0, 1.0, 2.5, 4.0]  # a replacement: inside the wider gap
    assert positions_after_edit(p, 4, 0, 2) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # at the end: +1 each
    assert positions_after_edit(p, 0, 2, 0) == [0.0, 3.0, 4.0]  # a deletion leaves a gap


def test_pad_positions_continues_each_row():
    t = pad_positions([[0.0, 0.5], [0.0, 1.0, 2.0]], 3)
    assert t.tolist() == [[0.0, 0.5, 1.5], [0.0, 1.0, 2.0]]


def test_positions_are_for_rope_models_only(exported):
    m = exported["llama-none"].torch_model
    with pytest.raises(ValueError, match="RoPE models"):
        m(torch.tensor([[1, 2, 3]]), positions=torch.tensor([[0.0, 1.0, 2.0]]))


def test_training_positions_are_the_runtime_labels_and_torch_agrees(loaded, exported):
    """One insertion in a labelled runtime document: its labels / scale are `positions_after_edit` of a
    fresh document's, and the torch model at those positions gives the runtime's logits and codes."""
    model, torch_model = loaded["llama-rope"], exported["llama-rope"].torch_model
    text = "The proposal adds a keyword to the grammar. Existing code keeps working."
    doc = model.document(text)
    n_before = len(doc.token_ids)
    s = doc.edit(13, 13, "new ")
    assert s.relabelled == 0
    got = np.concatenate([[0], doc.positions]) / model.spec.position_scale
    ids = doc.token_ids.tolist()
    old = model.document(text).token_ids.tolist()
    start = next(i for i, (a, b) in enumerate(zip(old, ids, strict=False)) if a != b)
    want = positions_after_edit([float(i) for i in range(n_before + 1)], start, s.n_delete, s.n_insert)
    np.testing.assert_allclose(got, want, rtol=0, atol=2.0 ** -14)
    with torch.no_grad():
        out = torch_model(torch.tensor([[model.bos_token_id, *ids]]),
                          positions=torch.tensor(got[None], dtype=torch.float32))
    np.testing.assert_allclose(out.logits[0].numpy(), doc.logits, atol=1e-4, rtol=0)
    assert (torch.stack(out.codes)[:, 0].numpy() == doc.codes).all()
