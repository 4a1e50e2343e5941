"""The PyTorch side: VQ layer invariants, HF adaptation, training, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from vqinc.model.adapt import arch_from_hf, vqify
from vqinc.model.checkpoint import load_checkpoint, save_checkpoint
from vqinc.model.config import ArchConfig, ModelConfig, VQConfig
from vqinc.model.vq import VectorQuantizer


def test_encode_is_brute_force_nearest_neighbour():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_heads=3, num_codes=7, head_dim=5)
    x = torch.randn(40, 3, 5)
    codes = vq.encode(x)
    dist = ((x[:, :, None, :] - vq.codebook[None]) ** 2).sum(-1)  # (n, h, K)
    assert (codes == dist.argmin(-1)).all()
    assert torch.equal(vq.decode(codes), vq.codebook[torch.arange(3)[None], codes])


def test_straight_through_gradient_flows():
    vq = VectorQuantizer(2, 4, 3, ema_decay=0)
    x = torch.randn(6, 2, 3, requires_grad=True)
    vq.train()
    out = vq(x)
    (out.quantized.sum() + out.loss).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_eval_quantized_equals_decode_of_codes():
    vq = VectorQuantizer(2, 4, 3).eval()
    x = torch.randn(6, 2, 3)
    out = vq(x)
    assert torch.equal(out.quantized, vq.decode(out.codes))


def test_ema_update_moves_codebook_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(1, 4, 2, ema_decay=0.5, dead_code_threshold=0.5).train()
    before = vq.codebook.clone()
    x = torch.randn(32, 1, 2) + 10.0  # far from every initial code: all but one code die
    for _ in range(5):
        vq(x)
    assert not torch.equal(before, vq.codebook)
    assert (vq.codebook - 10).abs().max() < 5  # restarted codes sit among the data


def test_kmeans_init_fits_clusters():
    vq = VectorQuantizer(1, 2, 2)
    pts = torch.cat([torch.randn(50, 1, 2) * 0.01 + 3, torch.randn(50, 1, 2) * 0.01 - 3])
    vq.kmeans_init(pts)
    centers = sorted(vq.codebook[0, :, 0].tolist())
    assert centers[0] == pytest.approx(-3, abs=0.05) and centers[1] == pytest.approx(3, abs=0.05)


def _tiny_hf(kind: str, tmp_path):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        m = LlamaForCausalLM(cfg)
    else:
        cfg = OPTConfig(vocab_size=100, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=4,
                        word_embed_proj_dim=16, max_position_embeddings=64)
        m = OPTForCausalLM(cfg)
    m.save_pretrained(tmp_path / kind)
    from vqinc.model.pretrained import load_hf_causal_lm

    return load_hf_causal_lm(tmp_path / kind)[0].eval()


@pytest.mark.parametrize("kind, positions", [("llama", "rope"), ("opt", "learned"), ("llama", "none")])
def test_adapted_model_without_vq_equals_base(kind, positions, tmp_path):
    hf = _tiny_hf(kind, tmp_path)
    model = vqify(hf, ("a", "b"), positions=positions, vq=VQConfig(enabled=False)).eval()
    ids = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        ours = model(ids).hidden
        if positions == "none":  # NoPE is a different function: check it differs from the base
            theirs = hf.model(ids).last_hidden_state
            assert not torch.allclose(ours, theirs, atol=1e-3)
            return
        theirs = hf.model(ids).last_hidden_state if kind == "llama" else hf.model.decoder(ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_unknown_architecture_is_refused():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="not supported"):
        arch_from_hf(GPT2Config())
    with pytest.raises(ValueError, match="learned"):
        ModelConfig(arch=ArchConfig("llama", 10, 8, 1, 2, 2, 16), positions="learned")
    with pytest.raises(ValueError, match="family"):
        ArchConfig("gpt2", 10, 8, 1, 2, 2, 16)


def test_checkpoint_round_trip_is_exact(tmp_path, tokenizer):
    model = make_tiny_model("llama", "rope", 2, tokenizer.get_vocab_size())
    save_checkpoint(model, tokenizer, tmp_path / "ck", {"note": "x"})
    back, tok, info = load_checkpoint(tmp_path / "ck")
    assert info == {"note": "x"}
    assert back.cfg == model.cfg
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(back.state_dict().items()), strict=True):
        assert torch.equal(a, b), k
    ids = torch.randint(1, 100, (1, 9))
    assert torch.equal(model(ids).logits, back(ids).logits)


def test_checkpoint_errors_name_the_file(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none")
    model = make_tiny_model("llama", "none", 2, tokenizer.get_vocab_size())
    d = save_checkpoint(model, tokenizer, tmp_path / "ck")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(d)
    d = save_checkpoint(model, tokenizer, tmp_path / "ck2")
    blob = json.loads((d / "config.json").read_text())
    blob["model"]["labels"] = ["only-one"]
    (d / "config.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="labels"):
        load_checkpoint(d)


def test_short_training_run_lowers_the_loss(tmp_path):
    """The real recipe on a small labelled CSV: teacher and student losses fall; a checkpoint appears."""
    from vqinc.model.train import TrainConfig, train

    rng = np.random.default_rng(0)
    good = ["great", "wonderful", "charming", "superb", "moving"]
    bad = ["awful", "boring", "dull", "tedious", "clumsy"]
    rows = []
    for i in range(240):
        lab = i % 2
        words = rng.choice(good if lab else bad, 3).tolist() + rng.choice(["film", "plot", "cast"], 2).tolist()
        rows.append({"text": " ".join(rng.permutation(words)), "label": "pos" if lab else "neg"})
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = TrainConfig(dataset=str(path), out=str(tmp_path / "run"), d_model=16, num_heads=2, num_layers=1,
                      vocab_size=300, num_codes=8, max_len=16, batch_size=16, teacher_epochs=4,
                      student_epochs=2, lr=3e-3, kmeans_batches=2, save_every=1000, threads=1)
    info = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    t = metrics["teacher_losses"]["loss"]
    assert np.mean(t[-5:]) < np.mean(t[:5])
    assert info["teacher"]["accuracy"] >= 0.8
    assert info["student"]["accuracy"] >= 0.7
    model, _, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert model.cfg.vq.enabled
