"""The standard past-KV decoder (decoder.onnx) against the monolithic graph: every positional mode, every
attention kind (GroupQueryAttention, MultiHeadAttention, plain), several prefix/suffix splits and edits."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CONFIGS, make_tiny_model

from vqinc.export.decoder import Decoder, default_attention, export_decoder
from vqinc.export.from_dir import model_from_dir
from vqinc.export.verify import decoder_splits, verify_decoder
from vqinc.runtime.baseline.prefix_kv import KVDecoder
from vqinc.runtime.cli import main
from vqinc.runtime.format.manifest import graph_files, load_manifest
from vqinc.runtime.model_dir import Model
from vqinc.runtime.ort.sessions import session_options


@pytest.fixture(scope="module")
def decoder_dirs(exported, with_decoder) -> dict[str, tuple]:
    """The tiny model directories with their default decoder: name -> (model dir, torch model)."""
    return {name: (with_decoder(name), e.torch_model) for name, e in exported.items()
            if name != "llama-rope-plain"}  # the same decoder graph as llama-rope (it has no labels)


def test_default_attention_kind_follows_ort_kernels(exported):
    kinds = {name: default_attention(e.torch_model) for name, e in exported.items()}
    assert kinds == {"llama-none": "plain", "llama-rope": "plain", "llama-rope-plain": "plain",
                     "opt-learned": "mha"}  # head_dim 4
    with pytest.raises(ValueError, match="head_dim % 8"):
        Decoder(exported["llama-none"].torch_model, "gqa")
    with pytest.raises(ValueError, match="num_kv_heads == num_heads"):
        Decoder(exported["llama-none"].torch_model, "mha")  # 4 heads, 2 kv heads


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "llama-rope-plain"])
def test_decoder_equals_full_graph_on_splits_and_edits(decoder_dirs, name):
    d, _ = decoder_dirs[name]
    report = verify_decoder(d)
    assert report.ok, report.table()
    assert report.max_logit_diff <= 1e-4
    assert {r.case for r in report.rows} == {"split", "edit"}
    assert len({r.start for r in report.rows if r.num_tokens > 10}) >= 4  # several prefix/suffix cuts


def test_graph_uses_the_contrib_op_and_the_vq_ops(decoder_dirs, tokenizer, tmp_path):
    export_decoder(make_tiny_model("llama", "rope", 2, tokenizer.get_vocab_size(), d_model=32), tmp_path, "gqa")
    files = {"llama-none": decoder_dirs["llama-none"][0], "opt-learned": decoder_dirs["opt-learned"][0],
             "llama-rope-gqa": tmp_path}
    ops = {}
    for name, d in files.items():
        proto = onnx.load(str(d / "decoder.onnx"))
        onnx.checker.check_model(proto, full_check=True)
        ops[name] = collections.Counter(f"{n.domain}::{n.op_type}" for n in proto.graph.node)
    assert ops["llama-rope-gqa"]["com.microsoft::GroupQueryAttention"] == 2
    assert ops["opt-learned"]["com.microsoft::MultiHeadAttention"] == 2
    assert not any(k.startswith("com.microsoft") for k in ops["llama-none"])  # plain math
    for c in ops.values():
        assert c["vqinc::VQEncode"] == 2 and c["vqinc::VQDecode"] == 2


def test_manifest_lists_the_decoder_with_per_layer_names(decoder_dirs):
    d, _ = decoder_dirs["opt-learned"]
    m = load_manifest(d)
    assert "decoder.onnx" in graph_files(m) and m.files["decoder.onnx"].bytes == (d / "decoder.onnx").stat().st_size
    assert "past_key_values.%d.key" in m.decoder_graph.inputs and "present.%d.value" in m.decoder_graph.outputs
    assert m.info["decoder"]["attention"] == "mha"
    dec = KVDecoder(Model.load(d, threads=1))
    assert dec.inputs[:4] == ["input_ids", "past_hidden_sum", "past_key_values.0.key", "past_key_values.0.value"]
    assert dec.outputs[-2:] == ["present.1.key", "present.1.value"]


@pytest.mark.parametrize("kind, kv_heads", [("gqa", 2), ("plain", 2), ("mha", 4)])
def test_every_attention_kind_agrees_with_torch(tokenizer, tmp_path, kind, kv_heads):
    """head_dim 8, rope; GQA with 4 query heads over 2 kv heads (SmolLM2 has 9 over 3). The bare graph (no
    model directory): a prefix, then the rest against its present K/V, against the torch model."""
    model = make_tiny_model("llama", "rope", kv_heads, tokenizer.get_vocab_size(), d_model=32, seed=1)
    export_decoder(model, tmp_path, kind)
    sess = ort.InferenceSession(str(tmp_path / "decoder.onnx"), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()][2:]
    ids = np.asarray([0, *tokenizer.encode("The proposal adds a keyword to the grammar, and the film drags.").ids])
    with torch.no_grad():
        want = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    for cut in decoder_splits(len(ids)):
        past = {n: np.zeros((1, kv_heads, 0, 8), np.float32) for n in names}
        hs = np.zeros((1, 32), np.float32)
        if cut:
            _, sums, _, *present = sess.run(None, {"input_ids": ids[None, :cut], "past_hidden_sum": hs, **past})
            past, hs = dict(zip(names, present, strict=True)), sums[-1:]
        logits, *_ = sess.run(None, {"input_ids": ids[None, cut:], "past_hidden_sum": hs, **past})
        np.testing.assert_allclose(logits[0], want, atol=1e-4)


def test_model_rebuilt_from_directory_has_the_same_weights(exported):
    e = exported["opt-learned"]
    rebuilt, tok = model_from_dir(e.model_dir)
    want = e.torch_model.state_dict()
    for name, t in rebuilt.state_dict().items():
        if name.endswith(("ema_size", "ema_sum", "initialised")):
            continue  # training-only statistics, not in any graph
        assert torch.equal(t, want[name]), name
    assert tok.get_vocab_size() == e.tokenizer.get_vocab_size()


def test_cli_adds_a_decoder_in_place_and_info_shows_it(exported, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(exported["opt-learned"].model_dir, d)
    assert main(["export", str(d), str(d), "--decoder", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "VERIFY OK" in out and "VERIFY DECODER OK" in out
    assert json.loads((d / "manifest.json").read_text())["decoder_graph"]["file"] == "decoder.onnx"
    assert main(["info", str(d)]) == 0
    assert "past-KV decoder.onnx (mha attention)" in capsys.readouterr().out
    # a model directory cannot be re-exported elsewhere: one line, exit code 2
    assert main(["export", str(d), str(tmp_path / "other"), "--decoder"]) == 2
    assert "can only gain a decoder graph" in capsys.readouterr().err


def test_cli_export_from_a_checkpoint_with_decoder(exported, tmp_path, capsys):
    from vqinc.model.checkpoint import save_checkpoint

    e = exported["llama-rope"]
    ck = save_checkpoint(e.torch_model, e.tokenizer, tmp_path / "ck")
    assert main(["export", str(ck), str(tmp_path / "m"), "--decoder", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "VERIFY OK" in out and "decoder.onnx (plain attention)" in out and "VERIFY DECODER OK" in out
    assert load_manifest(tmp_path / "m").decoder_graph is not None
