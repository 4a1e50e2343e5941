"""The guard behind "tests need nothing outside the checkout" (checkout_guard.py, installed by conftest)."""

from __future__ import annotations

import gzip
import os
import tempfile

import checkout_guard
import pytest
from checkout_guard import REPO, fail_if_outside, is_inside, take_outside
from tests_support import PEP_REVISIONS

OUTSIDE = "/nonexistent-vqinc-guard-check/pep-revisions.jsonl.gz"  # under no allowed root


def test_allowed_roots():
    assert is_inside(str(PEP_REVISIONS)) and is_inside(str(REPO / "runtime" / "model.py"))
    assert is_inside(os.path.join(tempfile.gettempdir(), "x")) and is_inside(gzip.__file__)
    assert not is_inside(OUTSIDE)


def test_an_open_outside_is_recorded(tmp_path):
    assert take_outside() == []
    with pytest.raises(FileNotFoundError):
        gzip.open(OUTSIDE, "rt")
    with pytest.raises(FileNotFoundError):
        os.open(OUTSIDE.encode(), os.O_RDONLY)
    assert take_outside() == [OUTSIDE]  # recorded once, before the open failed; taking it clears the record
    (tmp_path / "in.txt").write_text("x")
    assert (tmp_path / "in.txt").read_text() == "x" and take_outside() == []


def test_a_symlink_out_of_the_checkout_counts_as_outside(tmp_path):
    link = REPO / "tests" / f".guard-link-{os.getpid()}"
    link.symlink_to(OUTSIDE)
    try:
        assert not is_inside(str(link))
    finally:
        link.unlink()


def test_a_test_phase_that_opened_a_file_outside_fails():
    assert checkout_guard._recording  # conftest installed it
    fail_if_outside("test")  # nothing recorded: passes
    with pytest.raises(FileNotFoundError):
        open(OUTSIDE)  # noqa: SIM115
    with pytest.raises(pytest.fail.Exception, match=f"the test opened files outside the checkout.*\n  {OUTSIDE}"):
        fail_if_outside("test")
    assert take_outside() == []
