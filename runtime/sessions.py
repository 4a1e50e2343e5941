"""ONNX Runtime set-up: one shared thread pool per process, session options, and `Graph`, a session
checked against the stage table when it is loaded.

Many small sessions with per-session spinning pools run 5-7x slower on this class of machine
(DESIGN.md §5), so every session uses the global pool. `Graph.run` refuses zero-row inputs: ORT
<= 1.31.1 dies with SIGFPE on a size-0 batch through Transpose+MatMul.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vqinc.runtime.blas import limit_blas_threads
from vqinc.runtime.config import ModelSpec
from vqinc.runtime.manifest import GraphSpec, ModelDirError
from vqinc.runtime.providers import check_session
from vqinc.runtime.stages import DIM_FIELDS, DYNAMIC, Stage, dim_sizes

_POOL: tuple[int, ...] | None = None
MAX_THREADS = 256


def ensure_thread_pool(threads: int | None = None) -> None:
    """Create ORT's global thread pool once per process (its size is fixed from then on).

    From then on every ORT session in the process must set `use_per_session_threads = False`
    (ORT refuses others): use `session_options()` for sessions of your own."""
    global _POOL
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    if _POOL is not None:
        return
    intra = threads or max(1, os.cpu_count() or 1)
    limit_blas_threads(1)  # numpy's BLAS runs beside ORT's pool: one thread, or both slow down badly
    try:
        ort.set_global_thread_pool_sizes(intra, 1)
    except RuntimeError:  # already created by another library in this process: reuse it
        pass
    _POOL = (intra, 1)


def session_options(optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return so


class Graph:
    """One session plus the names it was exported with; feeds only the inputs the graph kept."""

    def __init__(self, path: Path, spec: GraphSpec, stage: Stage, model: ModelSpec, providers: list,
                 so: ort.SessionOptions):
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises several exception types for bad files
            raise ModelDirError(f"{path.parent}: {path.name} cannot be loaded by ONNX Runtime: "
                                f"{str(e).splitlines()[0][:300]}") from None
        check_session(self.session, providers)
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

    def run(self, **feeds: np.ndarray) -> list[np.ndarray]:
        for n in self.inputs:
            if feeds[n].size == 0:  # an engine bug, never user input: ORT may crash on it (see above)
                raise RuntimeError(f"{self.name}: refusing to run on an empty input {n!r} {feeds[n].shape}")
        return self.session.run(None, {n: feeds[n] for n in self.inputs})
