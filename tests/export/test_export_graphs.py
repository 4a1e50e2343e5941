"""Exported graphs vs PyTorch: stage chain and monolithic graph, onnx.checker, manifest contents."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import CONFIGS, make_tiny_model

from vqinc.export.exporter import export_model
from vqinc.export.verify import verify
from vqinc.runtime.format.manifest import graph_files, load_manifest


@pytest.mark.parametrize("name", list(CONFIGS))
def test_verify_stage_chain_and_monolithic_against_pytorch(exported, name):
    e = exported[name]
    report = verify((e.torch_model, e.tokenizer), e.model_dir)
    assert report.ok, report.table()
    assert len(report.rows) == 3
    assert all(r.full_code_mismatches == 0 and r.stage_code_mismatches == 0 for r in report.rows)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_monolithic_equals_stage_chain(loaded, name):
    model = loaded[name]
    for text in ("x", "The proposal adds a keyword to the grammar, and 日本 🙂 too."):
        doc = model.document(text)
        logits, codes = model.full_logits(text)
        assert (codes == doc.codes).all()
        np.testing.assert_allclose(logits, doc.logits, atol=1e-4)


def test_one_custom_node_per_vq_op(exported):
    d = exported["llama-none"].model_dir
    attend = onnx.load(str(d / "layers.0.attend.onnx"))
    post = onnx.load(str(d / "layers.0.post.onnx"))
    final = onnx.load(str(d / "final.onnx"))
    assert [n.op_type for n in attend.graph.node if n.domain == "vqinc"] == ["VQEncode"]
    assert [n.op_type for n in post.graph.node if n.domain == "vqinc"] == ["VQDecode"]
    assert [n.op_type for n in final.graph.node if n.domain == "vqinc"] == ["VQDecode"]
    assert {f.name for f in attend.functions} >= {"VQEncode"}
    refine = onnx.load(str(d / "refine.onnx"))  # float64 attention in plain ops, no weights
    assert not [n for n in refine.graph.node if n.domain == "vqinc"] and not refine.graph.initializer


def test_manifest_records_files_macs_and_dynamic_rows(exported):
    d = exported["llama-rope"].model_dir
    m = load_manifest(d)
    raw = json.loads((d / "manifest.json").read_text())
    assert raw["format_version"] == 2
    s = m.spec
    assert s.positions == "rope" and s.num_layers == 2
    assert set(m.files) == {*graph_files(m), "tokenizer.json", "codebooks.npy"}
    assert all(len(f.sha256) == 64 and f.bytes == (d / rel).stat().st_size for rel, f in m.files.items())
    qkv = s.d_model * (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    assert m.graphs["embed_qkv"].macs_per_row == qkv
    assert m.graphs["attend"].macs_per_row == 8 * s.d_model and m.graphs["attend"].macs_per_pair == 2 * s.d_model
    assert "qkv" in m.graphs and "qkv" not in load_manifest(exported["llama-none"].model_dir).graphs
    for rel in graph_files(m):
        g = onnx.load(str(d / rel)).graph
        if rel != "refine.onnx":
            dims = g.input[0].type.tensor_type.shape.dim
            assert any(x.dim_param for x in dims), f"{rel}: row axis is not dynamic"


def test_residual_vq_exports_and_matches(tmp_path, tokenizer):
    model = make_tiny_model("llama", "none", 2, tokenizer.get_vocab_size(), residual=True)
    export_model((model, tokenizer), tmp_path / "m", show_progress=False, full_graph=True)
    report = verify((model, tokenizer), tmp_path / "m", check_graphs=False)
    assert report.ok, report.table()


def test_external_data_export_loads_and_matches(tmp_path, tokenizer):
    """Graphs over the size limit keep their weights in `<graph>.data` (threshold forced to 0 here)."""
    model = make_tiny_model("llama", "rope", 2, tokenizer.get_vocab_size())
    m = export_model((model, tokenizer), tmp_path / "m", show_progress=False, external_data_bytes=0)
    assert "layers.0.post.onnx.data" in m.files
    report = verify((model, tokenizer), tmp_path / "m")
    assert report.ok, report.table()
    (tmp_path / "m" / "layers.0.post.onnx.data").write_bytes(b"")
    from vqinc.runtime.format.manifest import ModelDirError

    with pytest.raises(ModelDirError, match=r"layers\.0\.post\.onnx\.data is 0 bytes"):
        load_manifest(tmp_path / "m")


def test_export_refuses_foreign_directory(tmp_path, exported):
    (tmp_path / "other.txt").write_text("x")
    e = exported["llama-none"]
    with pytest.raises(FileExistsError):
        export_model((e.torch_model, e.tokenizer), tmp_path, show_progress=False)
