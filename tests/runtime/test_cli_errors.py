"""One-line errors (exit code 2, no traceback) naming the file, field or argument, for inputs that used
to raise a raw traceback or name the wrong cause: `vqinc info` on a hand-edited directory (a corrupt
graph whose manifest entry was updated; `info` fields of the wrong type), `vqinc demo --limit` on a
trace whose later records are bad or whose .gz is truncated (the rest is never read), `vqinc export` on
a truncated .safetensors, a file where a directory belongs, and output paths checked before any work."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil

import pytest

from vqinc.runtime.cli import main

RECORD = {"doc_id": "pep-1", "label": "Process", "base": "An utterly charming film.",
          "revisions": [{"id": "r1", "date": "2020", "edits": [{"at": 0, "delete": 2, "insert": "A"}]}]}


def one_line_error(capsys, cmd: str, match: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"vqinc {cmd}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


def _hand_edit(d, rel: str, data: bytes) -> None:
    """Replace a file of a model directory and update its manifest entry (size, sha256) to match."""
    (d / rel).write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (d / "manifest.json").write_text(json.dumps(m))


def test_info_on_a_corrupt_graph_is_one_line(exported, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(exported["llama-none"].model_dir, d)
    _hand_edit(d, "layers.0.attend.onnx", b"\x0a\xff\xff\xff\xff\x0f not protobuf")
    assert main(["info", str(d)]) == 2
    one_line_error(capsys, "info", r"layers\.0\.attend\.onnx: not a readable ONNX model")


def test_info_and_demo_with_info_fields_of_the_wrong_type(exported, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(exported["llama-none"].model_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    m["info"] = {"student": {"accuracy": "high", "macro_f1": [1]}, "teacher": {"accuracy": True},
                 "dataset": {"x": 1}, "decoder": "gqa"}
    (d / "manifest.json").write_text(json.dumps(m))
    assert main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "student (test)    accuracy n/a, macro-F1 n/a on ?" in out
    assert "teacher (test)    accuracy n/a, macro-F1 n/a on ?" in out
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps(RECORD) + "\n")
    assert main(["demo", "--model-dir", str(d), "--trace", str(trace), "--threads", "1"]) == 0
    assert "test accuracy n/a, macro-F1 n/a (?)" in capsys.readouterr().out


def test_model_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    assert main(["info", str(f)]) == 2
    one_line_error(capsys, "info", r"model\.onnx is a file, not a directory")


def test_demo_limit_never_reads_a_bad_later_record(exported, tmp_path, capsys):
    md = str(exported["llama-none"].model_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORD) + "\n" + "{not json\n")
    assert main(["demo", "--model-dir", md, "--trace", str(bad), "--limit", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "pep-1: 1 revisions, 1 edits, true label: Process" in out
    assert main(["demo", "--model-dir", md, "--trace", str(bad), "--threads", "1"]) == 2
    one_line_error(capsys, "demo", r"bad\.jsonl:2: not a trace record")


def test_demo_limit_on_a_truncated_gz(exported, tmp_path, capsys):
    md = str(exported["llama-none"].model_dir)
    rng = __import__("random").Random(0)
    filler = [{**RECORD, "doc_id": f"pep-{i}", "base": "".join(rng.choice("abcdefghij ") for _ in range(20_000))}
              for i in range(2, 30)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in [RECORD, *filler]).encode())
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])  # cut mid-stream
    assert main(["demo", "--model-dir", md, "--trace", str(gz), "--limit", "1", "--threads", "1"]) == 0
    assert "true label: Process" in capsys.readouterr().out
    assert main(["demo", "--model-dir", md, "--trace", str(gz), "--threads", "1"]) == 2
    one_line_error(capsys, "demo", r"t\.jsonl\.gz: cannot be read after line \d+ \(EOFError")


def test_export_on_a_truncated_safetensors(exported, tmp_path, capsys):
    from vqinc.model.checkpoint import save_checkpoint

    e = exported["llama-none"]
    ck = save_checkpoint(e.torch_model, e.tokenizer, tmp_path / "ck")
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    assert main(["export", str(ck), str(tmp_path / "out")]) == 2
    one_line_error(capsys, "export", r"model\.safetensors: not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_export_paths_are_checked_before_any_work(exported, tmp_path, capsys, monkeypatch):
    from vqinc.model import checkpoint

    def never(*a, **k):
        raise AssertionError("the checkpoint was loaded before the paths were checked")

    monkeypatch.setattr(checkpoint, "load_checkpoint", never)
    ck = tmp_path / "ck"
    ck.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    cases = [((tmp_path / "nope", tmp_path / "out"), r"nope: no such checkpoint"),
             ((tmp_path / "file", tmp_path / "out"), r"file: a file; give a checkpoint directory"),
             ((ck, tmp_path / "file"), r"file: a file; the output of export is a"),
             ((ck, tmp_path / "foreign"), r"foreign exists and is not a vqinc model directory"),
             ((ck, tmp_path / "file" / "sub"), r"is a file, not a directory")]
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append(((ck, ro / "out"), r"ro is not writable"))
    for (src, out), match in cases:
        assert main(["export", str(src), str(out)]) == 2
        one_line_error(capsys, "export", match)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    for bad in ("3", "0", str(1 << 21)):
        assert main(["export", str(ck), str(tmp_path / "out"), "--position-scale", bad]) == 2
        one_line_error(capsys, "export", r"--position-scale must be a power of two")


def test_load_checkpoint_names_the_cause(tmp_path):
    from vqinc.model.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    ck.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"ck is a file; a checkpoint is a directory"):
        load_checkpoint(ck)
    ck.unlink()
    ck.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (ck / name).write_text("[]")
    with pytest.raises(ValueError, match=r"config\.json: not a vqinc checkpoint \(format='list'\)"):
        load_checkpoint(ck)
