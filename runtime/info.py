"""`vqinc info`: a readable summary of a model directory (no sessions are created)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vqinc.runtime.format.manifest import ModelDirError, Scores, graph_files, load_manifest
from vqinc.runtime.format.stages import STAGES, token_macs
from vqinc.runtime.ort.providers import describe_providers


def describe(model_dir: str | Path) -> str:
    root = Path(model_dir)
    m = load_manifest(root)
    s, g = m.spec, m.graphs
    per_token = token_macs(s)
    ops: Counter[str] = Counter()
    try:
        import onnx  # optional here: the runtime itself needs only onnxruntime
    except ImportError:
        onnx = None
    for rel in graph_files(m) if onnx is not None else []:
        try:
            proto = onnx.load(str(root / rel), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends: the file is not an ONNX model
            raise ModelDirError(f"{root / rel}: not a readable ONNX model ({type(e).__name__}: "
                                f"{str(e)[:200] or 'corrupt'})") from None
        ops.update(f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain == "vqinc")
    size = sum(f.bytes for f in m.files.values())
    per_layer = [name for name in g if STAGES[name].span != "global"]
    lines = [
        f"model directory   {root}",
        f"fingerprint       {m.fingerprint}  (format {m.format_version})",
        f"architecture      {s.family}: {s.num_layers} layers, d={s.d_model}, heads {s.num_heads} "
        f"(kv {s.num_kv_heads}), d_ff {s.d_ff}, vocab {s.vocab_size}, max {s.max_positions} tokens",
        f"positions         {s.positions}; pooling {s.pooling}",
        f"VQ                {s.num_codes} codes x {s.num_heads} heads per layer"
        + (f"; residual VQ ({s.residual_heads} heads)" if s.residual_vq else ""),
        f"labels            {', '.join(s.labels)}",
        f"MACs per token    {per_token:,} position-wise + {g['attend'].macs_per_pair * s.num_layers:,} per "
        "visible key (attention)",
        f"graphs            {len(graph_files(m))} files, {size / 1e6:.1f} MB (sha256 checked); per layer: "
        f"{', '.join(per_layer)}" + ("; monolithic full.onnx" if m.full_graph else "")
        + (f"; past-KV {m.decoder_graph.file} ({m.provenance.decoder_attention or '?'} attention)"
           if m.decoder_graph else ""),
        f"custom ops        {', '.join(f'{k} x{v}' for k, v in sorted(ops.items())) or '(pip install onnx to list)'}",
        f"providers         {describe_providers()}",
    ]
    prov = m.provenance
    for key, scores in (("teacher", prov.teacher), ("student", prov.student)):
        if scores is not None:
            lines.append(f"{key + ' (test)':<17} {describe_scores(scores)} on {prov.dataset or '?'}")
    return "\n".join(lines)


def describe_scores(scores: Scores | None) -> str:
    """'accuracy 0.8000, macro-F1 0.6360', 'n/a' for a score that is missing or not a number."""
    s = scores or Scores()
    return f"accuracy {_number(s.accuracy)}, macro-F1 {_number(s.macro_f1)}"


def _number(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"
