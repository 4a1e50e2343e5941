"""Helpers shared by test modules (pytest puts tests/ on sys.path: rootdir conftest)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest

from vqinc.runtime.engine.labels import fresh_labels

TEST_DATA = Path(__file__).resolve().parent / "data"
"""The suite's sample of the PEP data sets (tests/data/README.md): edit histories and labelled PEP bodies."""
PEP_REVISIONS = TEST_DATA / "pep-revisions.jsonl.gz"
PEP_TYPES = TEST_DATA / "pep-types.jsonl.gz"

# Pieces that exercise the tokenizer: words, spaces, punctuation, newlines, multi-byte characters.
WORDS = ["the", " proposal", " film", " ", "  ", ",", ".", "\n", "é", "日本", "🙂", "x", " grammar", "-", "'s"]


def assert_same_as_fresh(model, doc) -> None:
    """doc (after edits) == model.document(doc.text) with the same position labels (a RoPE model with
    labels; runtime/engine/labels.py): tokens, codes exactly; logits within 1e-4."""
    ref = model.document(doc.text, positions=doc.positions if model.spec.labelled else None)
    assert doc.token_ids.tolist() == ref.token_ids.tolist()
    flips = int((doc.codes != ref.codes).sum())
    assert flips == 0, f"{flips} codes differ from a fresh run"
    np.testing.assert_allclose(doc.logits, ref.logits, atol=1e-4, rtol=0)


_FULL_SESSIONS: dict[Path, object] = {}


def _full_session(model):
    """An ORT session of the model directory's full.onnx of its own (one per file): not the engine's executor."""
    import onnxruntime as ort

    spec = model.manifest.full_graph
    assert spec is not None, f"{model.root}: no full.onnx (exported with --no-full): nothing to compare with"
    path = (Path(model.root) / spec.file).resolve()
    if path not in _FULL_SESSIONS:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # tiny graphs: one thread, never spinning against the engine's sessions
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as exported
        _FULL_SESSIONS[path] = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return _FULL_SESSIONS[path]


def assert_same_as_full(model, doc, ids: list[int] | None = None) -> None:
    """doc (after edits) == the monolithic `full.onnx` on its tokens, an oracle outside the engine: no plan, no
    stage graphs, no kept state, no float64 settling; one graph from token ids to (logits, codes), exported
    beside the stage graphs and run here in a session of its own. Codes exactly; logits within 1e-4.

    Tokens: `ids` where the test edits token ids directly, else the tokenizer library on the whole text (the
    document's incremental tokenisation must equal it)."""
    if ids is None:
        ids = model.tokenizer.encode(doc.text, add_special_tokens=False).ids
    assert doc.token_ids.tolist() == list(ids), "tokens differ from tokenizing the whole text"
    logits, codes = _run_full(model, ids, doc.positions)
    assert codes.shape == doc.codes.shape, (codes.shape, doc.codes.shape)
    flips = int((doc.codes != codes).sum())
    assert flips == 0, f"{flips} codes differ from full.onnx"
    np.testing.assert_allclose(doc.logits, logits, atol=1e-4, rtol=0)


def full_onnx_logits(model, text: str) -> np.ndarray | None:
    """full.onnx's logits of `text` (the oracle outside the engine), or None where it exceeds the window."""
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    return _run_full(model, ids)[0] if len(ids) < model.max_positions else None


def _run_full(model, ids, positions=None) -> tuple[np.ndarray, np.ndarray]:
    """full.onnx on `ids` (BOS excluded) at `positions` (one label per token; default a fresh document's)."""
    session = _full_session(model)
    ids = np.asarray([model.bos_token_id, *ids], np.int64)
    labels = fresh_labels(len(ids), model.spec.position_scale) if positions is None else np.asarray([0, *positions])
    feeds = {"ids": ids, "positions": labels.astype(np.int64)}
    names = {i.name for i in session.get_inputs()}
    logits, codes = session.run(["logits", "codes"], {k: v for k, v in feeds.items() if k in names})
    return logits[0], codes


def assert_chunks_same_as_full(model, doc) -> None:
    """`assert_same_as_full` for a ChunkedDocument, chunk by chunk: each chunk's codes and logits against
    full.onnx on that chunk's text. (The document's own logits, the head of the token-weighted mean of the
    chunks' pooled vectors, have no full.onnx counterpart.)"""
    chunks = zip(doc.chunks, doc.chunk_codes(), doc.chunk_logits(), doc.chunk_positions(), strict=True)
    for k, (c, codes, logits, positions) in enumerate(chunks):
        ids = model.tokenizer.encode(doc.text[c.start:c.end], add_special_tokens=False).ids
        assert len(ids) == c.num_tokens, f"chunk {k}: {c.num_tokens} tokens, tokenizing its text gives {len(ids)}"
        f_logits, f_codes = _run_full(model, ids, positions)
        assert f_codes.shape == codes.shape, (k, f_codes.shape, codes.shape)
        flips = int((f_codes != codes).sum())
        assert flips == 0, f"chunk {k}: {flips} codes differ from full.onnx"
        np.testing.assert_allclose(logits, f_logits, atol=1e-4, rtol=0)


def edit_checking_every_step(model, text: str, edits) -> None:
    """Apply character edits (a, b, piece) one by one; after each, the text is the spliced string and the
    document equals a fresh one (`assert_same_as_fresh`) and full.onnx (`assert_same_as_full`)."""
    doc = model.document(text)
    for a, b, piece in edits:
        doc.edit(a, b, piece)
        text = text[:a] + piece + text[b:]
        assert doc.text == text
        assert_same_as_fresh(model, doc)
        assert_same_as_full(model, doc)


@contextlib.contextmanager
def kernel_path(path: str):
    """Run the engine's kernels (lazy update, margins) in C ("native") or numpy ("numpy") inside the block.
    "native" skips where the kernels were not built, unless VQINC_REQUIRE_KERNELS=1 (make test) says they must be."""
    from vqinc.runtime.engine import kernels

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
