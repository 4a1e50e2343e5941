"""Real edit histories for replay: the JSONL trace format and a file's git history.

Owns `Edit` / `Revision` / `Trace`, `read_trace_file` (the format of
`../shared/data/pep-revisions.jsonl.gz`: one JSON object per line with `doc_id`, `base` and
`revisions: [{id, date, edits: [{at, delete, insert}]}]`, gzip or plain), `git_file_history`, and
`text_edits` (atomic edits between two texts, by difflib). Offsets are characters (Python str
indices); the edits of a revision apply one after another, each to the result of the previous one.
It does not replay anything through a model (that is `replay.py`).
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_CHAR_DIFF = 4_000_000
"""Above this product of block lengths a replaced line block becomes one edit (difflib is quadratic)."""


@dataclass(frozen=True)
class Edit:
    """Replace `text[at : at + delete]` by `insert`."""

    at: int
    delete: int
    insert: str

    def __post_init__(self) -> None:
        for name in ("at", "delete"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Edit.{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.insert, str):
            raise TypeError(f"Edit.insert must be str, got {type(self.insert).__name__}")


@dataclass(frozen=True)
class Revision:
    id: str
    date: str
    edits: list[Edit] = field(default_factory=list)


@dataclass(frozen=True)
class Trace:
    """A document's first text and the revisions that follow it, oldest first."""

    doc_id: str
    base: str
    revisions: list[Revision] = field(default_factory=list)

    @property
    def num_edits(self) -> int:
        return sum(len(r.edits) for r in self.revisions)

    def texts(self) -> Iterator[str]:
        """The text after each revision (not the base)."""
        text = self.base
        for rev in self.revisions:
            for e in rev.edits:
                text = self.apply(text, e)
            yield text

    def check(self) -> None:
        """Every edit lands inside the text it applies to (`at + delete <= len(text)`); ValueError naming the
        document, the revision and the edit otherwise. Lengths only: O(edits)."""
        length = len(self.base)
        for rev in self.revisions:
            for j, e in enumerate(rev.edits):
                if e.at + e.delete > length:
                    raise ValueError(f"document {self.doc_id!r}, revision {rev.id!r}, edit {j} (at {e.at}, delete "
                                     f"{e.delete}): reaches past the end of the text ({length} characters)")
                length += len(e.insert) - e.delete

    @staticmethod
    def apply(text: str, edit: Edit) -> str:
        """`text` with `edit` applied; ValueError if the edit reaches past the end."""
        if edit.at + edit.delete > len(text):
            raise ValueError(f"edit at {edit.at} deleting {edit.delete} reaches past the end of a text of "
                             f"{len(text)} characters (need at + delete <= {len(text)})")
        return text[: edit.at] + edit.insert + text[edit.at + edit.delete:]


