"""A guard for the rule "tests need nothing outside the checkout": an audit hook that records every file
Python opens, and pytest hooks (in conftest.py) that fail the test phase that opened one outside.

Allowed besides the checkout: the interpreter and its installed packages (the venv, the base Python, the
site-packages folders), the temporary folder (pytest's `tmp_path`), and system folders (`/proc`, `/dev`,
`/etc`, `/usr`, ...). Paths are compared after `realpath`, so a symlink inside the checkout that points
outside counts as outside. The hook sees Python's own `open` calls (builtins.open, io.open, os.open and
everything built on them: gzip, json, numpy); files opened by native code (ORT sessions, the tokenizers
library, a subprocess) go past it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_DIRS = ("/proc", "/dev", "/sys", "/etc", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/run", "/var/tmp")


def _roots() -> tuple[str, ...]:
    roots = {str(REPO), tempfile.gettempdir(), *SYSTEM_DIRS}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    roots |= {p for p in sysconfig.get_paths().values() if p}
    return tuple(sorted({os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots}))


ROOTS = _roots()
_outside: list[str] = []
_recording = False


def is_inside(path: str) -> bool:
    """Whether `path` (after realpath, relative to the cwd) lies under one of the allowed roots."""
    real = os.path.realpath(path) + os.sep
    return real.startswith(ROOTS)


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not _recording:
        return
    path = args[0]
    if isinstance(path, int):  # os.fdopen / open(fd): the file was opened (and checked) before
        return
    try:
        path = os.fsdecode(path)
        if not is_inside(path):
            _outside.append(os.path.realpath(path))
    except Exception:  # never break an open for the guard's sake (e.g. an undecodable name)
        return


def install() -> None:
    """Start recording (once per process; audit hooks cannot be removed)."""
    global _recording
    if not _recording:
        sys.addaudithook(_hook)
        _recording = True


def take_outside() -> list[str]:
    """The outside paths opened since the last call, each once, in order; clears the record."""
    found = list(dict.fromkeys(_outside))
    _outside.clear()
    return found


def fail_if_outside(phase: str) -> None:
    """Fail the current test `phase` if it opened a file outside the checkout (and clear the record)."""
    outside = take_outside()
    if outside:
        shown = "\n  ".join(outside[:10]) + ("\n  ..." if len(outside) > 10 else "")
        pytest.fail(f"the {phase} opened files outside the checkout (tests read tests/data; benchmarks may read "
                    f"../shared):\n  {shown}", pytrace=False)
