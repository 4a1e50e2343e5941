"""The model directory's `manifest.json`: the dataclasses the exporter writes and the runtime reads,
and their validation at load (clear errors naming the file and the problem; never an ORT crash later).

Owns: the JSON format (version 2), the fingerprint of config + weights, the per-file byte counts and
sha256 digests, and checks that every graph the stage table needs is listed with the table's I/O
names. It does not open graphs (the executor checks their real inputs, outputs and shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from vqinc.runtime.format.spec import ConfigError, ModelSpec
from vqinc.runtime.format.stages import STAGES, Stage

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_JSON_DEPTH = 32


class ModelDirError(ValueError):
    """A model directory is missing a file, has a corrupt one, or does not match its manifest."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph: its file (a `%d` template for per-layer graphs), I/O names and cost."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    macs_per_row: int
    macs_per_pair: int = 0
    """Attention stages: multiply-accumulates per visible (query, key) pair."""

    def path(self, root: Path, layer_idx: int | None = None) -> Path:
        return root / (self.file % layer_idx if layer_idx is not None else self.file)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Scores:
    """A model's test scores, as training recorded them."""

    accuracy: float | None = None
    macro_f1: float | None = None


@dataclass(frozen=True)
class Provenance:
    """Typed view of `info`, manifest.json's free-form provenance (training and export write it; a hand
    edit may break any field, so a field of the wrong type reads as None and nothing else fails)."""

    dataset: str | None = None
    teacher: Scores | None = None
    student: Scores | None = None
    decoder_attention: str | None = None
    """Attention of the optional past-KV decoder graph ("gqa", "plain", ...)."""

    @classmethod
    def from_info(cls, info: Any) -> Provenance:
        info = info if isinstance(info, dict) else {}

        def text(v: Any) -> str | None:
            return str(v)[:200] if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None

        def number(v: Any) -> float | None:
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        def scores(v: Any) -> Scores | None:
            return Scores(number(v.get("accuracy")), number(v.get("macro_f1"))) if isinstance(v, dict) else None

        decoder = info.get("decoder")
        return cls(text(info.get("dataset")), scores(info.get("teacher")), scores(info.get("student")),
                   text(decoder.get("attention")) if isinstance(decoder, dict) else None)


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: dict[str, Any]
    """ModelConfig as written by the exporter (arch, vq, positions, pooling, labels)."""
    weights_sha256: str
    fingerprint: str
    graphs: dict[str, GraphSpec]
    """Stage name (see `stages.STAGES`) -> graph."""
    tokenizer: str = "tokenizer.json"
    codebooks: str = "codebooks.npy"
    """Every layer's VQ codebook (L, H, K, dh) float32, the same values the graphs hold (the runtime
    needs them for code margins and cannot read ONNX initializers without the onnx package)."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    """Every file of the directory the manifest refers to, with its size and sha256."""
    info: dict[str, Any] = field(default_factory=dict)
    decoder_graph: GraphSpec | None = None
    """Optional standard past-KV decoder (`vqinc export --decoder`), the `prefix_kv` baseline; not a stage of
    the incremental engine. Its per-layer I/O names are `%d` templates."""

    @cached_property
    def spec(self) -> ModelSpec:
        """`model` parsed and validated, once (load_manifest parses it first, with the file's name on errors)."""
        return ModelSpec.from_dict(self.model)

    @cached_property
    def provenance(self) -> Provenance:
        """`info`, typed."""
        return Provenance.from_info(self.info)

    @property
    def full_graph(self) -> GraphSpec | None:
        return self.graphs.get("full")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def fingerprint(model_cfg: dict[str, Any], weights_sha256: str) -> str:
    """Hash of everything that changes the graphs: model config + weights."""
    blob = json.dumps({"model": model_cfg, "weights": weights_sha256}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def graph_files(m: Manifest, spec: ModelSpec | None = None) -> list[str]:
    """Every graph file the manifest refers to (per-layer templates expanded), in stage-table order."""
    spec = spec or m.spec
    files = []
    for name, g in m.graphs.items():
        layers = STAGES[name].layer_indices(spec.num_layers)
        files += [g.file] if layers is None else [g.file % i for i in layers]
    if m.decoder_graph is not None:
        files.append(m.decoder_graph.file)
    return files


def load_manifest(model_dir: str | Path, check_hashes: bool = True) -> Manifest:
    """Parse and validate manifest.json; every referenced file must exist with its recorded size and
    (with `check_hashes`) sha256."""
    root = Path(model_dir)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise ModelDirError(f"model directory {root} {what}")
    path = root / MANIFEST
    raw = _read_json(path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{path}: format_version {version!r} is not supported (this vqinc reads "
                            f"{FORMAT_VERSION}); re-export the model with `vqinc export`")
    for key, kind in (("model", dict), ("weights_sha256", str), ("fingerprint", str), ("graphs", dict),
                      ("files", dict)):
        if not isinstance(raw.get(key), kind):
            raise ModelDirError(f"{path}: {key!r} must be a JSON {'object' if kind is dict else 'string'}, "
                                f"got {type(raw.get(key)).__name__ if key in raw else 'nothing'}")
    try:
        spec = ModelSpec.from_dict(raw["model"])
    except ConfigError as e:
        raise ModelDirError(f"{path}: model config: {e}") from None
    expected = fingerprint(raw["model"], raw["weights_sha256"])
    if raw["fingerprint"] != expected:
        raise ModelDirError(f"{path}: fingerprint {raw['fingerprint']!r} does not match its config and weights "
                            f"({expected}): the manifest was edited or mixed with another export")
    graphs = {name: _graph_spec(path, name, g) for name, g in raw["graphs"].items()}
    missing = [name for name, st in STAGES.items() if not st.optional and st.needed(spec) and name not in graphs]
    if missing:
        raise ModelDirError(f"{path}: graphs {missing} missing; present: {sorted(graphs)}")
    tokenizer, codebooks = raw.get("tokenizer", "tokenizer.json"), raw.get("codebooks", "codebooks.npy")
    for key, v in (("tokenizer", tokenizer), ("codebooks", codebooks)):
        if not isinstance(v, str) or not v:
            raise ModelDirError(f"{path}: {key!r} must be a file name, got {v!r}")
    files = {rel: _file_entry(path, rel, e) for rel, e in raw["files"].items()}
    info = raw.get("info", {})
    decoder = _decoder_spec(path, raw["decoder_graph"]) if raw.get("decoder_graph") is not None else None
    m = Manifest(format_version=version, model=raw["model"], weights_sha256=raw["weights_sha256"],
                 fingerprint=raw["fingerprint"], graphs=graphs, tokenizer=tokenizer, codebooks=codebooks, files=files,
                 info=info if isinstance(info, dict) else {}, decoder_graph=decoder)
    for rel in [*graph_files(m, spec), tokenizer, codebooks]:
        if rel not in files:
            raise ModelDirError(f"{path}: 'files' has no entry for {rel} (size and sha256)")
    for rel, entry in files.items():
        _check_file(root, rel, entry, check_hashes)
    return m


# -- internals ---------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    root = path.parent
    if path.is_symlink():  # as for every other model file: what loads is what the directory holds
        raise ModelDirError(f"{path}: a symbolic link; the manifest must be a regular file in the model directory")
    if not path.is_file():
        raise ModelDirError(f"{path}: missing (is {root} a vqinc model directory? create one with `vqinc export`)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ModelDirError(f"{path}: {path.stat().st_size} bytes, more than a manifest can be "
                                f"({MAX_MANIFEST_BYTES})")
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    except (RecursionError, ValueError) as e:  # ValueError: NaN/Infinity; RecursionError: absurd nesting
        raise ModelDirError(f"{path}: not a valid manifest ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(raw, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if _depth(raw) > MAX_JSON_DEPTH:
        raise ModelDirError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels: not a manifest")
    return raw


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in a manifest")


def _depth(v: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(v, dict):
        return max((_depth(x, level + 1) for x in v.values()), default=level + 1)
    if isinstance(v, list):
        return max((_depth(x, level + 1) for x in v), default=level + 1)
    return level


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 62)


def _graph_spec(path: Path, name: str, g: Any) -> GraphSpec:
    stage: Stage | None = STAGES.get(name)
    if stage is None:
        raise ModelDirError(f"{path}: unknown graph {name!r}; stages are {sorted(STAGES)}")
    if not isinstance(g, dict):
        raise ModelDirError(f"{path}: graph {name!r} must be an object, got {type(g).__name__}")
    file, inputs, outputs = g.get("file"), g.get("inputs"), g.get("outputs")
    if not isinstance(file, str) or not file:
        raise ModelDirError(f"{path}: graph {name!r} has no file name")
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise ModelDirError(f"{MANIFEST}: graph {name!r} file {file!r} escapes the model directory")
    per_layer = stage.span != "global"
    if per_layer != ("%d" in file) or file.count("%") != int(per_layer):
        want = "one '%d' for the layer index" if per_layer else "no '%' template"
        raise ModelDirError(f"{path}: graph {name!r} file {file!r} must have {want}")
    for what, names, want in (("inputs", inputs, stage.inputs), ("outputs", outputs, stage.outputs)):
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise ModelDirError(f"{path}: graph {name!r} {what} must be a list of names")
        if what == "outputs" and tuple(names) != want or what == "inputs" and not set(names) <= set(want):
            raise ModelDirError(f"{path}: graph {name!r} {what} {names} do not match the stage table {list(want)}")
    macs = g.get("macs_per_row"), g.get("macs_per_pair", 0)
    if not all(_nonneg_int(v) for v in macs):
        raise ModelDirError(f"{path}: graph {name!r} multiply-accumulate counts {macs} must be integers >= 0")
    return GraphSpec(file, tuple(inputs), tuple(outputs), *macs)


def _decoder_spec(path: Path, g: Any) -> GraphSpec:
    if not isinstance(g, dict) or not isinstance(g.get("file"), str) or "%" in g["file"] or not g["file"]:
        raise ModelDirError(f"{path}: decoder_graph must be an object with a plain file name, got {g!r}"[:300])
    if Path(g["file"]).is_absolute() or ".." in Path(g["file"]).parts:
        raise ModelDirError(f"{MANIFEST}: decoder_graph file {g['file']!r} escapes the model directory")
    names = (g.get("inputs"), g.get("outputs"))
    if not all(isinstance(x, list) and all(isinstance(n, str) for n in x) for x in names):
        raise ModelDirError(f"{path}: decoder_graph inputs and outputs must be lists of names")
    macs = g.get("macs_per_row", 0)
    if not _nonneg_int(macs):
        raise ModelDirError(f"{path}: decoder_graph macs_per_row must be an integer >= 0, got {macs!r}")
    return GraphSpec(g["file"], tuple(g["inputs"]), tuple(g["outputs"]), macs)


def _file_entry(path: Path, rel: Any, e: Any) -> FileEntry:
    if not isinstance(e, dict) or not _nonneg_int(e.get("bytes")) or not isinstance(e.get("sha256"), str) \
            or len(e["sha256"]) != 64:
        raise ModelDirError(f"{path}: files[{rel!r}] must be {{'bytes': int, 'sha256': 64 hex digits}}, "
                            f"got {e!r}"[:300])
    return FileEntry(e["bytes"], e["sha256"])


def _check_file(root: Path, rel: str, entry: FileEntry, check_hash: bool) -> None:
    p = root / rel
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelDirError(f"{MANIFEST}: file path {rel!r} escapes the model directory {root}")
    try:
        if p.is_symlink():
            raise ModelDirError(f"{root}: {rel} is a symbolic link; model files must be regular files")
        if not p.is_file():
            raise ModelDirError(f"{root}: {rel} is " + ("not a regular file" if p.exists() else "missing"))
        if not _inside(root, p):  # a symbolic link higher up (a linked folder)
            raise ModelDirError(f"{root}: {rel} leads outside the model directory through a symbolic link")
        size = p.stat().st_size
    except OSError as e:  # a permission problem, a name the file system refuses
        raise ModelDirError(f"{root}: {rel} cannot be read ({e.strerror or e})") from None
    if size != entry.bytes:
        raise ModelDirError(f"{root}: {rel} is {size} bytes but the manifest records {entry.bytes} "
                            "(truncated or replaced file)")
    if check_hash and file_sha256(p) != entry.sha256:
        raise ModelDirError(f"{root}: {rel} does not match its sha256 in the manifest (corrupt or replaced file)")



def _inside(root: Path, p: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(p)]) == real_root
