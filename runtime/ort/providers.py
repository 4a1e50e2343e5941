"""Which ONNX Runtime execution providers a model runs on: the `providers=` argument, checked.

ORT itself iterates a string letter by letter, drops unknown or unavailable names with a warning per
session and falls back to CPU silently. Here, before any session exists:

- `None` means `["CPUExecutionProvider"]`;
- anything but a list or tuple of str (a bare string included) is a TypeError;
- an empty list, or a name ONNX Runtime does not know, is a ValueError naming the valid ones;
- a known provider that this onnxruntime build cannot run (e.g. CUDA with the CPU wheel):
  * if another requested provider is available (ORT's priority-list convention, e.g.
    `["CUDAExecutionProvider", "CPUExecutionProvider"]`), it is dropped with one RuntimeWarning;
  * if none is, a ValueError: no silent fallback to a provider the caller did not ask for.

After a session is created, `check_session` applies the same rule to what ORT actually runs (the GPU
wheel lists CUDA as available even on a machine without a GPU or CUDA libraries, and falls back).
`Model.providers` is what the sessions use.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence

import onnxruntime as ort

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
GPU_HINT = "install the GPU wheel into a fresh environment: pip install 'vqinc[gpu]' (onnxruntime-gpu)"
_warned: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_providers(requested: object = None) -> list[str]:
    """The provider list to create sessions with (priority order), or a clear TypeError / ValueError."""
    if requested is None:
        return list(DEFAULT_PROVIDERS)
    if isinstance(requested, str) or not isinstance(requested, (list, tuple)):
        hint = f"[{requested!r}]" if isinstance(requested, str) else "['CPUExecutionProvider']"
        raise TypeError(f"providers must be a list of provider names such as {hint}, got "
                        f"{type(requested).__name__} {requested!r}")
    if not requested:
        raise ValueError(f"providers is empty; give at least one of {ort.get_available_providers()}")
    bad = [p for p in requested if not isinstance(p, str)]
    if bad:
        raise TypeError(f"providers must be provider names (str), got {bad[0]!r} ({type(bad[0]).__name__})")
    known = ort.get_all_providers()
    for name in requested:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown execution provider {name!r}{guess}; onnxruntime knows {known}")
    available = ort.get_available_providers()
    usable = list(dict.fromkeys(p for p in requested if p in available))
    missing = [p for p in requested if p not in available]
    if not usable:
        raise ValueError(f"execution provider(s) {missing} not available in this onnxruntime {ort.__version__} "
                         f"build (available: {available}); {GPU_HINT}, or add 'CPUExecutionProvider' to the list "
                         "to fall back")
    if missing:
        _warn_once(tuple(requested), f"execution provider(s) {missing} not available in this onnxruntime build "
                                     f"(available: {available}); running on {usable}")
    return usable


def check_session(session: ort.InferenceSession, providers: Sequence[str]) -> list[str]:
    """What `session` runs on; raises if it dropped every requested provider, warns once if it dropped some.

    (ORT keeps CPUExecutionProvider as a fallback for nodes other providers cannot run: it is listed
    in a session's providers without having been requested.)"""
    in_use = session.get_providers()
    dropped = [p for p in providers if p not in in_use]
    if len(dropped) == len(providers):
        raise ValueError(f"ONNX Runtime could not create {dropped} (no GPU, or missing CUDA / cuDNN libraries?) and "
                         f"fell back to {in_use}; add 'CPUExecutionProvider' to the list to allow that")
    if dropped:
        _warn_once(("session", *providers), f"ONNX Runtime could not create {dropped}; running on {in_use}")
    return in_use


def describe_providers() -> str:
    """One line for `vqinc info`: what this onnxruntime can run and what Model.load uses by default."""
    return (f"onnxruntime {ort.__version__}: available {', '.join(ort.get_available_providers())}; "
            f"Model.load default {', '.join(DEFAULT_PROVIDERS)} (providers=[...] to choose)")
