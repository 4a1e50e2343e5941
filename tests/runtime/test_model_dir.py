"""Model directories that are corrupt, tampered with or inconsistent are refused at load with a
`ModelDirError` naming the file and the problem (issue 10, items 6 and 7): never a raw TypeError,
RecursionError, OverflowError, ZeroDivisionError or MemoryError, and never a shape error at the
first document.

Config edits recompute the manifest's fingerprint, so that the value itself, not the fingerprint,
is what gets refused.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vqinc.runtime.format.manifest import ModelDirError, file_sha256, fingerprint, load_manifest
from vqinc.runtime.model_dir import Model, default_model_dir


def _copy(exported, tmp_path: Path, name: str = "llama-none") -> Path:
    d = tmp_path / "m"
    shutil.copytree(exported[name].model_dir, d)
    return d


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _write(d: Path, m: dict | str, refingerprint: bool = False) -> None:
    if refingerprint:
        m["fingerprint"] = fingerprint(m["model"], m["weights_sha256"])
    (d / "manifest.json").write_text(m if isinstance(m, str) else json.dumps(m))


def _record(d: Path, rel: str) -> None:
    """Make the manifest's size and sha256 of `rel` match the file (a consistent but bad export)."""
    m = _manifest(d)
    m["files"][rel] = {"bytes": (d / rel).stat().st_size, "sha256": file_sha256(d / rel)}
    _write(d, m)


def _refused(d: Path, match: str) -> ModelDirError:
    with pytest.raises(ModelDirError, match=match) as info:
        Model.load(d, threads=1)
    return info.value


