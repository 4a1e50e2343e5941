"""The one table of stage graphs: what each graph of a model directory computes, its file, its
inputs and outputs, for which layers it exists, and what it costs in multiply-accumulates.

The exporter writes graphs and manifest entries from this table, the manifest loader checks a
directory against it, the executor loads sessions from it and `EditStats.rows` is keyed by its
names. Graph layouts (ARCHITECTURE.md has the shapes):

  embed_qkv   ids, positions            -> x, q, k, v       token embedding, then layer 0's norm + Q/K/V
  attend[l]   q, k, v, qpos, kpos       -> o, m, den, codes full causal attention rows + VQ encode (float32)
  post[l]     x, codes, positions       -> x_out, q, k, v   layer l's decode + out-proj + MLP, then layer l+1's Q/K/V
  final       x, codes                  -> y                the last layer's decode + out-proj + MLP, final norm
  qkv[l]      x, positions              -> q, k, v          rope only: rows whose position moved
  head        pooled                    -> logits           one row per document
  refine      q, k, v, qpos, kpos       -> o, m, den        the same rows in float64: rows float32 cannot decide
  full        ids, positions            -> logits, codes    the monolithic model (baselines, verification)
"""

from __future__ import annotations

from dataclasses import dataclass

from vqinc.runtime.format.spec import ModelSpec


@dataclass(frozen=True)
class Stage:
    """One kind of graph in a model directory."""

    name: str
    file: str
    """File name; a `%d` template for per-layer stages."""
    span: str
    """"global" (one graph), "layers" (one per layer) or "layers_but_last" (layers 0 .. L-2)."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dims: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Shape of each input and output in symbols: R, C, B are dynamic (rows, key slots, documents);
    d, H, Hkv, dh, K, L, labels are the model's sizes (checked against the graphs at load)."""
    optional: bool = False
    """May be absent from a model directory (loaded on first use)."""
    indexes: tuple[tuple[str, str], ...] = ()
    """Integer inputs that index a table inside the graph (an embedding), each with the `ModelSpec` field
    that bounds it: the graph must accept every value below that field (checked at load; the tables are
    initializers, invisible in the graph's I/O shapes)."""

    def layer_indices(self, num_layers: int) -> range | None:
        """The layers this stage has a graph for; None for a global stage."""
        if self.span == "global":
            return None
        return range(num_layers if self.span == "layers" else num_layers - 1)

    def needed(self, spec: ModelSpec) -> bool:
        """Does a model with this configuration have (and need) this graph?"""
        if self.name == "qkv":
            return spec.positions == "rope"
        return True


_ROWS = (("q", ("R", "H", "dh")), ("k", ("R", "Hkv", "dh")), ("v", ("R", "Hkv", "dh")))
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("embed_qkv", "embed_qkv.onnx", "global", ("ids", "positions"), ("x", "q", "k", "v"),
          (("ids", ("R",)), ("positions", ("R",)), ("x", ("R", "d")), *_ROWS),
          indexes=(("ids", "vocab_size"), ("positions", "max_positions"))),
    Stage("attend", "layers.%d.attend.onnx", "layers", ("q", "k", "v", "qpos", "kpos"), ("o", "m", "den", "codes"),
          (("q", ("H", "R", "dh")), ("k", ("Hkv", "C", "dh")), ("v", ("Hkv", "C", "dh")), ("qpos", ("R",)),
           ("kpos", ("C",)), ("o", ("H", "R", "dh")), ("m", ("H", "R")), ("den", ("H", "R")), ("codes", ("R", "H")))),
    Stage("post", "layers.%d.post.onnx", "layers_but_last", ("x", "codes", "positions"), ("x_out", "q", "k", "v"),
          (("x", ("R", "d")), ("codes", ("R", "H")), ("positions", ("R",)), ("x_out", ("R", "d")), *_ROWS)),
    Stage("final", "final.onnx", "global", ("x", "codes"), ("y",),
          (("x", ("R", "d")), ("codes", ("R", "H")), ("y", ("R", "d")))),
    Stage("qkv", "layers.%d.qkv.onnx", "layers", ("x", "positions"), ("q", "k", "v"),
          (("x", ("R", "d")), ("positions", ("R",)), *_ROWS)),
    Stage("head", "head.onnx", "global", ("pooled",), ("logits",),
          (("pooled", ("B", "d")), ("logits", ("B", "labels")))),
    Stage("refine", "refine.onnx", "global", ("q", "k", "v", "qpos", "kpos"), ("o", "m", "den"),
          (("q", ("H", "R", "dh")), ("k", ("Hkv", "C", "dh")), ("v", ("Hkv", "C", "dh")), ("qpos", ("R",)),
           ("kpos", ("C",)), ("o", ("H", "R", "dh")), ("m", ("H", "R")), ("den", ("H", "R")))),
    Stage("full", "full.onnx", "global", ("ids", "positions"), ("logits", "codes"),
          (("ids", ("R",)), ("positions", ("R",)), ("logits", ("one", "labels")), ("codes", ("L", "R", "H"))),
          optional=True,
          indexes=(("ids", "vocab_size"),)),
)}
"""Every stage, by name."""

