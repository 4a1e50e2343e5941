"""benchmarks/contenders.py keeps its exported decoders in a private per-user cache: made with mode
0700, and refused (with the fix named) when it is a link, another user's, or open to others."""

from __future__ import annotations

import os
import stat

import pytest

from benchmarks.contenders import private_cache_dir


def test_cache_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = private_cache_dir()
    assert root == tmp_path / "cache" / "vqinc"
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700 and os.lstat(root).st_uid == os.getuid()
    assert private_cache_dir() == root  # an existing good one is reused


def test_cache_open_to_others_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "vqinc").mkdir(mode=0o777)
    os.chmod(tmp_path / "vqinc", 0o777)
    with pytest.raises(RuntimeError, match="has mode 777; it must be private"):
        private_cache_dir()


def test_cache_that_is_a_link_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "vqinc").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="is not a directory \\(a link or a file\\)"):
        private_cache_dir()
