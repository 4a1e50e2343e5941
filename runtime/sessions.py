"""ONNX Runtime sessions of one model directory, all on one shared thread pool.

Many small sessions with per-session spinning pools run 5-7x slower on this class of machine
(DESIGN.md §5), so every session uses the global pool. `run` refuses zero-row inputs: ORT
<= 1.31.1 dies with SIGFPE on a size-0 batch through Transpose+MatMul.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vqinc.runtime.manifest import LAYER_STAGES, GraphSpec, Manifest, ModelDirError
from vqinc.runtime.providers import check_session, resolve_providers

_POOL: tuple[int, ...] | None = None


def ensure_thread_pool(threads: int | None = None) -> None:
    """Create ORT's global thread pool once per process (its size is fixed from then on).

    From then on every ORT session in the process must set `use_per_session_threads = False`
    (ORT refuses others): use `session_options()` for sessions of your own."""
    global _POOL
    if _POOL is not None:
        return
    intra = threads or max(1, os.cpu_count() or 1)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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

    def __init__(self, path: Path, spec: GraphSpec, providers: list[str], so: ort.SessionOptions):
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises several exception types for bad files
            raise ModelDirError(f"{path.parent}: {path.name} cannot be loaded by ONNX Runtime: "
                                f"{str(e).splitlines()[0][:300]}") from e
        check_session(self.session, providers)
        self.name = path.name
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        unknown = [n for n in self.inputs if n not in spec.inputs]
        if unknown or list(self.outputs) != list(spec.outputs):
            raise ModelDirError(f"{path.parent}: {path.name} has inputs {self.inputs} / outputs {self.outputs}, "
                                f"the manifest says {list(spec.inputs)} / {list(spec.outputs)}")

    def run(self, **feeds: np.ndarray) -> list[np.ndarray]:
        first = feeds[self.inputs[0]]
        assert first.shape[0] > 0, f"{self.name}: refusing a zero-row run"
        return self.session.run(None, {n: feeds[n] for n in self.inputs})


class Sessions:
    """All graphs of a model directory: `embed`, `attention`, `final`, `head`, and per layer
    `qkv[l]`, `encode[l]`, `post[l]`; `full` (the monolithic graph) loads on first use."""

    def __init__(self, root: Path, manifest: Manifest, providers: list[str] | None = None,
                 threads: int | None = None):
        ensure_thread_pool(threads)
        self.root, self.manifest = root, manifest
        self.providers = resolve_providers(providers)
        self._so = session_options()
        g = manifest.graphs
        self.embed = self._load(g["embed"])
        self.attention = self._load(g["attention"])
        self.final = self._load(g["final"])
        self.head = self._load(g["head"])
        per_layer = {s: [self._load(g[s], i) for i in range(manifest.num_layers)] for s in LAYER_STAGES}
        self.qkv, self.encode, self.post = per_layer["qkv"], per_layer["encode"], per_layer["post"]
        self._full: Graph | None = None

    def _load(self, spec: GraphSpec, layer_idx: int | None = None) -> Graph:
        return Graph(spec.path(self.root, layer_idx), spec, self.providers, self._so)

    @property
    def full(self) -> Graph:
        if self._full is None:
            if self.manifest.full_graph is None:
                raise ModelDirError(f"{self.root}: exported without the monolithic graph (full.onnx)")
            self._full = self._load(self.manifest.full_graph)
        return self._full
