"""`progress`: a tqdm bar on stderr for CLI replay and benchmarks, silent when nobody is watching."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str = "", enabled: bool | None = None
) -> Iterable[T]:
    """`iterable`, wrapped in a progress bar unless `enabled` is False or stderr is not a terminal."""
    if enabled is False or not _stderr_is_tty():
        return iterable
    return tqdm(iterable, total=total, desc=desc or None, file=sys.stderr, leave=False, dynamic_ncols=True)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
