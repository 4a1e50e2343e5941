"""The engine's native kernels (`_kernels.c`), or None where they were not built.

The C extension is optional at install time (a machine without a compiler still gets a working, slower
runtime: the numpy paths compute the same bounds). `VQINC_KERNELS=numpy` turns the kernels off (tests
run both paths); `VQINC_REQUIRE_KERNELS=1` makes a missing build an error (`make test` sets it, so CI
cannot silently measure or test the fallback only).
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("VQINC_KERNELS", "").lower() == "numpy":
        return None
    try:
        from vqinc.runtime.engine import _kernels
    except ImportError as e:
        if os.environ.get("VQINC_REQUIRE_KERNELS") == "1":
            raise ImportError(f"vqinc's native kernels are not built ({e}); build them with "
                              "`python setup.py build_ext --inplace` (needs a C compiler)") from None
        return None
    return _kernels


NATIVE: ModuleType | None = _load()
"""The extension module, or None (numpy paths)."""


def kind() -> str:
    """'native' or 'numpy': which lazy-update path this process runs (benchmarks record it)."""
    return "native" if NATIVE is not None else "numpy"
