"""Hypothesis strategies and input builders for the op table (shared by the ops tests).

Shapes come from hypothesis (including n = 1, K = 1, h = 1); values come from a numpy
generator seeded by hypothesis, so examples stay small to shrink and reproducible.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# Modest and reproducible: each example runs ORT, and the whole ops suite must stay well under a minute.
CI = settings(max_examples=100, deadline=None, derandomize=True)

# Stated tolerance of float32 outputs that go through float arithmetic (not a gather).
F32_TOL = {"rtol": 1e-5, "atol": 1e-5}


@st.composite
def vq_inputs(draw: st.DrawFn, max_codes: int = 9) -> dict[str, np.ndarray]:
    """x (n,h,dh) and codebook (h,K,dh), float32 standard normal."""
    n = draw(st.integers(1, 9))
    h = draw(st.integers(1, 4))
    num_codes = draw(st.integers(1, max_codes))
    dh = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {
        "x": rng.standard_normal((n, h, dh)).astype(np.float32),
        "codebook": rng.standard_normal((h, num_codes, dh)).astype(np.float32),
    }


@st.composite
def decode_inputs(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """codes (n,h) in [0, K) and codebook (h,K,dh)."""
    vq = draw(vq_inputs())
    n, h = vq["x"].shape[:2]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, vq["codebook"].shape[1], size=(n, h), dtype=np.int64)
    return {"codes": codes, "codebook": vq["codebook"]}