# -- item 6: content hashes ----------------------------------------------------------------------
def test_random_byte_flips_in_graphs_are_refused_naming_the_file(exported, tmp_path):
    """Before sha256 digests, 20 of 168 random flips loaded silently and changed the logits."""
    d = _copy(exported, tmp_path)
    graphs = sorted(p.name for p in d.glob("*.onnx"))
    rng = random.Random(10)
    for _ in range(200):
        name = rng.choice(graphs)
        p = d / name
        data = bytearray(p.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        p.write_bytes(bytes(data))
        err = _refused(d, re.escape(name))
        assert f"{name} does not match its sha256" in str(err)
        shutil.copy(exported["llama-none"].model_dir / name, p)  # undo the flip
    Model.load(d, threads=1)  # every flip undone: the directory loads again


@pytest.mark.parametrize("name", ["tokenizer.json", "codebooks.npy"])
def test_byte_flip_in_tokenizer_or_codebooks_is_refused(exported, tmp_path, name):
    d = _copy(exported, tmp_path)
    data = bytearray((d / name).read_bytes())
    data[len(data) // 2] ^= 0x20
    (d / name).write_bytes(bytes(data))
    _refused(d, rf"{re.escape(name)} does not match its sha256")


def test_symlinked_layer_graph_is_refused(tmp_path):
    """The bundled model with layers.1.post.onnx a symbolic link to layers.0.post.onnx (it loaded silently)."""
    src = default_model_dir()
    if not (src / "layers.1.post.onnx").exists():
        pytest.skip("no bundled model")
    d = tmp_path / "bundled"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("__init__.py", "__pycache__", "full.onnx"))
    m = _manifest(d)
    del m["graphs"]["full"], m["files"]["full.onnx"]  # not needed here; saves copying 6 MB
    _write(d, m)
    (d / "layers.1.post.onnx").unlink()
    os.symlink("layers.0.post.onnx", d / "layers.1.post.onnx")
    _refused(d, r"layers\.1\.post\.onnx is a symbolic link; model files must be regular files")


def test_symlinked_layer_graph_of_same_size_is_refused(exported, tmp_path):
    d = _copy(exported, tmp_path)
    assert (d / "layers.0.attend.onnx").stat().st_size == (d / "layers.1.attend.onnx").stat().st_size
    (d / "layers.1.attend.onnx").unlink()
    os.symlink(d / "layers.0.attend.onnx", d / "layers.1.attend.onnx")
    _refused(d, r"layers\.1\.attend\.onnx is a symbolic link")


def test_manifest_linked_from_outside_is_refused(exported, tmp_path):
    """manifest.json a symbolic link to a valid manifest elsewhere (it loaded, while graphs may not link)."""
    d = _copy(exported, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(d / "manifest.json", outside)
    os.symlink(outside, d / "manifest.json")
    _refused(d, r"manifest\.json: a symbolic link; the manifest must be a regular file")
    with pytest.raises(ModelDirError, match="symbolic link"):
        load_manifest(d)


def test_two_models_keep_their_own_thread_counts(exported):
    """No process-wide session pool: a second Model.load(threads=...) is not ignored."""
    one = Model.load(exported["llama-none"].model_dir, threads=1)
    two = Model.load(exported["llama-none"].model_dir, threads=2)
    threads = lambda m: {g.threads for g in m.executor._graphs.values()}  # noqa: E731
    assert threads(one) == {1} and threads(two) == {2}


def test_graph_behind_a_linked_folder_is_refused(exported, tmp_path):
    d = _copy(exported, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(d / "head.onnx", outside / "head.onnx")
    os.symlink(outside, d / "sub")
    m = _manifest(d)
    m["graphs"]["head"]["file"] = "sub/head.onnx"
    m["files"]["sub/head.onnx"] = m["files"].pop("head.onnx")
    _write(d, m)
    _refused(d, r"sub/head\.onnx leads outside the model directory")


def test_hash_check_can_be_skipped_but_sizes_are_still_checked(exported, tmp_path):
    d = _copy(exported, tmp_path)
    p = d / "head.onnx"
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    assert load_manifest(d, check_hashes=False).graphs["head"].file == "head.onnx"
    with pytest.raises(ModelDirError, match=r"head\.onnx does not match its sha256"):
        load_manifest(d)
    p.write_bytes(bytes(data[:-1]))
    with pytest.raises(ModelDirError, match=r"head\.onnx is \d+ bytes but the manifest records"):
        load_manifest(d, check_hashes=False)


# -- item 7: every manifest field is validated ---------------------------------------------------
def _arch(key, value):
    return lambda m, d: m["model"]["arch"].__setitem__(key, value)


def _template_without_layer(m, d):
    m["graphs"]["post"]["file"] = "layers.post.onnx"


def _old_file_sizes(m, d):
    m["file_sizes"] = [[rel, e["bytes"]] for rel, e in m.pop("files").items()]


def _self_loop(m, d):
    (d / "head.onnx").unlink()
    os.symlink("head.onnx", d / "head.onnx")


def _two_link_loop(m, d):
    os.symlink("b.onnx", d / "a.onnx")
    os.symlink("a.onnx", d / "b.onnx")
    m["graphs"]["head"]["file"] = "a.onnx"
    m["files"]["a.onnx"] = m["files"].pop("head.onnx")


def _manifest_loop(m, d):
    (d / "manifest.json").unlink()
    os.symlink("manifest.json", d / "manifest.json")
    return "keep"


# (id, change to the manifest dict (and directory), recompute the fingerprint, error pattern)
CASES = [
    ("tokenizer-null", lambda m, d: m.__setitem__("tokenizer", None), False, r"'tokenizer' must be a file name"),
    ("graphs-list", lambda m, d: m.__setitem__("graphs", list(m["graphs"].values())), False,
     r"'graphs' must be a JSON object, got list"),
    ("template-without-%d", _template_without_layer, False,
     r"graph 'post' file 'layers\.post\.onnx' must have one '%d' for the layer index"),
    ("files-list", lambda m, d: m.__setitem__("files", list(m["files"].items())), False,
     r"'files' must be a JSON object, got list"),
    ("old-file_sizes-list", _old_file_sizes, False, r"'files' must be a JSON object, got nothing"),
    ("symlink-self-loop", _self_loop, False, r"head\.onnx is a symbolic link"),
    ("symlink-two-link-loop", _two_link_loop, False, r"a\.onnx is a symbolic link"),
    ("manifest-symlink-loop", _manifest_loop, False, r"manifest\.json: a symbolic link; the manifest"),
    ("nested-json-100000", lambda m, d: "[" * 100_000 + "]" * 100_000, False,
     r"manifest\.json: not a valid manifest \(RecursionError"),
    ("nested-json-in-info", lambda m, d: m.__setitem__("info", json.loads("[" * 40 + "]" * 40)), False,
     r"manifest\.json: nested deeper than 32 levels"),
    ("max_positions-1e400", lambda m, d: json.dumps(m).replace('"max_positions": 256', '"max_positions": 1e400'),
     False, r"arch\.max_positions must be an integer, got inf"),
    ("num_heads-0", _arch("num_heads", 0), True, r"arch\.num_heads = 0 is out of range \[1, "),
    ("d_model-32", _arch("d_model", 32), True,
     r"embed_qkv\.onnx: x has shape \['n', 16\] .*d = arch\.d_model = 32"),
    ("num_layers-1e9", _arch("num_layers", 1e9), True, r"arch\.num_layers = 1000000000 is out of range \[1, 1024\]"),
    ("num_layers-3", _arch("num_layers", 3), True, r"'files' has no entry for layers\.2\.attend\.onnx"),
    ("pooling-bogus", lambda m, d: m["model"].__setitem__("pooling", "bogus"), True,
     r"pooling must be one of \['mean', 'last'\], got 'bogus'"),
    ("bos_token_id--1", _arch("bos_token_id", -1), True, r"arch\.bos_token_id = -1 is out of range \[0, "),
    ("num_kv_heads-4", _arch("num_kv_heads", 4), True,
     r"embed_qkv\.onnx: k has shape .*Hkv = arch\.num_kv_heads = 4"),
    ("labels-3", lambda m, d: m["model"].__setitem__("labels", ["a", "b", "c"]), True,
     r"head\.onnx: logits has shape .*labels = the number of labels = 3"),
    ("vocab_size-past-the-embedding", _arch("vocab_size", 100_000), True,
     r"embed_qkv\.onnx refuses ids = 99999, but the manifest's model has arch\.vocab_size = 100000"),
    ("num_codes-4", lambda m, d: m["model"]["vq"].__setitem__("num_codes", 4), True,
     r"codebooks\.npy holds float32 \(2, 4, 8, 4\); the model needs finite float32 \(2, 4, 4, 4\)"),
    ("vocab_size-string", _arch("vocab_size", "400"), True, r"arch\.vocab_size must be an integer, got '400'"),
    ("arch-null", lambda m, d: m["model"].__setitem__("arch", None), True, r"arch must be an object, got NoneType"),
    ("residual-yes", lambda m, d: m["model"]["vq"].__setitem__("residual", "yes"), True,
     r"vq\.residual must be true or false"),
    ("labels-object", lambda m, d: m["model"].__setitem__("labels", {"neg": 0}), True,
     r"labels must be a list of strings"),
    ("macs-float", lambda m, d: m["graphs"]["head"].__setitem__("macs_per_row", 1.5), False,
     r"graph 'head' multiply-accumulate counts \(1\.5, 0\) must be integers >= 0"),
    ("graph-inputs-object", lambda m, d: m["graphs"]["head"].__setitem__("inputs", {"pooled": 1}), False,
     r"graph 'head' inputs must be a list of names"),
    ("decoder_graph-list", lambda m, d: m.__setitem__("decoder_graph", []), False,
     r"decoder_graph must be an object with a plain file name"),
    ("files-entry-a-directory", lambda m, d: m["files"].__setitem__(".", m["files"]["head.onnx"]), False,
     r": \. is not a regular file"),
    ("files-entry-empty-name", lambda m, d: m["files"].__setitem__("", m["files"]["head.onnx"]), False,
     r"file path '' escapes the model directory"),
    ("tokenizer-outside", lambda m, d: m.__setitem__("tokenizer", "../tokenizer.json"), False,
     r"'files' has no entry for \.\./tokenizer\.json"),
    ("manifest-a-list", lambda m, d: "[]", False, r"expected a JSON object, got list"),
    ("manifest-NaN", lambda m, d: json.dumps(m).replace('"d_model": 16', '"d_model": NaN'), False,
     r"NaN is not allowed in a manifest"),
    ("huge-integer", lambda m, d: json.dumps(m).replace('"d_model": 16', '"d_model": ' + "9" * 5000), False,
     r"not a valid manifest \(ValueError"),
]


@pytest.mark.parametrize("change, refingerprint, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_is_a_model_dir_error(exported, tmp_path, change, refingerprint, match):
    d = _copy(exported, tmp_path)
    m = _manifest(d)
    out = change(m, d)
    if out != "keep":
        _write(d, out if isinstance(out, str) else m, refingerprint)
    _refused(d, match)


def test_wrong_d_model_is_refused_at_load_not_at_the_first_document(exported, tmp_path):
    """It used to load and fail with a numpy shape error inside the first document."""
    d = _copy(exported, tmp_path)
    for d_model, heads in ((32, 4), (8, 4), (16, 2)):  # head width changes or the head count does
        m = _manifest(d)
        m["model"]["arch"].update(d_model=d_model, num_heads=heads, num_kv_heads=min(2, heads))
        _write(d, m, refingerprint=True)
        err = _refused(d, r"embed_qkv\.onnx: [xq] has shape")
        assert "arch.d_model" in str(err) or "arch.num_heads" in str(err)


def test_learned_positions_past_the_table_are_refused(exported, tmp_path):
    d = _copy(exported, tmp_path, "opt-learned")
    m = _manifest(d)
    m["model"]["arch"]["max_positions"] = 1000  # the position table has 256 (+ OPT's offset) rows
    _write(d, m, refingerprint=True)
    _refused(d, r"embed_qkv\.onnx refuses positions = 999, but the manifest's model has arch\.max_positions = 1000")


def test_codebooks_with_a_huge_shape_are_refused_before_allocating(exported, tmp_path):
    """A .npy header may claim any shape: it is checked before the array is read (np.load would try 3.6 TiB)."""
    d = _copy(exported, tmp_path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    (d / "codebooks.npy").write_bytes(buf.getvalue() + bytes(64))
    _record(d, "codebooks.npy")
    _refused(d, r"codebooks\.npy holds float32 \(1000000, 1000000\); the model needs finite float32 \(2, 4, 8, 4\)")
    (d / "codebooks.npy").write_bytes(b"\x93NUMPY garbage")
    _record(d, "codebooks.npy")
    _refused(d, r"codebooks\.npy is not a readable \.npy array")
