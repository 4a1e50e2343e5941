"""Bad input gets a clear error and loses nothing; bad model directories name the file and the problem;
the runtime never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tests_support import assert_same_as_fresh, assert_same_as_full

from vqinc.runtime.format.manifest import ModelDirError, file_sha256
from vqinc.runtime.model_dir import Model


def _snapshot(doc):
    return doc.text, doc.token_ids.copy(), doc.codes.copy(), doc.logits.copy(), len(doc.history)


def _assert_unchanged(doc, snap):
    text, ids, codes, logits, n_hist = snap
    assert doc.text == text
    assert (doc.token_ids == ids).all()
    assert (doc.codes == codes).all()
    assert (doc.logits == logits).all()
    assert len(doc.history) == n_hist


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((5, 3, "x"), ValueError, "invalid"),  # reversed
        ((-1, 2, "x"), ValueError, "invalid"),
        ((0, 10_000, "x"), ValueError, "invalid"),  # past the end
        ((0, 1, 5), TypeError, "str"),
        ((0.5, 1, "x"), TypeError, "int"),
        ((0, "1", "x"), TypeError, "int"),
    ],
)
def test_invalid_edit_raises_and_leaves_document_unchanged(loaded, args, exc, match):
    doc = loaded["llama-none"].document("The proposal adds a keyword.")
    snap = _snapshot(doc)
    with pytest.raises(exc, match=match):
        doc.edit(*args)
    _assert_unchanged(doc, snap)


def test_too_long_text_is_refused_without_change(loaded):
    model = loaded["llama-none"]
    doc = model.document("short")
    snap = _snapshot(doc)
    with pytest.raises(ValueError, match="at most"):
        doc.edit(0, 0, "grammar keyword 日本 " * 200)
    _assert_unchanged(doc, snap)
    with pytest.raises(ValueError, match="at most"):
        model.document("grammar keyword 日本 " * 200, chunked=False)
    from vqinc.runtime.chunked import ChunkedDocument

    assert isinstance(model.document("grammar keyword 日本 " * 200), ChunkedDocument)  # by default: chunked


def test_bad_token_edits(loaded):
    doc = loaded["llama-none"].document("The proposal")
    snap = _snapshot(doc)
    with pytest.raises(ValueError, match="vocabulary"):
        doc.edit_tokens(0, 0, [10**6])
    with pytest.raises(ValueError, match="invalid"):
        doc.edit_tokens(0, 99, [1])
    with pytest.raises(TypeError):
        doc.edit_tokens("0", 0, [1])
    _assert_unchanged(doc, snap)


class _FailingKernels:
    """The C kernels, except that the lazy update and the float64 attention fail mid-edit."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name in ("lazy_update", "attend64"):
            def boom(*args):
                raise RuntimeError("simulated kernel failure")
            return boom
        return getattr(self.real, name)


@pytest.mark.parametrize("stage", ["attend", "post", "final", "head", "kernel"])
def test_engine_failure_mid_edit_restores_document(loaded, monkeypatch, stage):
    """A failure in any graph or in a C kernel, half-way through an edit, leaves the document as it was."""
    from vqinc.runtime.engine import kernels

    model = loaded["llama-none"]
    doc = model.document("The proposal adds a keyword.")
    snap = _snapshot(doc)
    real = model.executor.run

    def boom(name, layer=None, **feeds):
        if name == stage:
            raise RuntimeError("simulated device failure")
        return real(name, layer, **feeds)

    if stage == "kernel":
        if kernels.NATIVE is None:
            pytest.skip("native kernels not built")
        monkeypatch.setattr(kernels, "NATIVE", _FailingKernels(kernels.NATIVE))
    elif stage == "attend":  # small recomputes run in C: the numpy path sends every recompute to the graph
        monkeypatch.setattr(kernels, "NATIVE", None)
    monkeypatch.setattr(model.executor, "run", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        doc.edit(4, 12, "film")
    monkeypatch.undo()
    _assert_unchanged(doc, snap)
    doc.edit(4, 12, "film")  # and the document still edits correctly afterwards
    assert_same_as_fresh(model, doc)
    assert_same_as_full(model, doc)


def _copy(exported, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(exported["llama-none"].model_dir, d)
    return d


def _edit_manifest(d, fn):
    p = d / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        Model.load(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="manifest.json: missing"):
        Model.load(tmp_path)


def test_missing_graph_file_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    (d / "layers.1.attend.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"layers\.1\.attend\.onnx is missing"):
        Model.load(d)


def test_truncated_graph_file_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    p = d / "layers.0.post.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ModelDirError, match=r"layers\.0\.post\.onnx is 100 bytes"):
        Model.load(d)


def _record(d, rel):
    """Make the manifest's size and sha256 of `rel` match the file (a consistent but bad export)."""
    _edit_manifest(d, lambda m: m["files"].update({rel: {"bytes": (d / rel).stat().st_size,
                                                         "sha256": file_sha256(d / rel)}}))


def test_corrupt_graph_of_right_size_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    p = d / "head.onnx"
    p.write_bytes(b"\xff" * p.stat().st_size)
    with pytest.raises(ModelDirError, match=r"head\.onnx does not match its sha256"):
        Model.load(d)
    _record(d, "head.onnx")
    with pytest.raises(ModelDirError, match=r"head\.onnx cannot be loaded"):
        Model.load(d)


def test_wrong_format_version(exported, tmp_path):
    d = _copy(exported, tmp_path)
    _edit_manifest(d, lambda m: m.update(format_version=99))
    with pytest.raises(ModelDirError, match="format_version 99"):
        Model.load(d)


def test_not_json(exported, tmp_path):
    d = _copy(exported, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        Model.load(d)


def test_path_escaping_the_directory(exported, tmp_path):
    d = _copy(exported, tmp_path)
    _edit_manifest(d, lambda m: m["graphs"]["head"].update(file="../../etc/passwd"))
    with pytest.raises(ModelDirError, match="escapes the model directory"):
        Model.load(d)


def test_edited_config_breaks_fingerprint(exported, tmp_path):
    d = _copy(exported, tmp_path)
    _edit_manifest(d, lambda m: m["model"].update(positions="rope"))
    with pytest.raises(ModelDirError, match="fingerprint"):
        Model.load(d)


def test_graph_with_wrong_io_is_named(exported, tmp_path):
    d = _copy(exported, tmp_path)
    shutil.copy(d / "final.onnx", d / "head.onnx")  # right file, wrong graph
    _record(d, "head.onnx")
    with pytest.raises(ModelDirError, match=r"head\.onnx has inputs"):
        Model.load(d)


def test_runtime_never_imports_torch(exported):
    """With torch made unimportable, the runtime loads a model, edits a document and replays."""
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import vqinc.runtime, vqinc.runtime.model_dir, vqinc.runtime.document, vqinc.runtime.cli, vqinc.runtime.replay.run
from vqinc.runtime.model_dir import Model
m = Model.load({str(exported["llama-none"].model_dir)!r}, threads=1)
d = m.document("The proposal adds a keyword.")
d.edit(4, 12, "film")
assert d.text == "The film adds a keyword."
assert not any(k == "torch" or k.startswith("torch.") for k, v in sys.modules.items() if v is not None)
print("ok", d.label)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_probs_and_label(loaded):
    doc = loaded["llama-none"].document("An utterly charming film.")
    assert doc.probs.shape == (2,)
    assert abs(doc.probs.sum() - 1) < 1e-9
    assert doc.label == loaded["llama-none"].labels[int(np.argmax(doc.logits))]
