"""`vqinc export`: a trained VQ checkpoint -> a model directory (ARCHITECTURE.md).

Writes the stage graphs, the shared attention graph, the monolithic graph, tokenizer.json and
manifest.json (sizes, I/O names, per-row multiply-accumulates, fingerprint).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from vqinc.export import stages
from vqinc.model.checkpoint import load_checkpoint
from vqinc.model.config import ModelConfig
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.manifest import FORMAT_VERSION, MANIFEST, GraphSpec, Manifest, fingerprint, graph_files


def weights_sha256(model: VQTransformer) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def graph_specs(cfg: ModelConfig) -> dict[str, GraphSpec]:
    """File names, I/O names and multiply-accumulates per row of every stage graph."""
    a, K = cfg.arch, cfg.vq.num_codes
    d, dh = a.d_model, a.head_dim
    mlp = (3 if a.family == "llama" else 2) * d * a.d_ff
    res = K * d if cfg.vq.residual else 0
    return {
        "embed": GraphSpec("embed.onnx", ("ids", "positions"), ("x",), 0),
        "qkv": GraphSpec("layers.%d.qkv.onnx", ("x", "positions"), ("q", "k", "v"),
                         d * (a.num_heads + 2 * a.num_kv_heads) * dh),
        "attention": GraphSpec("attention.onnx", ("q", "k", "v", "mask", "m_in"), ("m_out", "den", "num"),
                               2 * a.num_heads * dh),
        "encode": GraphSpec("layers.%d.encode.onnx", ("attn",), ("codes", "margin"), K * d),
        "post": GraphSpec("layers.%d.post.onnx", ("x", "codes"), ("x_out",), d * d + mlp + res),
        "final": GraphSpec("final.onnx", ("x",), ("y",), 0),
        "head": GraphSpec("head.onnx", ("pooled",), ("logits",), d * len(cfg.labels)),
    }


@torch.no_grad()
def export_model(
    source: str | Path | tuple[VQTransformer, Tokenizer],
    out_dir: str | Path,
    full_graph: bool = True,
    info: dict[str, Any] | None = None,
    show_progress: bool = True,
    external_data_bytes: int = stages.EXTERNAL_DATA_BYTES,
) -> Manifest:
    """Export a checkpoint directory (or an in-memory (model, tokenizer)) to `out_dir`."""
    if isinstance(source, (str, Path)):
        model, tok, ck_info = load_checkpoint(source)
        info = {**ck_info, **(info or {})}
    else:
        model, tok = source
    model = model.eval()
    cfg = model.cfg
    out = Path(out_dir)
    foreign = [p for p in out.iterdir() if p.name not in ("__init__.py", "__pycache__")] if out.exists() else []
    if foreign and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} exists and is not a vqinc model directory; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(cfg)
    a = cfg.arch
    n = 5  # example row count; the row axis is dynamic
    ids = torch.randint(0, a.vocab_size, (n,))
    pos = torch.arange(n)
    x = torch.randn(n, a.d_model)
    jobs = [("embed", None, stages.Embed(model), (ids, pos))]
    for i in range(a.num_layers):
        codes = torch.randint(0, cfg.vq.num_codes, (n, a.num_heads))
        jobs += [
            ("qkv", i, stages.QKV(model, i), (x, pos)),
            ("encode", i, stages.Encode(model, i), (torch.randn(n, a.num_heads, a.head_dim),)),
            ("post", i, stages.Post(model, i), (x, codes)),
        ]
    jobs += [("final", None, stages.Final(model), (x,)), ("head", None, stages.Head(model), (x[:1],))]
    bar = tqdm(jobs + ([("full", None, None, None)] if full_graph else []), desc="export", unit="graph",
               disable=not show_progress)
    full_spec = None
    for name, layer, module, args in bar:
        bar.set_postfix_str(name if layer is None else f"{name}.{layer}")
        if name == "full":
            full_spec = GraphSpec("full.onnx", ("ids",), ("logits", "codes"), 0)
            stages.export_graph(stages.Full(model), (ids,), ["ids"], ["logits", "codes"], out / "full.onnx",
                                external_data_bytes=external_data_bytes)
            continue
        spec = specs[name]
        path = spec.path(out, layer)
        dyn = {} if name == "head" else None
        stages.export_graph(module, args, list(spec.inputs), list(spec.outputs), path, dyn, external_data_bytes)
    stages.write_attention_graph(out / specs["attention"].file, a.head_dim)
    tok.save(str(out / "tokenizer.json"))
    sha = weights_sha256(model)
    model_cfg = cfg.to_dict()
    m = Manifest(format_version=FORMAT_VERSION, model=model_cfg, weights_sha256=sha,
                 fingerprint=fingerprint(model_cfg, sha), graphs=specs, full_graph=full_spec, info=info or {})
    files = [*graph_files(m), "tokenizer.json"]
    files += [f + ".data" for f in graph_files(m) if (out / (f + ".data")).exists()]
    sizes = {f: (out / f).stat().st_size for f in files}
    m = Manifest(**{**m.__dict__, "file_sizes": sizes})
    (out / MANIFEST).write_text(m.to_json())
    return m

