"""The numpy reference against first principles: brute-force nearest codes, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from ops_cases import CI, vq_inputs

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


def test_decode_rejects_out_of_range_codes() -> None:
    codebook = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        reference.vq_decode(np.array([[0, 3]]), codebook)
