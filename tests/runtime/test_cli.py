"""The `vqinc` command line on real inputs: info, run, replay (trace file and git history), demo."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from vqinc.runtime.cli import main
from vqinc.runtime.model import Model, default_model_dir
from vqinc.runtime.replay import replay_trace
from vqinc.runtime.traces import read_trace_file

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pep-revisions.jsonl.gz"


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
    assert "positions         rope" in out and "vqinc::VQEncodeMargin x2" in out and "vqinc::AttentionPartial" in out


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
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not present")
    from tests_support import assert_same_as_fresh

    model = loaded["llama-rope"]
    trace = next(read_trace_file(SHARED))
    holder = {}

    def check(rev):
        assert_same_as_fresh(model, holder["summary"].document)
        holder["n"] = holder.get("n", 0) + 1

    from vqinc.runtime.replay import ReplaySummary

    holder["summary"] = ReplaySummary()
    summary = replay_trace(model, trace, max_tokens=200, summary=holder["summary"], on_revision=check,
                           max_revisions=6)
    assert holder["n"] == 6 and len(summary.edits) > 0


def test_replay_rejects_ambiguous_source(exported):
    with pytest.raises(SystemExit):
        main(["replay", str(exported["llama-none"].model_dir)])


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
    assert main(["demo", "--max-revisions", "2", "--max-tokens", "256"]) == 0
    out = capsys.readouterr().out
    model = Model.load()
    for t in traces:
        assert f"{t.doc_id}: {len(t.revisions)} revisions" in out
    lines = [ln for ln in out.splitlines() if " rev " in ln]
    assert len(lines) == 2 * len(traces)
    assert all(any(f" {lab} " in ln for lab in model.labels) for ln in lines)  # a label per revision


def test_bundled_histories_are_dev_split_only():
    """The demo must show documents the bundled model never trained on: dev-split PEPs only."""
    import gzip

    from vqinc.runtime.cli import bundled_histories

    types = SHARED.parent / "pep-types.jsonl.gz"
    if not types.exists():
        pytest.skip(f"{types} not present")
    with gzip.open(types, "rt", encoding="utf-8") as f:
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


def test_train_without_export_extra_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install 'vqinc\[export\]'"):
        main(["train", "--dataset", "rotten_tomatoes"])
