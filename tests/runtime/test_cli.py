"""The `vqinc` command line on real inputs: info, run, replay (trace file and git history), demo."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
from tests_support import PEP_REVISIONS, PEP_TYPES

from vqinc.runtime.cli import main
from vqinc.runtime.model_dir import Model, default_model_dir
from vqinc.runtime.replay.run import ReplaySummary, replay_trace
from vqinc.runtime.replay.traces import read_trace_file


def _git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    texts = ["The proposal adds a keyword.\n", "The proposal adds a new keyword.\nIt is opt-in.\n",
             "The film adds a new keyword.\nIt is opt-in, and charming.\n"]
    for i, t in enumerate(texts):
        (repo / "doc.txt").write_text(t)
        subprocess.run(["git", *env, "-C", str(repo), "add", "doc.txt"], check=True)
        subprocess.run(["git", *env, "-C", str(repo), "commit", "-qm", f"r{i}"], check=True)
    return repo


def test_info_names_ops_and_sizes(exported, capsys):
    assert main(["info", str(exported["llama-rope"].model_dir)]) == 0
    out = capsys.readouterr().out
    assert "positions         rope" in out
    assert "vqinc::VQEncode x" in out and "vqinc::VQDecode x" in out and "sha256 checked" in out


def test_info_without_a_directory_describes_the_bundled_model(capsys):
    if not (default_model_dir() / "manifest.json").exists():
        pytest.skip("no bundled model")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model directory   {default_model_dir()}\n") and "sha256 checked" in out


def test_run_classifies_a_file(exported, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("An utterly charming film.")
    assert main(["run", str(exported["llama-none"].model_dir), str(f), "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["label"] in ("neg", "pos") and abs(sum(res["probs"].values()) - 1) < 1e-3


def test_replay_git_history(exported, tmp_path, capsys):
    repo = _git_repo(tmp_path)
    assert main(["replay", str(exported["llama-none"].model_dir), "--git", str(repo / "doc.txt"), "--live"]) == 0
    out = capsys.readouterr().out
    assert "ms per edit" in out and "revisions" in out


def test_replay_trace_file_keeps_the_invariant(loaded, tmp_path):
    """A real PEP history (windowed): after every revision the document equals a fresh one."""
    from tests_support import assert_same_as_fresh, assert_same_as_full

    model = loaded["llama-rope"]
    trace = next(read_trace_file(PEP_REVISIONS))
    holder = {}

    def check(rev):
        assert_same_as_fresh(model, holder["summary"].document)
        assert_same_as_full(model, holder["summary"].document)
        holder["n"] = holder.get("n", 0) + 1

    from vqinc.runtime.replay.run import ReplaySummary

    holder["summary"] = ReplaySummary()
    summary = replay_trace(model, trace, max_tokens=200, summary=holder["summary"], on_revision=check,
                           max_revisions=6)
    assert holder["n"] == 6 and len(summary.edits) > 0


def test_replay_rejects_ambiguous_source(exported, capsys):
    assert main(["replay", str(exported["llama-none"].model_dir)]) == 2
    err = capsys.readouterr().err
    assert err == "vqinc replay: error: give exactly one of --trace TRACE.jsonl[.gz] or --git PATH\n"


def test_demo_on_bundled_model(tmp_path, capsys):
    if not (default_model_dir() / "manifest.json").exists():
        pytest.skip("no bundled model")
    repo = _git_repo(tmp_path)
    assert main(["demo", "--git", str(repo / "doc.txt")]) == 0
    out = capsys.readouterr().out
    assert "ops saved" in out and "label changes" in out
    labels = Model.load().labels  # whatever the bundled model classifies: no test depends on the names
    assert len(labels) >= 2 and len(set(labels)) == len(labels)


def test_demo_replays_the_bundled_dev_histories(capsys):
    """The default demo: bundled real histories of PEPs the bundled model never trained on."""
    from vqinc.runtime.cli import _true_labels, bundled_histories

    if not (default_model_dir() / "manifest.json").exists():
        pytest.skip("no bundled model")
    traces = list(read_trace_file(bundled_histories()))
    truth = _true_labels(bundled_histories())
    assert len(traces) >= 2 and set(truth) == {t.doc_id for t in traces}
    assert all(t.num_edits > 0 for t in traces)
    assert main(["demo", "--max-revisions", "2", "--max-tokens", "256", "--verbose"]) == 0
    out = capsys.readouterr().out
    model = Model.load()
    for t in traces:
        assert f"{t.doc_id}: {len(t.revisions)} revisions" in out
    lines = [ln for ln in out.splitlines() if " rev " in ln]
    assert len(lines) == 2 * len(traces)
    assert all(any(f" {lab} " in ln for lab in model.labels) for ln in lines)  # a label per revision


def test_demo_replays_whole_documents_and_prints_label_changes(capsys):
    """Without --max-tokens every edit of the whole document is applied (chunked past the window); a summary
    line per document, and a line only for the revisions where the label changes."""
    if not (default_model_dir() / "manifest.json").exists():
        pytest.skip("no bundled model")
    from vqinc.runtime.cli import bundled_histories

    traces = list(read_trace_file(bundled_histories(), limit=1))
    assert main(["demo", "--limit", "1", "--max-revisions", "4", "--check"]) == 0
    out = capsys.readouterr().out
    want = sum(len(r.edits) for r in traces[0].revisions[:4])
    assert f"4 revisions, {want} edits" in out and "outside the window" not in out
    changes = [ln for ln in out.splitlines() if ln.startswith("  rev ")]
    assert all(" -> " in ln for ln in changes)
    assert f"{len(changes)} label changes" in out
    assert "/ 0 / " in out.splitlines()[-1]  # vs fresh build: no code flips


def test_bundled_histories_are_dev_split_only():
    """The demo must show documents the bundled model never trained on: dev-split PEPs only."""
    import gzip

    from vqinc.runtime.cli import bundled_histories

    with gzip.open(PEP_TYPES, "rt", encoding="utf-8") as f:
        split = {r["doc_id"]: r["split"] for r in map(json.loads, f)}
    ids = [t.doc_id for t in read_trace_file(bundled_histories())]
    assert ids and all(split[i] == "dev" for i in ids)


def test_small_trace_file_roundtrip(exported, tmp_path, capsys):
    rec = {"doc_id": "d", "base": "The proposal adds a keyword.",
           "revisions": [{"id": "1", "date": "x", "edits": [{"at": 4, "delete": 8, "insert": "film"}]}]}
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write(json.dumps(rec) + "\n")
    assert main(["replay", str(exported["llama-none"].model_dir), "--trace", str(p), "--check"]) == 0
    out = capsys.readouterr().out
    assert "atomic edits replayed" in out
    assert "| 1 / 0 /" in out  # one revision checked against a fresh build, zero code flips


def test_train_without_export_extra_names_the_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["train", "--dataset", "rotten_tomatoes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"vqinc train: error: .*pip install 'vqinc\[export\]'", err)


def test_interrupt_is_one_line_not_a_traceback(monkeypatch, capsys):
    from vqinc.runtime import cli

    def interrupted(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info", "somewhere"]) == 130
    assert capsys.readouterr().err == "vqinc info: interrupted\n"


# -- replay reaches every edit; user errors are one line on stderr and exit code 2 (issue 10, item 8) --------
def _trace_file(tmp_path: Path, rec: dict, name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(rec) + "\n")
    return p


ENDS = {"doc_id": "ends", "base": "hello world",
        "revisions": [{"id": "1", "date": "x", "edits": [{"at": 0, "delete": 0, "insert": "Oh, "}]},
                      {"id": "2", "date": "x", "edits": [{"at": 15, "delete": 0, "insert": "! A charming film."}]},
                      {"id": "3", "date": "x", "edits": [{"at": 0, "delete": 4, "insert": ""},
                                                         {"at": 29, "delete": 0, "insert": ".."}]}]}


def test_replay_reaches_inserts_at_offset_0_and_appends_at_the_end(loaded):
    """A document that fits the window used to skip both as "outside the window" (and --check still passed)."""
    from tests_support import assert_same_as_fresh, assert_same_as_full

    from vqinc.runtime.replay.traces import Trace, _parse_trace

    model = loaded["llama-none"]
    trace: Trace = _parse_trace(ENDS)
    texts = list(trace.texts())
    summary, seen = ReplaySummary(), []
    replay_trace(model, trace, max_tokens=64, summary=summary, check=True,
                 on_revision=lambda r: seen.append(summary.document.text))
    assert seen == texts == ["Oh, hello world", "Oh, hello world! A charming film.", "hello world! A charming film..."]
    assert summary.skipped_edits == 0 and len(summary.edits) == 4
    assert summary.document.text == texts[-1]
    assert summary.code_flips == 0 and summary.checked_revisions == 3
    assert_same_as_fresh(model, summary.document)
    assert_same_as_full(model, summary.document)


def test_replay_cli_checks_the_document_against_the_trace_text(exported, tmp_path, capsys):
    p = _trace_file(tmp_path, ENDS)
    assert main(["replay", str(exported["llama-none"].model_dir), "--trace", str(p), "--check", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 4 |" in out and "| 3 / 0 /" in out


def _one_line_error(capsys, cmd: str, match: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"vqinc {cmd}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


def test_replay_edit_outside_the_text_is_an_error_naming_it(exported, loaded, tmp_path, capsys):
    rec = {"doc_id": "pep-x", "base": "hello world",
           "revisions": [{"id": "r7", "date": "x", "edits": [{"at": 500, "delete": 0, "insert": "!"}]}]}
    p = _trace_file(tmp_path, rec)
    assert main(["replay", str(exported["llama-none"].model_dir), "--trace", str(p)]) == 2
    _one_line_error(capsys, "replay", r"t\.jsonl:1: document 'pep-x', revision 'r7', edit 0 \(at 500, delete 0\): "
                                      r"reaches past the end of the text \(11 characters\)")
    from vqinc.runtime.replay.traces import _parse_trace

    with pytest.raises(ValueError, match=r"document 'pep-x', revision 'r7', edit 0"):  # the Python API too
        replay_trace(loaded["llama-none"], _parse_trace(rec))


def _bad_trace_files(tmp_path: Path) -> dict[str, Path]:
    good = (json.dumps(ENDS) + "\n").encode() * 50
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(good)[:-20])
    (tmp_path / "nested.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    return {"a directory": tmp_path, "truncated .gz": tmp_path / "truncated.jsonl.gz",
            "nested JSON": tmp_path / "nested.jsonl", "not UTF-8": tmp_path / "binary.jsonl",
            "missing": tmp_path / "missing.jsonl"}


@pytest.mark.parametrize("what, match", [
    ("a directory", r"not a file"), ("truncated .gz", r"cannot be read after line \d+ \(EOFError"),
    ("nested JSON", r"nested\.jsonl:1: not a trace record \(RecursionError"),
    ("not UTF-8", r"binary\.jsonl: cannot be read after line 0 \(UnicodeDecodeError"),
    ("missing", r"No such file or directory"),
])
def test_replay_bad_trace_file_is_one_line_exit_2(exported, tmp_path, capsys, what, match):
    path = _bad_trace_files(tmp_path)[what]
    assert main(["replay", str(exported["llama-none"].model_dir), "--trace", str(path)]) == 2
    _one_line_error(capsys, "replay", match)


@pytest.mark.parametrize("flags, match", [
    (["--max-tokens", "0"], r"--max-tokens must be >= 1, got 0"),
    (["--max-tokens", "-5"], r"--max-tokens must be >= 1, got -5"),
    (["--limit", "-1"], r"--limit must be >= 0, got -1"),
    (["--max-revisions", "-1"], r"--max-revisions must be >= 0, got -1"),
    (["--threads", "0"], r"--threads must be in 1\.\.256 \(ONNX Runtime's pool size\), got 0"),
    (["--threads", "-1"], r"--threads must be in 1\.\.256"),
    (["--threads", "100000"], r"--threads must be in 1\.\.256 .*got 100000"),
])
def test_replay_bad_flags_are_one_line_exit_2_before_loading(tmp_path, capsys, monkeypatch, flags, match):
    import vqinc.runtime.model_dir as model_module

    monkeypatch.setattr(model_module.Model, "load", lambda *a, **k: pytest.fail("loaded a model"))
    p = _trace_file(tmp_path, ENDS)
    assert main(["replay", str(tmp_path), "--trace", str(p), *flags]) == 2
    _one_line_error(capsys, "replay", match)


@pytest.mark.parametrize("cmd", [["run", "MODEL", "FILE"], ["demo", "--trace", "FILE"], ["serve", "MODEL"],
                                 ["replay", "MODEL", "--trace", "FILE"]])
@pytest.mark.parametrize("threads", ["0", "-1", "100000"])
def test_every_subcommand_refuses_bad_threads_before_loading(tmp_path, capsys, monkeypatch, cmd, threads):
    import vqinc.runtime.model_dir as model_module

    monkeypatch.setattr(model_module.Model, "load", lambda *a, **k: pytest.fail("loaded a model"))
    f = _trace_file(tmp_path, ENDS)
    argv = [str(f) if x == "FILE" else str(tmp_path) if x == "MODEL" else x for x in cmd]
    assert main([*argv, "--threads", threads]) == 2
    _one_line_error(capsys, cmd[0], rf"--threads must be in 1\.\.256 \(ONNX Runtime's pool size\), got {threads}")


def test_parser_errors_are_one_line_exit_2(capsys):
    for argv, cmd, match in (
            (["run", "m", "f", "--threads", "many"], "run", r"argument --threads: invalid int value"),
            (["replay", "m", "--max-tokens"], "replay", r"argument --max-tokens: expected one argument"),
            (["nope"], "", r"argument cmd: invalid choice: 'nope'")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"vqinc {cmd}".strip() + ": error: ") and re.search(match, err)


def test_run_bad_files_are_one_line_exit_2_before_loading(tmp_path, capsys, monkeypatch):
    import vqinc.runtime.model_dir as model_module

    monkeypatch.setattr(model_module.Model, "load", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 4)
    for file, match in ((tmp_path / "missing.txt", r"missing\.txt: no such file"),
                        (tmp_path, r": a directory, not a text file"),
                        (tmp_path / "binary.bin", r"binary\.bin: not UTF-8 text \(byte 128: invalid start byte\)")):
        assert main(["run", str(tmp_path), str(file)]) == 2
        _one_line_error(capsys, "run", match)
    (tmp_path / "t.txt").write_text("fine")
    assert main(["run", str(tmp_path), str(tmp_path / "t.txt"), "--max-chars", "-3"]) == 2
    _one_line_error(capsys, "run", r"--max-chars must be >= 1, got -3")


def test_run_and_info_on_bad_model_directories_are_one_line_exit_2(exported, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("An utterly charming film.")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(exported["llama-none"].model_dir, broken)
    (broken / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    for model_dir, match in ((tmp_path / "nope", r"nope does not exist"),
                             (tmp_path / "t.txt", r"t\.txt is a file, not a directory"),
                             (tmp_path, r"manifest\.json: missing"),
                             (broken, r"manifest\.json: not a valid manifest \(RecursionError")):
        assert main(["run", str(model_dir), str(tmp_path / "t.txt"), "--threads", "1"]) == 2
        _one_line_error(capsys, "run", match)
        assert main(["info", str(model_dir)]) == 2
        _one_line_error(capsys, "info", match)


def test_cli_process_with_huge_threads_exits_2_at_once(exported, tmp_path):
    """`--threads 100000` used to hang creating ORT's pool; the real process prints one line and exits 2."""
    import sys

    (tmp_path / "t.txt").write_text("An utterly charming film.")
    r = subprocess.run([sys.executable, "-m", "vqinc.runtime.cli", "run", str(exported["llama-none"].model_dir),
                        str(tmp_path / "t.txt"), "--threads", "100000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "vqinc run: error: --threads must be in 1..256 (ONNX Runtime's pool size), got 100000\n"
