"""The numpy reference against first principles: brute-force nearest codes, naive softmax, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from ops_cases import CI, F64_TOL, attention_inputs, vq_inputs

from vqinc.ops import reference


def _true_distances(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """‖x − c_k‖² in float64: (n, h, K)."""
    diff = x.astype(np.float64)[:, :, None, :] - codebook.astype(np.float64)[None]
    return np.sum(diff * diff, axis=-1)


@CI
@given(vq_inputs())
def test_encode_is_nearest_code(case: dict[str, np.ndarray]) -> None:
    x, codebook = case["x"], case["codebook"]
    codes = reference.vq_encode(x, codebook)
    assert codes.dtype == np.int64 and codes.shape == x.shape[:2]
    dist = _true_distances(x, codebook)
    chosen = np.take_along_axis(dist, codes[..., None], axis=-1)[..., 0]
    # Chosen distance equals the minimum up to float32 rounding of the scores.
    np.testing.assert_allclose(chosen, dist.min(axis=-1), rtol=1e-5, atol=1e-5)


@CI
@given(vq_inputs())
def test_decode_of_encode_is_nearest_vector(case: dict[str, np.ndarray]) -> None:
    x, codebook = case["x"], case["codebook"]
    decoded = reference.vq_decode(reference.vq_encode(x, codebook), codebook)
    assert decoded.dtype == np.float32 and decoded.shape == x.shape
    err = np.sum((x.astype(np.float64) - decoded) ** 2, axis=-1)  # (n, h)
    assert np.all(err <= _true_distances(x, codebook).min(axis=-1) + 1e-5)


def test_ties_go_to_first_index() -> None:
    # Small integers: every float32 product and sum is exact, so the tie is exact too.
    codebook = np.array([[[1, 0], [0, 1], [1, 0], [0, 1]]], dtype=np.float32)  # (1, 4, 2)
    x = np.array([[[1, 1]], [[0, 1]], [[2, 0]], [[0, 0]]], dtype=np.float32)  # (4, 1, 2)
    np.testing.assert_array_equal(reference.vq_encode(x, codebook), [[0], [1], [0], [0]])
    codes, margin = reference.vq_encode_margin(x, codebook)
    np.testing.assert_array_equal(codes, [[0], [1], [0], [0]])
    np.testing.assert_array_equal(margin, 0.0)  # a duplicate code is always at distance d1


@CI
@given(vq_inputs())
def test_margin_guarantee(case: dict[str, np.ndarray]) -> None:
    """Moving x by less than its margin (in any direction) keeps its code."""
    x, codebook = case["x"], case["codebook"]
    codes, margin = reference.vq_encode_margin(x, codebook)
    np.testing.assert_array_equal(codes, reference.vq_encode(x, codebook))
    assert margin.dtype == np.float32 and np.all(margin >= 0)
    d = np.sqrt(np.sort(_true_distances(x, codebook), axis=-1))
    if codebook.shape[1] == 1:
        assert np.all(np.isinf(margin))
        return
    np.testing.assert_allclose(margin, (d[..., 1] - d[..., 0]) / 2, rtol=1e-4, atol=1e-4)
    rng = np.random.default_rng(0)
    # Margins below float32 resolution of the distances carry no guarantee: do not move those rows.
    step = np.where(margin > 1e-3, 0.95 * margin, 0.0)[..., None]  # (n, h, 1)
    for _ in range(8):
        u = rng.standard_normal(x.shape)
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        moved = (x + step * u).astype(np.float32)
        np.testing.assert_array_equal(reference.vq_encode(moved, codebook), codes)


def test_margin_is_tight_on_a_line() -> None:
    codebook = np.array([[[0.0], [2.0]]], dtype=np.float32)  # (1, 2, 1)
    x = np.array([[[0.5]]], dtype=np.float32)
    codes, margin = reference.vq_encode_margin(x, codebook)
    assert codes[0, 0] == 0 and margin[0, 0] == pytest.approx(0.5)
    assert reference.vq_encode(x + np.float32(0.49), codebook)[0, 0] == 0
    assert reference.vq_encode(x + np.float32(0.51), codebook)[0, 0] == 1


def test_decode_rejects_out_of_range_codes() -> None:
    codebook = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        reference.vq_decode(np.array([[0, 3]]), codebook)


def _naive_attention(q, k, v, mask, m_in, scale):
    """Per query and head with Python loops, the textbook way."""
    nq, num_heads, dh = q.shape
    group = num_heads // k.shape[1]
    m_out, den, num = (
        np.array(m_in, dtype=np.float64),
        np.zeros((nq, num_heads)),
        np.zeros((nq, num_heads, dh)),
    )
    scale = float(np.float32(scale))
    for i in range(nq):
        for h in range(num_heads):
            visible = np.flatnonzero(mask[i])
            if visible.size == 0:
                continue
            kh = k[visible, h // group].astype(np.float64)
            s = scale * (kh @ q[i, h].astype(np.float64))
            m_out[i, h] = max(m_in[i, h], s.max())
            p = np.exp(s - m_out[i, h])
            den[i, h] = p.sum()
            num[i, h] = p @ v[visible, h // group].astype(np.float64)
    return m_out, den, num


@CI
@given(attention_inputs())
def test_attention_matches_naive_loops(case: tuple[dict[str, np.ndarray], float]) -> None:
    inputs, scale = case
    got = reference.attention_partial(**inputs, scale=scale)
    want = _naive_attention(**inputs, scale=scale)
    for name, g, w in zip(("m_out", "den", "num"), got, want, strict=True):
        assert g.dtype == np.float64 and g.shape == w.shape, name
        assert not np.isnan(g).any(), name
        np.testing.assert_allclose(g, w, **F64_TOL, err_msg=name)


@CI
@given(attention_inputs())
def test_attention_fresh_full_row_is_softmax(case: tuple[dict[str, np.ndarray], float]) -> None:
    inputs, scale = case
    inputs["mask"][:] = True
    inputs["m_in"][:] = -np.inf
    m_out, den, num = reference.attention_partial(**inputs, scale=scale)
    _, num_heads, _ = inputs["q"].shape
    k = np.repeat(inputs["k"].astype(np.float64), num_heads // inputs["k"].shape[1], axis=1)
    v = np.repeat(inputs["v"].astype(np.float64), num_heads // inputs["v"].shape[1], axis=1)
    s = float(np.float32(scale)) * np.einsum("qhd,khd->qhk", inputs["q"].astype(np.float64), k)
    probs = np.exp(s - s.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(m_out, s.max(axis=-1), **F64_TOL)
    np.testing.assert_allclose(num / den[..., None], np.einsum("qhk,khd->qhd", probs, v), **F64_TOL)


@CI
@given(attention_inputs())
def test_attention_steps_merge_to_one_step(case: tuple[dict[str, np.ndarray], float]) -> None:
    """Two steps over a split of the keys, merged with the running-max rule, equal one step."""
    inputs, scale = case
    nk = inputs["k"].shape[0]
    if nk < 2:
        return
    cut = nk // 2
    first = {**inputs, "k": inputs["k"][:cut], "v": inputs["v"][:cut], "mask": inputs["mask"][:, :cut]}
    m1, den1, num1 = reference.attention_partial(**first, scale=scale)
    second = {
        "q": inputs["q"],
        "k": inputs["k"][cut:],
        "v": inputs["v"][cut:],
        "mask": inputs["mask"][:, cut:],
    }
    m2, den2, num2 = reference.attention_partial(**second, m_in=m1, scale=scale)
    with np.errstate(invalid="ignore"):
        rescale = np.where(np.isneginf(m1), 0.0, np.exp(m1 - m2))  # m1 = m2 = -inf: nothing to rescale
    m, den, num = reference.attention_partial(**inputs, scale=scale)
    np.testing.assert_array_equal(m2, m)
    np.testing.assert_allclose(den1 * rescale + den2, den, **F64_TOL)
    np.testing.assert_allclose(num1 * rescale[..., None] + num2, num, **F64_TOL)


def test_attention_fully_masked_rows() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((3, 4, 5)).astype(np.float32)
    k = rng.standard_normal((2, 2, 5)).astype(np.float32)
    m_in = np.array([[-np.inf] * 4, [0.5] * 4, [-np.inf, 1.0, -2.0, -np.inf]])
    m_out, den, num = reference.attention_partial(q, k, k, np.zeros((3, 2), dtype=bool), m_in, 0.5)
    np.testing.assert_array_equal(m_out, m_in)
    np.testing.assert_array_equal(den, 0.0)
    np.testing.assert_array_equal(num, 0.0)


def test_attention_rejects_bad_gqa() -> None:
    q = np.zeros((1, 3, 4), dtype=np.float32)
    k = np.zeros((1, 2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        reference.attention_partial(q, k, k, np.ones((1, 1), bool), np.zeros((1, 3)), 1.0)
