"""ONNX Runtime set-up: session options by row count, and `Graph`, a stage's sessions checked against the
stage table when they are loaded.

Why two sessions per graph: an edit runs ~10 graphs on 1-10 rows each, where a thread pool only costs
(threads woken, spinning against numpy and other processes: on a busy 2-core machine a 1-row call
took 0.24 ms in the engine against 42 us alone). Calls of fewer than `BULK_ROWS` rows therefore run
in a one-thread session that never spins; larger calls (a build, a paste, a dense layer) in a second
session with `threads` intra-op threads, also without spinning, created on first use. Both sessions
run the same graph with the same optimisations, so a row's result does not depend on which ran it
(the engine's exactness never relied on it anyway: every code is proven by bounds, numerics.py).
`Graph.run` refuses zero-row inputs: ORT <= 1.31.1 dies with SIGFPE on a size-0 batch through
Transpose+MatMul.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vqinc.runtime.format.manifest import GraphSpec, ModelDirError
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.format.stages import DIM_FIELDS, DYNAMIC, Stage, dim_sizes
from vqinc.runtime.ort.blas import limit_blas_threads
from vqinc.runtime.ort.providers import check_session

MAX_THREADS = 256
BULK_ROWS = 64
"""Calls with at least this many rows run in the multi-threaded session."""


def check_threads(threads: object) -> int:
    """The bulk sessions' intra-op thread count: `threads`, or every core when None."""
    if threads is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    return threads


def session_options(threads: int = 1, optimize: bool = True) -> ort.SessionOptions:
    """Options of a session with its own pool of `threads` intra-op threads that never spin."""
    limit_blas_threads(1)  # numpy's BLAS runs beside ORT: one thread, or both slow down badly
    so = ort.SessionOptions()
    so.intra_op_num_threads = check_threads(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return so


def row_axis(stage: Stage) -> tuple[str, int] | None:
    """(input, axis) whose size is the call's row count (R or B in the stage's dims), if any."""
    for name, dims in stage.dims:
        if name in stage.inputs:
            for axis, sym in enumerate(dims):
                if sym in ("R", "B"):
                    return name, axis
    return None


class Graph:
    """One session plus the names it was exported with; feeds only the inputs the graph kept."""

    def __init__(self, path: Path, spec: GraphSpec, stage: Stage, model: ModelSpec, providers: list,
                 threads: int | None = None):
        self.path, self.providers, self.threads = path, providers, check_threads(threads)
        self.session = self._open(1)
        self._bulk: ort.InferenceSession | None = None
        self._rows = row_axis(stage)
        self.name = path.name
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        unknown = [n for n in self.inputs if n not in spec.inputs]
        if unknown or list(self.outputs) != list(spec.outputs):
            raise ModelDirError(f"{path.parent}: {path.name} has inputs {self.inputs} / outputs {self.outputs}, "
                                f"the manifest says {list(spec.inputs)} / {list(spec.outputs)}")
        self._check_dims(path, stage, model)
        self._check_indexes(path, stage, model)

    def _check_dims(self, path: Path, stage: Stage, model: ModelSpec) -> None:
        """Static dims of the graph's tensors must be the model's sizes; row axes must be dynamic."""
        sizes, want = dim_sizes(model), dict(stage.dims)
        for t in [*self.session.get_inputs(), *self.session.get_outputs()]:
            expected = want.get(t.name)
            if expected is None or t.shape is None:
                continue
            if len(t.shape) != len(expected):
                raise ModelDirError(f"{path.parent}: {path.name}: {t.name} has {len(t.shape)} dims {t.shape}, "
                                    f"expected {len(expected)} {list(expected)}")
            for got, sym in zip(t.shape, expected, strict=True):
                if isinstance(got, int) and sym in DYNAMIC:
                    raise ModelDirError(f"{path.parent}: {path.name}: {t.name} has a fixed {sym} axis of {got}; "
                                        "re-export the model (row axes must be dynamic)")
                if isinstance(got, int) and got != sizes[sym]:
                    raise ModelDirError(f"{path.parent}: {path.name}: {t.name} has shape {t.shape} {list(expected)}, "
                                        f"but the manifest's model has {sym} = {DIM_FIELDS[sym]} = {sizes[sym]}")

    def _check_indexes(self, path: Path, stage: Stage, model: ModelSpec) -> None:
        """Tables inside the graph (embeddings) must cover the config's range: run the graph once on the largest
        index of each (two rows). A smaller table would otherwise fail at the first document that uses it."""
        if not stage.indexes or not set(self.inputs) <= {name for name, _ in stage.indexes}:
            return
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported below, as a ModelDirError
        for name, field in stage.indexes:
            if name not in self.inputs:  # e.g. positions in mode `none`: dropped at export
                continue
            top = getattr(model, field) - 1
            feeds = {n: np.array([0, top if n == name else 0], np.int64) for n in self.inputs}
            try:
                self.session.run(None, feeds, quiet)
            except Exception as e:  # ORT raises its own exception types (InvalidArgument, Fail, ...)
                why = str(e).splitlines()[0].split("Status Message: ", 1)[-1][:200]
                raise ModelDirError(f"{path.parent}: {path.name} refuses {name} = {top}, but the manifest's model "
                                    f"has arch.{field} = {top + 1}: its table is smaller ({why})") from None

    def _open(self, threads: int) -> ort.InferenceSession:
        path = self.path
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=self.providers)
        except Exception as e:  # ORT raises several exception types for bad files
            raise ModelDirError(f"{path.parent}: {path.name} cannot be loaded by ONNX Runtime: "
                                f"{str(e).splitlines()[0][:300]}") from None
        check_session(session, self.providers)
        return session

    def session_for(self, rows: int) -> ort.InferenceSession:
        """The one-thread session for small calls, the `threads`-thread one (opened on first use) for big ones."""
        if rows < BULK_ROWS or self.threads == 1:
            return self.session
        if self._bulk is None:
            self._bulk = self._open(self.threads)
        return self._bulk

    def run(self, **feeds: np.ndarray) -> list[np.ndarray]:
        for n in self.inputs:
            if feeds[n].size == 0:  # an engine bug, never user input: ORT may crash on it (see above)
                raise RuntimeError(f"{self.name}: refusing to run on an empty input {n!r} {feeds[n].shape}")
        rows = feeds[self._rows[0]].shape[self._rows[1]] if self._rows and self._rows[0] in feeds else BULK_ROWS
        return self.session_for(rows).run(self.outputs, {n: feeds[n] for n in self.inputs})
