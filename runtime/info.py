"""`vqinc info`: a readable summary of a model directory (no sessions are created)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vqinc.runtime.manifest import LAYER_STAGES, graph_files, load_manifest
from vqinc.runtime.providers import describe_providers


def describe(model_dir: str | Path) -> str:
    root = Path(model_dir)
    m = load_manifest(root)
    a, vq = m.arch, m.model["vq"]
    g = m.graphs
    per_token = (g["qkv"].macs_per_row + g["encode"].macs_per_row + g["post"].macs_per_row) * m.num_layers
    ops: Counter[str] = Counter()
    try:
        import onnx  # optional here: the runtime itself needs only onnxruntime
    except ImportError:
        onnx = None
    for rel in graph_files(m) if onnx is not None else []:
        proto = onnx.load(str(root / rel), load_external_data=False)
        ops.update(f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain == "vqinc")
    size = sum(m.file_sizes.values())
    lines = [
        f"model directory   {root}",
        f"fingerprint       {m.fingerprint}  (format {m.format_version})",
        f"architecture      {a['family']}: {a['num_layers']} layers, d={a['d_model']}, heads {a['num_heads']} "
        f"(kv {a['num_kv_heads']}), d_ff {a['d_ff']}, vocab {a['vocab_size']}, max {a['max_positions']} tokens",
        f"positions         {m.positions}; pooling {m.pooling}",
        f"VQ                {vq['num_codes']} codes x {a['num_heads']} heads per layer"
        + (f"; residual VQ ({vq['residual_heads']} heads)" if vq.get("residual") else ""),
        f"labels            {', '.join(m.labels)}",
        f"MACs per token    {per_token:,} position-wise + {g['attention'].macs_per_row * m.num_layers:,} per "
        "visible key (attention)",
        f"graphs            {len(graph_files(m))} files, {size / 1e6:.1f} MB; per layer: {', '.join(LAYER_STAGES)}"
        + ("; monolithic full.onnx" if m.full_graph else "")
        + (f"; past-KV {m.decoder_graph.file} ({m.info.get('decoder', {}).get('attention', '?')} attention)"
           if m.decoder_graph else ""),
        f"custom ops        {', '.join(f'{k} x{v}' for k, v in sorted(ops.items())) or '(pip install onnx to list)'}",
        f"providers         {describe_providers()}",
    ]
    for key in ("teacher", "student"):
        if key in m.info:
            lines.append(f"{key + ' (test)':<17} accuracy {m.info[key].get('accuracy', float('nan')):.4f}, "
                         f"macro-F1 {m.info[key].get('macro_f1', float('nan')):.4f} on {m.info.get('dataset', '?')}")
    return "\n".join(lines)
