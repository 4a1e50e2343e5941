"""Numpy ground truth for the vqinc ops (see the op table in ARCHITECTURE.md).

Owns the semantics every other implementation is tested against: the onnxscript bodies in
`functions.py`, the torch ops in `torch_ops.py`. It follows the graphs' formulas step by step
(in float32) so that codes match exactly; it is not fast.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _vq_scores(x: npt.NDArray[np.float32], codebook: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """`‖c_k‖² − 2·x·c_k` per head: (n, h, K), float32, the quantity the argmin runs over."""
    x = np.asarray(x, dtype=np.float32)
    codebook = np.asarray(codebook, dtype=np.float32)
    if x.ndim != 3 or codebook.ndim != 3 or x.shape[1:] != (codebook.shape[0], codebook.shape[2]):
        raise ValueError(f"x must be (n, h, dh) and codebook (h, K, dh); got {x.shape} and {codebook.shape}")
    dots = np.matmul(x.transpose(1, 0, 2), codebook.transpose(0, 2, 1))  # (h, n, K)
    norms = np.sum(codebook * codebook, axis=-1, dtype=np.float32)  # (h, K)
    return (norms[:, None, :] - np.float32(2) * dots).transpose(1, 0, 2)  # (n, h, K)


def vq_encode(x: npt.NDArray[np.float32], codebook: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Nearest code per head: x (n, h, dh), codebook (h, K, dh) -> codes (n, h) int64.

    Ties go to the first index (`np.argmin` semantics, like ONNX ArgMin with select_last_index=0).
    """
    return np.argmin(_vq_scores(x, codebook), axis=-1).astype(np.int64)


def vq_decode(codes: npt.NDArray[np.int64], codebook: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Gather: codes (n, h) int64, codebook (h, K, dh) -> (n, h, dh) float32."""
    codes = np.asarray(codes, dtype=np.int64)
    codebook = np.asarray(codebook, dtype=np.float32)
    if codes.ndim != 2 or codebook.ndim != 3 or codes.shape[1] != codebook.shape[0]:
        raise ValueError(
            f"codes must be (n, h) and codebook (h, K, dh); got {codes.shape} and {codebook.shape}"
        )
    if codes.size and (codes.min() < 0 or codes.max() >= codebook.shape[1]):
        raise ValueError(f"codes must lie in [0, {codebook.shape[1]}); got [{codes.min()}, {codes.max()}]")
    heads = np.arange(codebook.shape[0])[None, :]  # (1, h)
    return codebook[heads, codes]  # (n, h, dh)
