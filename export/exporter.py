"""`vqinc export`: a trained VQ checkpoint -> a model directory (ARCHITECTURE.md).

Writes one graph per entry of the stage table (`vqinc.runtime.format.stages.STAGES`), tokenizer.json and
manifest.json (I/O names, multiply-accumulates, fingerprint, size and sha256 of every file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from vqinc.export import stage_modules
from vqinc.export.attend import attend_graph, refine_graph
from vqinc.model.checkpoint import load_checkpoint, weights_sha256
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.format.atomic import replacing_dir
from vqinc.runtime.format.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    FileEntry,
    GraphSpec,
    Manifest,
    file_sha256,
    fingerprint,
    graph_files,
)
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.format.stages import STAGES, stage_macs


def graph_specs(spec: ModelSpec, full_graph: bool = True) -> dict[str, GraphSpec]:
    """File names, I/O names and multiply-accumulates of every graph this model has."""
    macs = stage_macs(spec)
    return {name: GraphSpec(st.file, st.inputs, st.outputs, macs[name].per_row, macs[name].per_pair)
            for name, st in STAGES.items() if st.needed(spec) and (full_graph or name != "full")}


def _jobs(model: VQTransformer, spec: ModelSpec, specs: dict[str, GraphSpec]) -> list[tuple]:
    """(stage, layer, torch module, example args) of every graph exported from torch."""
    n = 5  # example row count; the row axis is dynamic
    ids = torch.randint(0, spec.vocab_size, (n,))
    s = spec.position_scale
    pos = torch.arange(n) * s
    x = torch.randn(n, spec.d_model)
    codes = torch.randint(0, spec.num_codes, (n, spec.num_heads))
    jobs: list[tuple] = [("embed_qkv", None, stage_modules.EmbedQKV(model, s), (ids, pos))]
    for i in range(spec.num_layers - 1):
        jobs.append(("post", i, stage_modules.PostQKV(model, i, s), (x, codes, pos)))
    jobs.append(("final", None, stage_modules.Final(model), (x, codes)))
    if "qkv" in specs:
        jobs += [("qkv", i, stage_modules.QKV(model, i, s), (x, pos)) for i in range(spec.num_layers)]
    jobs.append(("head", None, stage_modules.Head(model), (x[:2],)))
    if "full" in specs:
        jobs.append(("full", None, stage_modules.Full(model, s), (ids, pos)))
    return jobs


_MODEL_SUFFIXES = (".onnx", ".data", ".json", ".npy")
DEFAULT_POSITION_SCALE = 1 << 16
"""Labels per position of a RoPE export: 16 insertions at one point before any row is relabelled."""


@torch.no_grad()
def export_model(
    source: str | Path | tuple[VQTransformer, Tokenizer],
    out_dir: str | Path,
    full_graph: bool = True,
    info: dict[str, Any] | None = None,
    show_progress: bool = True,
    external_data_bytes: int = stage_modules.EXTERNAL_DATA_BYTES,
    position_scale: int | None = None,
) -> Manifest:
    """Export a checkpoint directory (or an in-memory (model, tokenizer)) to `out_dir`. `position_scale`:
    RoPE position labels (runtime/engine/labels.py; default `DEFAULT_POSITION_SCALE` for a RoPE model, 1
    otherwise); 1 gives plain positions (every insertion renumbers the rows after it)."""
    if isinstance(source, (str, Path)):
        model, tok, ck_info = load_checkpoint(source)
        info = {**ck_info, **(info or {})}
    else:
        model, tok = source
    model = model.eval()
    model_cfg = model.cfg.to_dict()
    if position_scale is None:
        position_scale = DEFAULT_POSITION_SCALE if model.cfg.positions == "rope" else 1
    if position_scale != 1:
        model_cfg["position_scale"] = position_scale
    spec = ModelSpec.from_dict(model_cfg)
    out = Path(out_dir)
    foreign = [p for p in out.iterdir() if p.name not in ("__init__.py", "__pycache__")] if out.exists() else []
    if foreign and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} exists and is not a vqinc model directory; refusing to write into it")
    # Written beside `out` and swapped in at the end: an interrupt leaves the old model or the new one.
    # A previous export's graphs may not be part of this one: only other files (a package's
    # __init__.py) are carried over.
    with replacing_dir(out, carry=lambda p: not (p.is_file() and p.suffix in _MODEL_SUFFIXES)) as stage:
        m = _write_model(model, tok, spec, model_cfg, stage, full_graph, info, show_progress, external_data_bytes)
    return m


def _write_model(model: VQTransformer, tok: Tokenizer, spec: ModelSpec, model_cfg: dict[str, Any], stage: Path,
                 full_graph: bool, info: dict[str, Any] | None, show_progress: bool,
                 external_data_bytes: int) -> Manifest:
    specs = graph_specs(spec, full_graph)
    jobs = _jobs(model, spec, specs)
    bar = tqdm(total=len(jobs) + spec.num_layers + 1, desc="export", unit="graph", disable=not show_progress)
    for name, layer, module, args in jobs:
        bar.set_postfix_str(name if layer is None else f"{name}.{layer}")
        g = specs[name]
        dynamic = {n: 0 for n in g.inputs}
        stage_modules.export_graph(module, args, list(g.inputs), list(g.outputs), g.path(stage, layer), dynamic,
                            external_data_bytes)
        bar.update()
    for i, block in enumerate(model.layers):
        proto = attend_graph(block.vq.codebook.detach().cpu().numpy(), spec.num_heads, spec.num_kv_heads,
                             spec.head_dim)
        stage_modules.save_graph(proto, specs["attend"].path(stage, i), external_data_bytes)
        bar.update()
    refine = refine_graph(spec.num_heads, spec.num_kv_heads, spec.head_dim)
    stage_modules.save_graph(refine, specs["refine"].path(stage))
    bar.update()
    bar.close()
    tok.save(str(stage / "tokenizer.json"))
    codebooks = np.stack([b.vq.codebook.detach().cpu().numpy().astype(np.float32) for b in model.layers])
    np.save(stage / "codebooks.npy", codebooks, allow_pickle=False)
    sha = weights_sha256(model)
    m = Manifest(format_version=FORMAT_VERSION, model=model_cfg, weights_sha256=sha,
                 fingerprint=fingerprint(model_cfg, sha), graphs=specs, info=info or {})
    rels = [*graph_files(m, spec), "tokenizer.json", "codebooks.npy"]
    rels += [r + ".data" for r in graph_files(m, spec) if (stage / (r + ".data")).exists()]
    files = {r: FileEntry((stage / r).stat().st_size, file_sha256(stage / r)) for r in rels}
    m = Manifest(**{**m.__dict__, "files": files})
    (stage / MANIFEST).write_text(m.to_json())
    return m