def read_trace_file(path: str | os.PathLike[str], limit: int | None = None) -> Iterator[Trace]:
    """Traces from a JSONL file (gzip detected by its magic bytes), at most `limit` of them. Each is checked
    (`Trace.check`); a malformed, truncated or undecodable file raises ValueError naming the file and line."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ValueError(f"{p}: not a file (a trace is a .jsonl or .jsonl.gz file)")
    count = 0
    for lineno, line in trace_lines(p):
        if limit is not None and count >= limit:
            return
        if not line.strip():
            continue
        try:
            trace = _parse_trace(json.loads(line))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
            raise ValueError(f"{p}:{lineno}: not a trace record ({type(e).__name__}: {str(e)[:200]}); expected "
                             "{doc_id, base, revisions: [{id, date, edits: [{at, delete, insert}]}]}") from None
        try:
            trace.check()
        except ValueError as e:
            raise ValueError(f"{p}:{lineno}: {e}") from None
        yield trace
        count += 1
        if limit is not None and count >= limit:  # not one line more: a bad or truncated rest is never read
            return


def git_file_history(
    repo_path: str | os.PathLike[str], file_path: str | os.PathLike[str], max_revisions: int | None = None
) -> Trace:
    """The committed history of one file (following renames), oldest first, as atomic edits.

    `file_path` is absolute or relative to `repo_path` (any folder inside the work tree). With
    `max_revisions`, only the latest `max_revisions` commits become revisions and the base is the
    file at the commit before them. A commit that deletes the file gives the empty text.
    """
    if max_revisions is not None and (not isinstance(max_revisions, int) or isinstance(max_revisions, bool)
                                      or max_revisions < 0):
        raise ValueError(f"max_revisions must be None or an int >= 0, got {max_revisions!r}")
    repo = Path(repo_path)
    if not repo.is_dir():
        raise ValueError(f"{repo}: not a directory (need a folder inside a git work tree)")
    top_out = _git(repo, "rev-parse", "--show-toplevel", check=False)
    if top_out is None:
        raise ValueError(f"{repo}: not a git repository (git rev-parse --show-toplevel failed)")
    top = Path(top_out.decode().strip()).resolve()
    target = (Path(file_path) if Path(file_path).is_absolute() else repo / file_path).resolve()
    try:
        rel = target.relative_to(top).as_posix()
    except ValueError:
        raise ValueError(f"{file_path}: not inside the git work tree {top}") from None

    commits = _log(top, rel)
    if not commits:
        raise ValueError(f"{file_path}: never committed in the git repository {top}")
    commits.reverse()  # oldest first
    if max_revisions is not None:
        commits = commits[-(max_revisions + 1):]
    texts = [_show(top, sha, path) for sha, _, path in commits]
    revisions = [Revision(sha[:12], date, text_edits(a, b))
                 for (sha, date, _), a, b in zip(commits[1:], texts[:-1], texts[1:], strict=True)]
    return Trace(doc_id=rel, base=texts[0], revisions=revisions)


def text_edits(old: str, new: str) -> list[Edit]:
    """Atomic edits turning `old` into `new`, applied one after another (line diff, then characters)."""
    old_lines, new_lines = old.splitlines(keepends=True), new.splitlines(keepends=True)
    old_at = _line_starts(old_lines)
    new_at = _line_starts(new_lines)
    edits: list[Edit] = []
    shift = 0  # len(current) - len(old) so far: later offsets of `old` move by it
    sm = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        a, b = old[old_at[i1]:old_at[i2]], new[new_at[j1]:new_at[j2]]
        base = old_at[i1] + shift
        if tag == "replace" and len(a) * len(b) <= MAX_CHAR_DIFF:
            local = 0
            cm = difflib.SequenceMatcher(None, a, b, autojunk=False)
            for ctag, c1, c2, d1, d2 in cm.get_opcodes():
                if ctag != "equal":
                    edits.append(Edit(base + c1 + local, c2 - c1, b[d1:d2]))
                    local += (d2 - d1) - (c2 - c1)
        else:
            edits.append(Edit(base, len(a), b))
        shift += len(b) - len(a)
    return edits


# -- internals ---------------------------------------------------------------------------------
def trace_lines(p: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a plain or gzip file; read errors become ValueErrors naming the file and line."""
    lineno = 0
    with open(p, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(p, "rt", encoding="utf-8") if gz else open(p, encoding="utf-8")) as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:  # truncated or corrupt gzip, not UTF-8
        raise ValueError(f"{p}: cannot be read after line {lineno} ({type(e).__name__}: {e})") from None


def _parse_trace(obj: dict) -> Trace:
    for key, kind in (("base", str), ("revisions", list)):
        if not isinstance(obj[key], kind):
            raise TypeError(f"{key} must be {kind.__name__}, got {type(obj[key]).__name__}")
    revisions = []
    for r in obj["revisions"]:
        if not isinstance(r["edits"], list):
            raise TypeError(f"edits must be a list, got {type(r['edits']).__name__}")
        revisions.append(Revision(str(r["id"]), str(r.get("date", "")),
                                  [Edit(e["at"], e["delete"], e["insert"]) for e in r["edits"]]))
    return Trace(str(obj["doc_id"]), obj["base"], revisions)


def _line_starts(lines: list[str]) -> list[int]:
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts


def _git(cwd: Path, *args: str, check: bool = True) -> bytes | None:
    proc = subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        if check:
            raise ValueError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.decode(errors='replace').strip()}")
        return None
    return proc.stdout


def _log(top: Path, rel: str) -> list[tuple[str, str, str]]:
    """(sha, date, path at that commit), newest first; the path follows renames."""
    out = _git(top, "log", "--follow", "--format=%x1e%H%x1f%as", "--name-only", "--", rel, check=False)
    commits: list[tuple[str, str, str]] = []
    path = rel
    for record in (out or b"").decode("utf-8", errors="replace").split("\x1e")[1:]:
        head, _, names = record.partition("\n")
        sha, _, date = head.partition("\x1f")
        listed = [n for n in names.splitlines() if n.strip()]
        path = listed[0] if listed else path  # merges list no files: keep the newer commit's name
        commits.append((sha, date, path))
    return commits


def _show(top: Path, sha: str, path: str) -> str:
    out = _git(top, "show", f"{sha}:{path}", check=False)
    if out is None:  # the commit deleted the file
        return ""
    return out.decode("utf-8", errors="replace")  # the blob as committed: newlines untouched
