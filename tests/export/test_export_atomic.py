"""Writes that cannot lose data: `vqinc export` over an existing good model, the in-place decoder
export and `save_checkpoint`, each interrupted (KeyboardInterrupt injected by monkeypatch) at several
points of the write and of the final swap: the directory always loads afterwards, as the old model or
the new one, and no staging directory is left beside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vqinc.export import exporter, stage_modules
from vqinc.runtime.cli import main
from vqinc.runtime.format import atomic
from vqinc.runtime.format.manifest import load_manifest
from vqinc.runtime.model_dir import Model


class Interrupt:
    """A callable wrapper raising KeyboardInterrupt on its `at`-th call (1-based)."""

    def __init__(self, fn, at: int):
        self.fn, self.at, self.calls = fn, at, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.fn(*args, **kw)


def _siblings(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name != d.name)


@pytest.fixture
def good(exported, tmp_path) -> tuple[Path, str]:
    """A copy of a good model directory (a package dir: with __init__.py) and its fingerprint."""
    d = tmp_path / "models" / "m"
    shutil.copytree(exported["llama-none"].model_dir, d)
    (d / "__init__.py").write_text("# package data\n")
    return d, load_manifest(d).fingerprint


@pytest.fixture(scope="module")
def other(exported):
    """Another model (other weights, other fingerprint) to export over the good one."""
    import copy

    import torch

    e = exported["llama-none"]
    m = copy.deepcopy(e.torch_model)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.01)
    return m.eval(), e.tokenizer


@pytest.mark.parametrize("where,at", [("save_graph", 1), ("save_graph", 3), ("to_json", 1), ("exchange", 1),
                                      ("swap_rename", 2)])
def test_interrupted_export_leaves_the_old_model(good, other, monkeypatch, where, at):
    d, fp = good
    if where == "save_graph":
        monkeypatch.setattr(stage_modules, "save_graph", Interrupt(stage_modules.save_graph, at))
    elif where == "to_json":
        monkeypatch.setattr(exporter.Manifest, "to_json", Interrupt(exporter.Manifest.to_json, at))
    elif where == "exchange":
        monkeypatch.setattr(atomic, "_exchange", Interrupt(atomic._exchange, at))
    else:  # the two-rename fallback, interrupted between its renames
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
        monkeypatch.setattr(atomic.os, "rename", Interrupt(atomic.os.rename, at))
    with pytest.raises(KeyboardInterrupt):
        exporter.export_model(other, d, full_graph=False, show_progress=False)
    monkeypatch.undo()
    assert load_manifest(d).fingerprint == fp
    Model.load(d, threads=1, warm_up=False)  # every file present, sizes and sha256 as the manifest says
    assert (d / "__init__.py").read_text() == "# package data\n"
    assert _siblings(d) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_export_over_a_model_replaces_it_whole(good, other, monkeypatch, exchange):
    d, fp = good
    (d / "stale.onnx").write_bytes(b"a graph of an older export")  # not part of the new model: dropped
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    man = exporter.export_model(other, d, full_graph=False, show_progress=False)
    assert man.fingerprint != fp and load_manifest(d).fingerprint == man.fingerprint
    Model.load(d, threads=1, warm_up=False)
    assert not (d / "stale.onnx").exists() and not (d / "full.onnx").exists()
    assert (d / "__init__.py").read_text() == "# package data\n"
    assert _siblings(d) == []


def test_cli_export_interrupted_over_a_good_model(good, other, tmp_path, monkeypatch, capsys):
    from vqinc.model.checkpoint import save_checkpoint

    d, fp = good
    ck = save_checkpoint(other[0], other[1], tmp_path / "ck")
    monkeypatch.setattr(stage_modules, "save_graph", Interrupt(stage_modules.save_graph, 2))
    assert main(["export", str(ck), str(d), "--no-full"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_manifest(d).fingerprint == fp
    Model.load(d, threads=1, warm_up=False)
    assert _siblings(d) == []


@pytest.mark.parametrize("at", [1, 2])
def test_interrupted_decoder_export_leaves_the_model_as_it_was(exported, tmp_path, monkeypatch, at):
    from vqinc.export.decoder import add_decoder

    e = exported["llama-none"]
    d = tmp_path / "m"
    shutil.copytree(e.model_dir, d)
    before = (d / "manifest.json").read_text()
    if at == 1:  # while the decoder graph is written
        monkeypatch.setattr(stage_modules, "save_graph", Interrupt(stage_modules.save_graph, 1))
    else:  # at the swap
        monkeypatch.setattr(atomic, "_exchange", Interrupt(atomic._exchange, 1))
    with pytest.raises(KeyboardInterrupt):
        add_decoder(e.torch_model, d, "plain")
    monkeypatch.undo()
    assert (d / "manifest.json").read_text() == before and not (d / "decoder.onnx").exists()
    Model.load(d, threads=1, warm_up=False)
    assert _siblings(d) == []


def test_interrupted_checkpoint_save_keeps_the_old_checkpoint(exported, other, tmp_path, monkeypatch):
    from vqinc.model import checkpoint

    e = exported["llama-none"]
    ck = checkpoint.save_checkpoint(e.torch_model, e.tokenizer, tmp_path / "ck")
    (ck / "notes.txt").write_text("kept")
    old = (ck / "model.safetensors").read_bytes()
    monkeypatch.setattr(checkpoint, "save_file", Interrupt(checkpoint.save_file, 1))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(other[0], other[1], ck)
    monkeypatch.undo()
    assert (ck / "model.safetensors").read_bytes() == old
    checkpoint.load_checkpoint(ck)
    checkpoint.save_checkpoint(other[0], other[1], ck)  # uninterrupted: the new weights, notes.txt kept
    assert (ck / "model.safetensors").read_bytes() != old and (ck / "notes.txt").read_text() == "kept"
    assert _siblings(ck) == []


def test_write_atomic_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "out.json"
    f.write_text("old")
    monkeypatch.setattr(atomic.os, "replace", Interrupt(atomic.os.replace, 1))
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(f, "new")
    monkeypatch.undo()
    assert f.read_text() == "old" and _siblings(f) == []
    atomic.write_atomic(f, "new")
    assert f.read_text() == "new" and _siblings(f) == []


def test_replacing_a_file_with_a_directory_is_refused(tmp_path):
    f = tmp_path / "model"
    f.write_text("not a directory")
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic.replacing_dir(f) as stage:
            (stage / "x").write_text("x")
    assert f.read_text() == "not a directory" and _siblings(f) == []
