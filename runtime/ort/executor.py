"""`Executor`: the only code that runs graphs. It holds one session per graph of the stage table and
runs a stage (of a layer) on named numpy feeds.

Sessions of optional stages (full.onnx) load on first use. `calls` counts the runs (EditStats reports
the graph calls of each edit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqinc.runtime.format.manifest import Manifest, ModelDirError
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.format.stages import STAGES
from vqinc.runtime.ort.providers import resolve_providers
from vqinc.runtime.ort.sessions import Graph, check_threads


class Executor:
    """Sessions of one model directory (sessions.py: a one-thread session per graph, a bulk one for big calls)."""

    def __init__(self, root: Path, manifest: Manifest, spec: ModelSpec, providers: list | None = None,
                 threads: int | None = None):
        self.providers = resolve_providers(providers)  # before any session: clear errors, one warning
        self.threads = check_threads(threads)
        self.root, self.manifest, self.spec = root, manifest, spec
        self._graphs: dict[tuple[str, int | None], Graph] = {}
        self.calls = 0
        """Graph runs so far (for stats and tests)."""
        for name, stage in STAGES.items():
            if stage.optional or name not in manifest.graphs:
                continue
            layers = stage.layer_indices(spec.num_layers)
            for layer in [None] if layers is None else layers:
                self._graphs[name, layer] = self._load(name, layer)

    def _load(self, name: str, layer: int | None) -> Graph:
        g = self.manifest.graphs[name]
        return Graph(g.path(self.root, layer), g, STAGES[name], self.spec, self.providers, self.threads)

    def providers_in_use(self) -> list[str]:
        return next(iter(self._graphs.values())).session.get_providers()

    def run(self, name: str, layer: int | None = None, **feeds: np.ndarray) -> list[np.ndarray]:
        """Run stage `name` (of `layer` for per-layer stages) on `feeds`; outputs in the table's order."""
        graph = self._graphs.get((name, layer))
        if graph is None:
            if name not in self.manifest.graphs:
                raise ModelDirError(f"{self.root}: the model has no {name!r} graph "
                                    f"({STAGES[name].file % layer if layer is not None else STAGES[name].file})")
            graph = self._graphs[name, layer] = self._load(name, layer)
        self.calls += 1
        return graph.run(**feeds)
