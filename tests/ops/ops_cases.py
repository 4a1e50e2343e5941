"""Hypothesis strategies and input builders for the op table (shared by the ops tests).

Shapes come from hypothesis (including n = 1, K = 1, h = 1, GQA groups); values come from a numpy
generator seeded by hypothesis, so examples stay small to shrink and reproducible.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# Modest and reproducible: each example runs ORT, and the whole ops suite must stay well under a minute.
CI = settings(max_examples=100, deadline=None, derandomize=True)

# Stated tolerances: float32 outputs (margin) and float64 outputs (attention accumulators).
F32_TOL = {"rtol": 1e-5, "atol": 1e-5}
F64_TOL = {"rtol": 1e-10, "atol": 1e-10}


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


@st.composite
def attention_inputs(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], float]:
    """q, k, v, mask (with fully masked rows sometimes), m_in (mixing -inf, ordinary and large
    values), and scale."""
    nq = draw(st.integers(1, 6))
    nk = draw(st.integers(1, 7))
    num_kv_heads = draw(st.integers(1, 3))
    num_heads = num_kv_heads * draw(st.integers(1, 3))
    dh = draw(st.integers(1, 8))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    scale = draw(st.sampled_from([0.125, 0.3, 1.0, dh**-0.5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((nq, nk)) < density
    if draw(st.booleans()):
        mask[rng.integers(nq)] = False  # a row that sees no key
    m_in = rng.standard_normal((nq, num_heads)) * 3.0
    m_in[rng.random((nq, num_heads)) < 0.4] = -np.inf  # fresh rows
    m_in[rng.random((nq, num_heads)) < 0.1] = 800.0  # exp(s − m_out) underflows to 0
    inputs = {
        "q": rng.standard_normal((nq, num_heads, dh)).astype(np.float32),
        "k": rng.standard_normal((nk, num_kv_heads, dh)).astype(np.float32),
        "v": rng.standard_normal((nk, num_kv_heads, dh)).astype(np.float32),
        "mask": mask,
        "m_in": m_in,
    }
    return inputs, float(scale)
