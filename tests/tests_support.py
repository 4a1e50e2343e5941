"""Helpers shared by test modules (pytest puts tests/ on sys.path: rootdir conftest)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

TEST_DATA = Path(__file__).resolve().parent / "data"
"""The suite's sample of the PEP data sets (tests/data/README.md): edit histories and labelled PEP bodies."""
PEP_REVISIONS = TEST_DATA / "pep-revisions.jsonl.gz"
PEP_TYPES = TEST_DATA / "pep-types.jsonl.gz"

# Pieces that exercise the tokenizer: words, spaces, punctuation, newlines, multi-byte characters.
WORDS = ["the", " proposal", " film", " ", "  ", ",", ".", "\n", "é", "日本", "🙂", "x", " grammar", "-", "'s"]


def assert_same_as_fresh(model, doc) -> None:
    """doc (after edits) == model.document(doc.text): tokens, codes exactly; logits within 1e-4."""
    ref = model.document(doc.text)
    assert doc.token_ids.tolist() == ref.token_ids.tolist()
    flips = int((doc.codes != ref.codes).sum())
    assert flips == 0, f"{flips} codes differ from a fresh run"
    np.testing.assert_allclose(doc.logits, ref.logits, atol=1e-4, rtol=0)


def edit_checking_every_step(model, text: str, edits) -> None:
    """Apply character edits (a, b, piece) one by one; after each, the text is the spliced string and the
    document equals a fresh one (`assert_same_as_fresh`)."""
    doc = model.document(text)
    for a, b, piece in edits:
        doc.edit(a, b, piece)
        text = text[:a] + piece + text[b:]
        assert doc.text == text
        assert_same_as_fresh(model, doc)


@contextlib.contextmanager
def kernel_path(path: str):
    """Run the engine's kernels (lazy update, margins) in C ("native") or numpy ("numpy") inside the block.
    "native" skips where the kernels were not built, unless VQINC_REQUIRE_KERNELS=1 (make test) says they must be."""
    from vqinc.runtime import kernels

    if path == "native" and kernels.NATIVE is None:
        if os.environ.get("VQINC_REQUIRE_KERNELS") == "1":
            raise AssertionError("VQINC_REQUIRE_KERNELS=1 but the native kernels are not loaded")
        pytest.skip("native kernels not built")
    saved = kernels.NATIVE
    kernels.NATIVE = saved if path == "native" else None
    try:
        yield
    finally:
        kernels.NATIVE = saved
