"""The model directory's `manifest.json`: dataclasses shared by the exporter and the runtime, and
their validation at load (clear errors naming the file and the problem; never an ORT crash later).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LAYER_STAGES = ("qkv", "encode", "post")
GLOBAL_STAGES = ("embed", "attention", "final", "head")


class ModelDirError(ValueError):
    """A model directory is missing a file, has a corrupt one, or does not match its manifest."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph: its file (a `%d` template for per-layer graphs), I/O names, and cost."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    macs_per_row: int
    """Multiply-accumulates per input row (attention: per visible (query, key) pair)."""

    def path(self, root: Path, layer_idx: int | None = None) -> Path:
        name = self.file % layer_idx if layer_idx is not None else self.file
        return root / name


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: dict[str, Any]
    """ModelConfig as a dict: arch, vq, positions, pooling, labels."""
    weights_sha256: str
    fingerprint: str
    graphs: dict[str, GraphSpec]
    tokenizer: str = "tokenizer.json"
    full_graph: GraphSpec | None = None
    decoder_graph: GraphSpec | None = None
    """Optional standard past-KV decoder (`vqinc export --decoder`); per-layer I/O names are `%d` templates."""
    file_sizes: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    # Derived views of the model config that the runtime uses everywhere.
    @property
    def arch(self) -> dict[str, Any]:
        return self.model["arch"]

    @property
    def num_layers(self) -> int:
        return int(self.arch["num_layers"])

    @property
    def positions(self) -> str:
        return self.model["positions"]

    @property
    def pooling(self) -> str:
        return self.model["pooling"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.model["labels"])

    @property
    def max_positions(self) -> int:
        return int(self.arch["max_positions"])

    @property
    def bos_token_id(self) -> int:
        return int(self.arch["bos_token_id"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def fingerprint(model_cfg: dict[str, Any], weights_sha256: str) -> str:
    """Hash of everything that changes the graphs: model config + weights."""
    blob = json.dumps({"model": model_cfg, "weights": weights_sha256}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _spec(d: Any, where: str) -> GraphSpec:
    try:
        return GraphSpec(file=str(d["file"]), inputs=tuple(d["inputs"]), outputs=tuple(d["outputs"]),
                         macs_per_row=int(d["macs_per_row"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{MANIFEST}: graph {where!r} is malformed ({e!r})") from e


def _inside(root: Path, rel: str, what: str) -> Path:
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise ModelDirError(f"{MANIFEST}: {what} path {rel!r} escapes the model directory {root}")
    return p


def load_manifest(model_dir: str | Path) -> Manifest:
    """Parse and validate manifest.json; checks every referenced file exists with its recorded size."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"model directory {root} does not exist or is not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{path}: missing (is {root} a vqinc model directory? create one with `vqinc export`)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {version!r} is not supported (this vqinc reads "
                            f"{FORMAT_VERSION}); re-export the model")
    for key in ("model", "weights_sha256", "fingerprint", "graphs"):
        if key not in raw:
            raise ModelDirError(f"{path}: missing key {key!r}")
    model = raw["model"]
    try:
        arch = model["arch"]
        for k in ("num_layers", "d_model", "num_heads", "num_kv_heads", "max_positions", "bos_token_id"):
            int(arch[k])
        model["positions"], model["pooling"], model["labels"]  # noqa: B018
    except (KeyError, TypeError, ValueError) as e:
        raise ModelDirError(f"{path}: model config incomplete ({e!r})") from e
    expected = fingerprint(model, raw["weights_sha256"])
    if raw["fingerprint"] != expected:
        raise ModelDirError(f"{path}: fingerprint {raw['fingerprint']} does not match its config and weights "
                            f"({expected}): the manifest was edited or mixed with another export")
    graphs = {name: _spec(g, name) for name, g in raw["graphs"].items()}
    missing = [s for s in (*GLOBAL_STAGES, *LAYER_STAGES) if s not in graphs]
    if missing:
        raise ModelDirError(f"{path}: graphs {missing} missing; present: {sorted(graphs)}")
    full = _spec(raw["full_graph"], "full_graph") if raw.get("full_graph") else None
    decoder = _spec(raw["decoder_graph"], "decoder_graph") if raw.get("decoder_graph") else None
    m = Manifest(format_version=version, model=model, weights_sha256=raw["weights_sha256"],
                 fingerprint=raw["fingerprint"], graphs=graphs, tokenizer=raw.get("tokenizer", "tokenizer.json"),
                 full_graph=full, decoder_graph=decoder, file_sizes=dict(raw.get("file_sizes", {})),
                 info=dict(raw.get("info", {})))
    for rel in graph_files(m):
        _check_file(root, rel, m.file_sizes.get(rel))
        if rel + ".data" in m.file_sizes:  # weights stored as external data beside the graph
            _check_file(root, rel + ".data", m.file_sizes[rel + ".data"])
    _check_file(root, m.tokenizer, m.file_sizes.get(m.tokenizer))
    return m


def graph_files(m: Manifest) -> list[str]:
    """Every file the manifest refers to (per-layer templates expanded)."""
    files = [m.graphs[s].file for s in GLOBAL_STAGES]
    files += [m.graphs[s].file % i for s in LAYER_STAGES for i in range(m.num_layers)]
    if m.full_graph is not None:
        files.append(m.full_graph.file)
    if m.decoder_graph is not None:
        files.append(m.decoder_graph.file)
    return files


def _check_file(root: Path, rel: str, size: int | None) -> None:
    p = _inside(root, rel, "file")
    if not p.is_file():
        raise ModelDirError(f"{root}: {rel} is missing")
    if size is not None and p.stat().st_size != size:
        raise ModelDirError(f"{root}: {rel} is {p.stat().st_size} bytes but the manifest records {size} "
                            "(truncated or replaced file)")
