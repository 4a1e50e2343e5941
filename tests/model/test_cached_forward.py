"""The torch model's KV-cached forward equals its full forward (the key test of any cached decoder)."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, make_tiny_model

from vqinc.model.transformer import attention_with_past, causal_attention


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_cached_forward_equals_full_forward(tokenizer, name, pooling):
    family, positions, kv = CONFIGS[name]
    model = make_tiny_model(family, positions, kv, tokenizer.get_vocab_size())
    if pooling == "last":
        from dataclasses import replace
        model.cfg = replace(model.cfg, pooling="last")
    ids = torch.tensor([0, *tokenizer.encode("The proposal adds a keyword to the grammar, and 日本 too.").ids])
    with torch.no_grad():
        want = model(ids[None]).logits
        for cuts in ([len(ids)], [1, len(ids)], [5, 9, len(ids)], [len(ids) - 1, len(ids)]):
            cache, start = None, 0
            for cut in cuts:
                logits, cache = model.forward_cached(ids[start:cut], cache)
                start = cut
            torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
            assert cache.length == len(ids) and cache.keys[0].shape[0] == len(ids)


def test_truncated_cache_resumes_an_edited_document(tokenizer):
    model = make_tiny_model("llama", "rope", 2, tokenizer.get_vocab_size())
    ids = torch.tensor([0, *tokenizer.encode("An utterly charming film, though its second half drags.").ids])
    edited = ids.clone()
    edited[7] = (edited[7] + 3) % tokenizer.get_vocab_size()
    with torch.no_grad():
        _, cache = model.forward_cached(ids)
        logits, cache = model.forward_cached(edited[7:], cache.truncate(7))
        torch.testing.assert_close(logits, model(edited[None]).logits, atol=1e-5, rtol=0)


def test_attention_with_past_is_causal_attention_cut_to_the_last_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(9, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    full = causal_attention(q, k, v)
    torch.testing.assert_close(attention_with_past(q, k, v), full)
    torch.testing.assert_close(attention_with_past(q[6:], k, v), full[6:])
