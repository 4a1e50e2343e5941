"""Writes that cannot lose data: a directory or file is written beside its target and renamed over it
at the end, so an interrupt (Ctrl-C, a full disk, a crash in the writer) at any point leaves the old
target or the new one, never a mix and never neither.

`replacing_dir(target)` yields a sibling staging directory (`.NAME.tmp-XXXX`); when the block ends
without an exception the staging directory takes the target's place: with Linux's
`renameat2(RENAME_EXCHANGE)` in one atomic step, elsewhere by two renames with SIGINT/SIGTERM held
back between them. On an exception the staging directory is removed and the target is untouched.
`write_atomic(path, data)` does the same for one file (`os.replace`, atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


@contextlib.contextmanager
def replacing_dir(target: str | Path, carry: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `target` when the block succeeds.

    `carry(entry)`: entries of an existing `target` to bring over into the staging directory before
    the block runs (hard links where the file system allows, else copies). The block must not write
    into carried files (a hard link shares the old file's bytes): it writes only new files."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if carry is not None and target.is_dir():
            for entry in target.iterdir():
                if carry(entry):
                    _link_or_copy(entry, staging / entry.name)
        yield staging
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new tree on failure, the old one after an exchange


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` to `path` through a sibling temporary file and `os.replace`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_writable_dir(path: str | Path, what: str) -> None:
    """Before any work: the directory that will hold `path` exists (or can be made) and is writable."""
    parent = Path(path).resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {probe} is not writable")


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src, dst) -> None:
    try:
        if Path(src).is_symlink():
            raise OSError("copy links as links")
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _swap_in(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; the old target (if any) ends at `staging`'s path, to be removed."""
    with _signals_held():
        if not target.exists() and not target.is_symlink():
            os.rename(staging, target)
            staging.mkdir()  # the caller removes it
            return
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{target} exists and is not a directory; refusing to replace it")
        if _exchange(staging, target):
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
        os.rename(old, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux >= 3.15 with glibc >= 2.28); False where that is not available."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block is over (delivered right after it)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