INCREMENTAL_ROWS = ("embed_qkv", "lazy", "rescore", "attend", "refine", "post")
"""Keys of `EditStats.rows`: rows per layer that went through each step ("lazy": queries whose
attention state was updated without recomputing the row; "rescore": of those, rows whose updated output
proved a new code)."""


DYNAMIC = ("R", "C", "B")


DIM_FIELDS = {"d": "arch.d_model", "H": "arch.num_heads", "Hkv": "arch.num_kv_heads",
              "dh": "arch.d_model / arch.num_heads", "K": "vq.num_codes", "L": "arch.num_layers",
              "labels": "the number of labels", "one": "one row"}
"""Where each static symbol of `Stage.dims` comes from in manifest.json's model config (for error messages)."""


def dim_sizes(spec: ModelSpec) -> dict[str, int]:
    """The static symbols of `Stage.dims` for one model."""
    return {"d": spec.d_model, "H": spec.num_heads, "Hkv": spec.num_kv_heads, "dh": spec.head_dim,
            "K": spec.num_codes, "L": spec.num_layers, "labels": spec.num_labels, "one": 1}


@dataclass(frozen=True)
class Macs:
    """Multiply-accumulates of one stage: per row, plus per visible (query, key) pair for attention."""

    per_row: int
    per_pair: int = 0


def stage_macs(spec: ModelSpec) -> dict[str, Macs]:
    """Multiply-accumulates of every stage (norms, softmax and gathers are not counted)."""
    d, dh, h, hkv = spec.d_model, spec.head_dim, spec.num_heads, spec.num_kv_heads
    qkv = d * (h + 2 * hkv) * dh
    mlp = (3 if spec.family == "llama" else 2) * d * spec.d_ff
    residual = spec.num_codes * d if spec.residual_vq else 0
    post = d * d + mlp + residual
    encode = spec.num_codes * d
    pair = 2 * h * dh
    return {
        "embed_qkv": Macs(qkv),
        "attend": Macs(encode, pair),
        "post": Macs(post + qkv),
        "final": Macs(post),
        "qkv": Macs(qkv),
        "head": Macs(d * spec.num_labels),
        "refine": Macs(0, pair),
        "full": Macs(0),
    }


def token_macs(spec: ModelSpec) -> int:
    """Position-wise multiply-accumulates of one token through every layer (attention pairs not included)."""
    m = stage_macs(spec)
    return spec.num_layers * (m["embed_qkv"].per_row + m["attend"].per_row + m["final"].per_row)


def savings(full: int, macs: int) -> float:
    """How many times fewer multiply-accumulates than a full pass (`full`): the "ops saved" figure."""
    return full / max(macs, 1)


def suffix_macs(spec: ModelSpec, n: int, start: int = 0) -> int:
    """Multiply-accumulates of computing rows start .. n-1 of a document of n rows (BOS included) against
    the cached keys of the rows before them: what a prefix-KV cache does after an edit at `start`."""
    m = stage_macs(spec)
    per_row = token_macs(spec)
    pairs = spec.num_layers * (n * (n + 1) // 2 - start * (start + 1) // 2)
    return (n - start) * per_row + pairs * m["attend"].per_pair + m["head"].per_row


def full_macs(spec: ModelSpec, n: int) -> int:
    """Multiply-accumulates of computing a document of n rows (BOS included) from scratch."""
    return suffix_macs(spec, n, 0)
