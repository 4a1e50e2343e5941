"""Edit histories: the PEP trace file (the suite's sample), git histories, atomic diffs and the progress wrapper."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import PEP_REVISIONS

from vqinc.runtime.progress import progress
from vqinc.runtime.replay.traces import Edit, Revision, Trace, git_file_history, read_trace_file, text_edits

HYP = settings(max_examples=100, deadline=None, derandomize=True)
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


# -- the trace file ----------------------------------------------------------------------------
def test_real_traces_replay_in_bounds() -> None:
    traces = list(read_trace_file(PEP_REVISIONS, limit=4))
    assert [t.doc_id for t in traces] == ["pep-0001", "pep-0002", "pep-0004", "pep-0006"]
    for trace in traces:
        assert trace.base and len(trace.revisions) >= 8 and trace.num_edits > 0
        text = trace.base
        for rev, after in zip(trace.revisions, trace.texts(), strict=True):
            assert isinstance(rev.id, str) and rev.date[:2] in ("19", "20")
            for e in rev.edits:
                assert e.at + e.delete <= len(text)  # every edit lands inside the current text
                text = text[: e.at] + e.insert + text[e.at + e.delete:]
            assert text == after


def test_plain_and_gzip_files_read_alike(tmp_path: Path) -> None:
    with gzip.open(PEP_REVISIONS, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(2)]
    plain = tmp_path / "two.jsonl"
    plain.write_text("".join(lines) + "\n", encoding="utf-8")  # a trailing blank line is skipped
    assert list(read_trace_file(plain)) == list(read_trace_file(PEP_REVISIONS, limit=2))
    assert list(read_trace_file(plain, limit=0)) == []


def test_bad_trace_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "a", "base": "x", "revisions": []}\n{"doc_id": "b", "base": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a trace record \(KeyError"):
        list(read_trace_file(bad))
    bad.write_text('{"doc_id": "a", "base": "x", "revisions": [{"id": "r", "edits": [{"at": -1, "delete": 0, '
                   '"insert": ""}]}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*Edit.at must be an int >= 0, got -1"):
        list(read_trace_file(bad))
    with pytest.raises(ValueError, match="limit must be None or an int >= 0, got -1"):
        next(read_trace_file(bad, limit=-1))
    with pytest.raises(FileNotFoundError):
        next(read_trace_file(tmp_path / "missing.jsonl"))


def _record(edits, base="hello world", doc_id="d") -> str:
    return json.dumps({"doc_id": doc_id, "base": base, "revisions": [{"id": "r1", "date": "2024", "edits": []},
                                                                    {"id": "r2", "date": "2024", "edits": edits}]})


def test_edits_outside_the_text_are_refused_naming_document_revision_and_edit(tmp_path: Path) -> None:
    """`at` 500 on an 11-character base used to be clamped by slicing and replayed silently."""
    p = tmp_path / "t.jsonl"
    p.write_text(_record([{"at": 0, "delete": 0, "insert": "x"}, {"at": 500, "delete": 0, "insert": "!"}]) + "\n")
    with pytest.raises(ValueError, match=r"t\.jsonl:1: document 'd', revision 'r2', edit 1 \(at 500, delete 0\): "
                                         r"reaches past the end of the text \(12 characters\)"):
        list(read_trace_file(p))
    trace = Trace("d", "hello world", [Revision("r1", "", [Edit(6, 6, "")])])  # deletes one character too many
    with pytest.raises(ValueError, match=r"document 'd', revision 'r1', edit 0 \(at 6, delete 6\)"):
        trace.check()
    Trace("d", "hello world", [Revision("r1", "", [Edit(11, 0, "!"), Edit(0, 12, "")])]).check()  # in bounds


@pytest.mark.parametrize("value, match", [
    ("1.7", r"Edit\.at must be an int >= 0, got 1\.7"),
    ("true", r"Edit\.at must be an int >= 0, got True"),
    ('"3"', r"Edit\.at must be an int >= 0, got '3'"),
    ("1e400", r"Edit\.at must be an int >= 0, got inf"),
])
def test_edit_offsets_must_be_json_integers(tmp_path: Path, value: str, match: str) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(_record([]).replace('"edits": []', '"edits": [{"at": ' + value + ', "delete": 0, "insert": ""}]'))
    with pytest.raises(ValueError, match=match):
        list(read_trace_file(p))


def test_unreadable_trace_files_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a file \(a trace is a \.jsonl or \.jsonl\.gz file\)"):
        list(read_trace_file(tmp_path))
    good = (_record([{"at": 0, "delete": 0, "insert": "x"}]) + "\n").encode() * 200
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(good)[:-20])  # truncated: the last block and the trailer are missing
    with pytest.raises(ValueError, match=r"t\.jsonl\.gz: cannot be read after line \d+ \(EOFError"):
        list(read_trace_file(gz))
    data = bytearray(gzip.compress(good))
    data[20:60] = bytes(40)  # corrupt deflate data
    gz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"t\.jsonl\.gz: cannot be read after line \d+"):
        list(read_trace_file(gz))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(_record([], base="caf\u00e9").replace("\\u00e9", "\u00e9").encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=r"latin\.jsonl: cannot be read after line 0 \(UnicodeDecodeError"):
        list(read_trace_file(latin))
    nested = tmp_path / "nested.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"nested\.jsonl:1: not a trace record \(RecursionError"):
        list(read_trace_file(nested))
    nested.write_text(_record([]).replace('"edits": []', '"edits": ' + "[" * 500 + "]" * 500) + "\n")
    with pytest.raises(ValueError, match=r"nested\.jsonl:1: not a trace record \(TypeError"):
        list(read_trace_file(nested))


def test_edit_and_apply_validate() -> None:
    assert Trace.apply("hello", Edit(1, 3, "EY")) == "hEYo"
    assert Trace.apply("hello", Edit(5, 0, "!")) == "hello!"
    with pytest.raises(ValueError, match=r"edit at 4 deleting 2 reaches past the end of a text of 5"):
        Trace.apply("hello", Edit(4, 2, ""))
    with pytest.raises(ValueError, match="Edit.delete must be an int >= 0, got True"):
        Edit(0, True, "")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Edit.insert must be str, got NoneType"):
        Edit(0, 0, None)  # type: ignore[arg-type]
    trace = Trace("d", "ab", [Revision("1", "2024-01-01", [Edit(0, 9, "")])])
    with pytest.raises(ValueError, match="reaches past the end"):
        list(trace.texts())


# -- atomic diffs ------------------------------------------------------------------------------
lines = st.lists(st.sampled_from(["def f():\n", "    return 1\n", "x = 2\n", "", "é😀\n", "\n", "a b", "\r\n"])
                 | st.text(max_size=6), max_size=12).map("".join)


@HYP
@given(lines, lines)
def test_text_edits_reproduce_the_new_text(old: str, new: str) -> None:
    edits = text_edits(old, new)
    text = old
    for e in edits:
        text = Trace.apply(text, e)
    assert text == new
    assert (edits == []) == (old == new)
    assert all(e.delete or e.insert for e in edits)  # no empty edits


def test_text_edits_are_atomic() -> None:
    old = "line one\nline two\nline three\n"
    new = "line one\nline 2\nline three\nline four\n"
    assert text_edits(old, new) == [Edit(14, 3, "2"), Edit(27, 0, "line four\n")]  # offsets after the first edit


# -- git histories -----------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository whose `docs/notes.md` went through 5 commits, one a rename, with other files between."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    _git(root, "init", "-q")
    versions = ["# Notes\n\nfirst draft\n", "# Notes\n\nfirst draft, é😀\r\nmore\n",
                "# Notes\n\nsecond draft, é😀\r\nmore\n\tend", "# Notes\n\nsecond draft, é😀\r\nmore\n\tend",
                "intro\n# Notes\n\nthird\n"]
    names = ["docs/old.md", "docs/old.md", "docs/old.md", "docs/notes.md", "docs/notes.md"]
    for k, (text, name) in enumerate(zip(versions, names, strict=True)):
        if k and name != names[k - 1]:
            _git(root, "mv", names[k - 1], name)
        (root / name).write_bytes(text.encode("utf-8"))
        (root / "other.txt").write_text(f"unrelated {k}\n")
        _git(root, "add", "-A")
        _git(root, "commit", "-q", "-m", f"v{k}")
    del versions[3]  # the rename commit did not change the text: it is one revision with no edits
    versions.insert(3, versions[2])
    return root, versions


@needs_git
def test_git_history_reproduces_every_commit(repo: tuple[Path, list[str]]) -> None:
    root, versions = repo
    trace = git_file_history(root, "docs/notes.md")
    assert trace.doc_id == "docs/notes.md"
    assert trace.base == versions[0]
    assert list(trace.texts()) == versions[1:]
    assert trace.revisions[2].edits == []  # the rename
    assert all(len(r.id) == 12 and len(r.date) == 10 for r in trace.revisions)
    # any folder inside the work tree, absolute file path: the same history
    same = git_file_history(root / "docs", (root / "docs" / "notes.md").resolve())
    assert same == trace
    latest = git_file_history(root, "docs/notes.md", max_revisions=2)
    assert latest.base == versions[-3] and list(latest.texts()) == versions[-2:]


@needs_git
def test_git_history_errors(repo: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = repo
    (root / "new.txt").write_text("never committed\n")
    with pytest.raises(ValueError, match=r"new.txt: never committed in the git repository"):
        git_file_history(root, "new.txt")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match=rf"{plain}: not a git repository"):
        git_file_history(plain, "x.txt")
    with pytest.raises(ValueError, match="not a directory"):
        git_file_history(tmp_path / "missing", "x.txt")
    with pytest.raises(ValueError, match="not inside the git work tree"):
        git_file_history(root, plain / "x.txt")
    with pytest.raises(ValueError, match="max_revisions must be None or an int >= 0"):
        git_file_history(root, "docs/notes.md", max_revisions=-1)


# -- progress ----------------------------------------------------------------------------------
def test_progress_is_silent_without_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    items = [1, 2, 3]
    assert progress(items, desc="x") is items
    assert progress(items, enabled=True) is items
    assert list(progress(iter(items), total=3, enabled=False)) == items
    assert capsys.readouterr().err == ""


def test_progress_wraps_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    wrapped = progress([1, 2, 3], desc="replay")
    assert wrapped is not None and list(wrapped) == [1, 2, 3]
    assert type(wrapped).__name__ == "tqdm"
    assert progress([1], enabled=False) == [1]
