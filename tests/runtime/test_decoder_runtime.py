"""runtime/baseline/prefix_kv.py: the past-KV decoder driven as serving stacks drive it, without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vqinc.runtime.baseline.prefix_kv import KVDecoder
from vqinc.runtime.format.manifest import ModelDirError
from vqinc.runtime.model_dir import Model


@pytest.fixture(scope="module")
def rope_decoder(with_decoder, test_providers):
    return KVDecoder(Model.load(with_decoder("llama-rope"), threads=1, providers=test_providers))


def _full(model: Model, ids: np.ndarray) -> np.ndarray:
    return model.run_full(np.concatenate([[model.bos_token_id], ids]).astype(np.int64))[0][0]


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3), st.lists(st.integers(1, 300), max_size=4)),
                min_size=1, max_size=6))
def test_edit_sequences_equal_the_full_graph(rope_decoder, edits):
    m = rope_decoder.model
    ids = np.asarray(m.tokenizer.encode("The proposal adds a keyword to the grammar; it is opt-in.").ids, np.int64)
    doc = rope_decoder.document(ids)
    for at, n_del, new in edits:
        at = min(at, len(ids))
        cand = np.concatenate([ids[:at], np.asarray(new, np.int64), ids[at + n_del:]])
        if len(cand) == 0:
            continue
        old = doc.ids.copy()
        stats = doc.set_ids(cand)
        ids = cand
        np.testing.assert_allclose(doc.logits, _full(m, ids), atol=1e-4)
        # the cache was cut at the first changed position (or re-ran only the last token)
        full = np.concatenate([[m.bos_token_id], ids])
        lim = min(len(old), len(full))
        first = next((i for i in range(lim) if old[i] != full[i]), lim)
        if first == len(full) == len(old):
            assert stats.num_run == 0
        else:
            assert stats.start == min(first, len(full) - 1) and stats.num_run == len(full) - stats.start
        assert doc.length == len(full) and doc.past[0].shape[2] == len(full)


def test_rewind_then_append_is_genai_style(rope_decoder):
    m = rope_decoder.model
    ids = np.asarray(m.tokenizer.encode("An utterly charming film.").ids, np.int64)
    doc = rope_decoder.document(ids)
    doc.rewind_to(3)
    assert doc.length == 3 and doc.sums.shape[0] == 3
    doc.append_tokens(ids[2:])
    np.testing.assert_allclose(doc.logits, _full(m, ids), atol=1e-4)
    with pytest.raises(ValueError, match="outside"):
        doc.rewind_to(99)
    with pytest.raises(ValueError, match="at least one token"):  # a ValueError, also under python -O
        doc.append_tokens(np.zeros(0, np.int64))


def test_model_without_decoder_names_the_command(loaded):
    with pytest.raises(ModelDirError, match="--decoder"):
        KVDecoder(loaded["llama-none"])


def test_decoder_runs_without_torch(rope_decoder):
    root = rope_decoder.model.root
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from vqinc.runtime.model_dir import Model
from vqinc.runtime.baseline.prefix_kv import KVDecoder
m = Model.load({str(root)!r}, threads=1)
doc = KVDecoder(m).document(m.encode_ids("The proposal adds a keyword.")[1:])
st = doc.set_ids(m.encode_ids("The proposal adds a new keyword.")[1:])
assert st.start > 1 and doc.logits.shape == (2,)
assert not any(k == "torch" or k.startswith("torch.") for k, v in sys.modules.items() if v is not None)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")
