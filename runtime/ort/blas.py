"""One thread for numpy's BLAS, whatever the import order.

The engine runs small matmuls in numpy between ONNX Runtime calls. A multithreaded OpenBLAS spins its
threads against ORT's pool: on a busy 2-core machine a (4, 600, 32) x (4, 32, 600) matmul took 105 ms
instead of 8 ms. OPENBLAS_NUM_THREADS only works if set before numpy is first imported, so this module
also finds the OpenBLAS library numpy loaded and calls its `*set_num_threads*` entry point (what
threadpoolctl does, without the dependency). Linux only; elsewhere the environment variable is all.
"""

from __future__ import annotations

import ctypes
import os

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_",
            "openblas_set_num_threads64_")


def limit_blas_threads(threads: int = 1) -> bool:
    """Cap the BLAS libraries loaded in this process at `threads`; True if one was found and set."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    done = False
    for path in _loaded_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(threads))
                done = True
                break
    return done


def _loaded_blas_libraries() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))
