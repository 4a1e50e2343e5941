"""Shared fixtures for the ops tests: ORT sessions of the single-op models, cached per op."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from vqinc.ops.functions import make_op_model

OpRunner = Callable[..., list[np.ndarray]]


def _session(model_bytes: bytes, optimize: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # Compare the function bodies as written, not what ORT's fusions make of them.
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def run_op() -> OpRunner:
    """`run_op(op_name, inputs: dict, optimize=False) -> outputs`, sessions cached per op."""
    cache: dict[tuple, ort.InferenceSession] = {}

    def run(op_name: str, inputs: dict[str, np.ndarray], optimize: bool = False) -> list:
        assert all(a.shape[0] > 0 for a in inputs.values()), "never run ORT on 0 rows (ops/README.md)"
        key = (op_name, optimize)
        if key not in cache:
            cache[key] = _session(make_op_model(op_name).SerializeToString(), optimize)
        return cache[key].run(None, inputs)

    return run
