"""`vqinc export --decoder`: the same VQ model as a standard past-KV decoder graph (`decoder.onnx`).

This is the graph a user who does not adopt vqinc would run: a causal LM exported the way optimum
exports one "with past", driven the way onnxruntime-genai drives it (keep the K/V of every position;
after an edit, rewind to the first changed token and append the rest). It is the `prefix_kv`
contender of the benchmarks, and an optional graph of the model directory (manifest `decoder_graph`).

    input_ids (1, S) i64                     the suffix, positions P .. P+S-1
    past_hidden_sum (1, d) f32               sum of the final hidden states of positions 0 .. P-1
    past_key_values.%d.key/value (1, Hkv, P, dh) f32, per layer
      -> logits (1, C)                       of the whole document (P + S tokens)
         hidden_sums (S, d)                  running sums at each suffix position (the next run's past_hidden_sum)
         codes (L, S, H) i64                 VQ codes of the suffix (for verification)
         present.%d.key/value (1, Hkv, P+S, dh)

No batch axis beyond optimum's leading 1, no attention mask (one document, no padding); positions are
P + arange(S), computed in the graph from the past length (rope and learned modes).

Attention, per layer, one of ATTENTION_KINDS:
  gqa    `com.microsoft::GroupQueryAttention` (fused, float32; any num_kv_heads)
  mha    `com.microsoft::MultiHeadAttention` with past_key/past_value and unidirectional=1 (num_kv_heads == num_heads)
  plain  the exported torch math (Concat, MatMul, masked Softmax), left to ORT's graph optimizer

The contrib paths are exported through a placeholder custom op (`vqinc.kv::KVAttention`, eager math in
torch) that `_lower_attention` rewrites into the contrib node plus reshapes after export.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from onnxscript import FLOAT
from onnxscript.values import Op, Opset
from torch import nn

from vqinc.export import stage_modules
from vqinc.model.transformer import VQTransformer, attention_with_past
from vqinc.ops.domain import ONNX_OPSET
from vqinc.ops.torch_ops import attach_functions, custom_translation_table
from vqinc.runtime.baseline.prefix_kv import io_names
from vqinc.runtime.format.atomic import replacing_dir
from vqinc.runtime.format.manifest import MANIFEST, GraphSpec, file_sha256, load_manifest

DECODER_FILE = "decoder.onnx"
ATTENTION_KINDS = ("gqa", "mha", "plain")
_PLACEHOLDER_DOMAIN = "vqinc.kv"
_MSFT = "com.microsoft"


def default_attention(model: VQTransformer) -> str:
    """The fused op ORT's CPU kernels take for this shape: GQA needs head_dim % 8 == 0, MHA equal head counts."""
    a = model.cfg.arch
    if a.head_dim % 8 == 0:
        return "gqa"
    return "mha" if a.num_kv_heads == a.num_heads else "plain"


def decoder_spec(model: VQTransformer) -> GraphSpec:
    """Names (per-layer templates, as in onnxruntime-genai's config) and position-wise MACs per row."""
    a, K = model.cfg.arch, model.cfg.vq.num_codes
    d, dh = a.d_model, a.head_dim
    mlp = (3 if a.family == "llama" else 2) * d * a.d_ff
    per_layer = d * (a.num_heads + 2 * a.num_kv_heads) * dh + K * d + d * d + mlp
    inputs = ("input_ids", "past_hidden_sum", "past_key_values.%d.key", "past_key_values.%d.value")
    outputs = ("logits", "hidden_sums", "codes", "present.%d.key", "present.%d.value")
    return GraphSpec(DECODER_FILE, inputs, outputs, a.num_layers * per_layer)


# --- attention with a past: eager math, and a placeholder op for export -----------------------------


def _attend_plain(q, k, v, past_k, past_v):
    """q (S,H,dh), k/v (S,Hkv,dh), past (1,Hkv,P,dh) -> out (S,H,dh), present (1,Hkv,P+S,dh)."""
    present_k = torch.cat([past_k, k.transpose(0, 1)[None]], dim=2)
    present_v = torch.cat([past_v, v.transpose(0, 1)[None]], dim=2)
    out = attention_with_past(q, present_k[0].transpose(0, 1), present_v[0].transpose(0, 1))
    return out, present_k, present_v


@torch.library.custom_op("vqinc_kv::kv_attention", mutates_args=())
def kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                 past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention of S new positions over a past (see `_attend_plain`); exported as one node."""
    out, pk, pv = _attend_plain(q, k, v, past_k, past_v)
    return out.contiguous(), pk, pv


@kv_attention.register_fake
def _(q, k, v, past_k, past_v):
    total = past_k.shape[2] + k.shape[0]
    shape = (1, past_k.shape[1], total, past_k.shape[3])
    return q.new_empty(q.shape), past_k.new_empty(shape), past_v.new_empty(shape)


def _placeholder_op() -> Op:
    schema = onnx.defs.OpSchema(
        "KVAttention", _PLACEHOLDER_DOMAIN, 1,
        inputs=[onnx.defs.OpSchema.FormalParameter(n, "tensor(float)") for n in ("q", "k", "v", "past_k", "past_v")],
        outputs=[onnx.defs.OpSchema.FormalParameter(n, "tensor(float)") for n in ("out", "present_k", "present_v")],
    )
    return Op(Opset(_PLACEHOLDER_DOMAIN, 1), "KVAttention", schema)


_KV_ATTENTION = _placeholder_op()


def _kv_attention_onnx(q: FLOAT, k: FLOAT, v: FLOAT, past_k: FLOAT, past_v: FLOAT) -> tuple[FLOAT, FLOAT, FLOAT]:
    return _KV_ATTENTION(q, k, v, past_k, past_v)


class Decoder(nn.Module):
    """The past-KV decoder over a trained VQTransformer (no copied weights): the graph's contract above."""

    def __init__(self, m: VQTransformer, attention: str):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"decoder attention {attention!r} not in {ATTENTION_KINDS}")
        a = m.cfg.arch
        if attention == "mha" and a.num_kv_heads != a.num_heads:
            raise ValueError(f"MultiHeadAttention needs num_kv_heads == num_heads (this model: {a.num_heads} heads, "
                             f"{a.num_kv_heads} kv heads); use attention 'gqa' or 'plain'")
        if attention == "gqa" and a.head_dim % 8:
            raise ValueError(f"ORT's GroupQueryAttention needs head_dim % 8 == 0 (this model: {a.head_dim}); "
                             "use attention 'mha' or 'plain'")
        self.m, self.attention = m, attention

    def forward(self, input_ids: torch.Tensor, past_hidden_sum: torch.Tensor, *past: torch.Tensor):
        m = self.m
        ids = input_ids[0]  # (S,)
        p, s = past[0].shape[2], ids.shape[0]
        positions = torch.arange(s, device=ids.device) + p
        x = m.embed(ids, positions)  # (S, d)
        attend = _attend_plain if self.attention == "plain" else kv_attention
        presents, codes = [], []
        for i, block in enumerate(m.layers):
            q, k, v = block.qkv(x, positions)
            attn, pk, pv = attend(q, k, v, past[2 * i], past[2 * i + 1])
            c = block.vq.encode(attn)
            x = block.post_codes(x, c)
            codes.append(c)
            presents += [pk, pv]
        hidden = m.final_norm(x)  # (S, d)
        sums = past_hidden_sum + hidden.cumsum(0)  # (S, d)
        pooled = sums[-1:] / (p + s) if m.cfg.pooling == "mean" else hidden[-1:]
        return (m.classifier(pooled), sums, torch.stack(codes), *presents)


# --- lowering the placeholder to ORT contrib ops ----------------------------------------------------

#   q (S,H,dh)   --Reshape--> (1,S,H·dh)   --+
#   k (S,Hkv,dh) --Reshape--> (1,S,Hkv·dh) --+--> MultiHeadAttention | GroupQueryAttention
#   v (S,Hkv,dh) --Reshape--> (1,S,Hkv·dh) --+      |-> out (1,S,H·dh) --Reshape--> (S,H,dh)
#   past_k, past_v (1,Hkv,P,dh) ---------------------+-> present_k, present_v (1,Hkv,P+S,dh)
#   GQA only: total = P + S (from the shapes) -> seqlens_k = [total - 1] (int32), total_sequence_length (int32 scalar)
def _lower_attention(proto: onnx.ModelProto, kind: str, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    g = proto.graph
    consts = {
        "kv_shape_q": [1, -1, num_heads * head_dim], "kv_shape_kv": [1, -1, num_kv_heads * head_dim],
        "kv_shape_out": [-1, num_heads, head_dim], "kv_one": [1],
    }
    for name, vals in consts.items():
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals))
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in g.node:
        if not (node.domain == _PLACEHOLDER_DOMAIN and node.op_type == "KVAttention"):
            new_nodes.append(node)
            continue
        q, k, v, past_k, past_v = node.input
        out, present_k, present_v = node.output
        t = f"/layers.{count}/attn/"
        count += 1
        nodes = [
            helper.make_node("Reshape", [q, "kv_shape_q"], [t + "q3"], name=t + "q_reshape"),
            helper.make_node("Reshape", [k, "kv_shape_kv"], [t + "k3"], name=t + "k_reshape"),
            helper.make_node("Reshape", [v, "kv_shape_kv"], [t + "v3"], name=t + "v_reshape"),
        ]
        scale = float(head_dim) ** -0.5
        if kind == "mha":
            nodes.append(helper.make_node(
                "MultiHeadAttention", [t + "q3", t + "k3", t + "v3", "", "", "", past_k, past_v],
                [t + "out3", present_k, present_v], name=t + "MultiHeadAttention", domain=_MSFT,
                num_heads=num_heads, unidirectional=1, scale=scale))
        else:
            nodes += [
                helper.make_node("Shape", [past_k], [t + "past_len"], name=t + "past_len", start=2, end=3),
                helper.make_node("Shape", [q], [t + "new_len"], name=t + "new_len", start=0, end=1),
                helper.make_node("Add", [t + "past_len", t + "new_len"], [t + "total64"], name=t + "total"),
                helper.make_node("Sub", [t + "total64", "kv_one"], [t + "seqlens64"], name=t + "seqlens"),
                helper.make_node("Cast", [t + "seqlens64"], [t + "seqlens_k"], name=t + "seqlens_i32",
                                 to=TensorProto.INT32),
                helper.make_node("Squeeze", [t + "total64"], [t + "total_scalar"], name=t + "total_scalar"),
                helper.make_node("Cast", [t + "total_scalar"], [t + "total_len"], name=t + "total_i32",
                                 to=TensorProto.INT32),
                helper.make_node(
                    "GroupQueryAttention", [t + "q3", t + "k3", t + "v3", past_k, past_v, t + "seqlens_k",
                                            t + "total_len"],
                    [t + "out3", present_k, present_v], name=t + "GroupQueryAttention", domain=_MSFT,
                    num_heads=num_heads, kv_num_heads=num_kv_heads, scale=scale),
            ]
        nodes.append(helper.make_node("Reshape", [t + "out3", "kv_shape_out"], [out], name=t + "out_reshape"))
        new_nodes += nodes
    del g.node[:]
    g.node.extend(new_nodes)
    imports = [o for o in proto.opset_import if o.domain != _PLACEHOLDER_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(imports + [helper.make_opsetid(_MSFT, 1)])


# --- export ----------------------------------------------------------------------------------------


@torch.no_grad()
def export_decoder(model: VQTransformer, out_dir: str | Path, attention: str | None = None,
                   external_data_bytes: int = stage_modules.EXTERNAL_DATA_BYTES) -> GraphSpec:
    """Write `decoder.onnx` of `model` into `out_dir` (nothing else); return its GraphSpec."""
    model = model.eval()
    a = model.cfg.arch
    attention = attention or default_attention(model)
    spec = decoder_spec(model)
    inputs, outputs = io_names(spec, a.num_layers)
    module = Decoder(model, attention)
    s, p = 3, 4  # example lengths (> 1: torch.export specialises sizes 0 and 1)
    args = (torch.randint(0, a.vocab_size, (1, s)), torch.randn(1, a.d_model),
            *[torch.randn(1, a.num_kv_heads, p, a.head_dim) for _ in range(2 * a.num_layers)])
    new = torch.export.Dim("new", min=1, max=1 << 16)
    past = torch.export.Dim("past", min=0, max=1 << 16)
    shapes = ({1: new}, None, tuple({2: past} for _ in range(2 * a.num_layers)))  # *past is one element
    table = {**custom_translation_table(), torch.ops.vqinc_kv.kv_attention.default: _kv_attention_onnx}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes, opset_version=ONNX_OPSET,
                                 input_names=inputs, output_names=outputs, custom_translation_table=table,
                                 verbose=False, optimize=True)
    proto = attach_functions(prog.model_proto)
    if attention != "plain":
        _lower_attention(proto, attention, a.num_heads, a.num_kv_heads, a.head_dim)
    got_in = [i.name for i in proto.graph.input]
    if got_in != inputs:
        raise RuntimeError(f"decoder export kept inputs {got_in}, expected {inputs}")
    stage_modules.save_graph(proto, Path(out_dir) / DECODER_FILE, external_data_bytes)
    return spec


def add_decoder(model: VQTransformer, model_dir: str | Path, attention: str | None = None) -> GraphSpec:
    """Export the decoder of `model` into an existing model directory and list it in its manifest.

    `model` must be the directory's own: the checkpoint it was exported from, or `model_from_dir(model_dir)`.
    `verify_decoder(model_dir)` compares the result with the directory's full.onnx."""
    root = Path(model_dir)
    load_manifest(root)  # a valid model directory
    attention = attention or default_attention(model)
    rewritten = (DECODER_FILE, DECODER_FILE + ".data", MANIFEST)
    # A copy of the directory (hard links) gains the decoder and its new manifest, then takes the
    # directory's place: an interrupt leaves the model as it was or with its decoder, never half of it.
    with replacing_dir(root, carry=lambda p: p.name not in rewritten) as stage:
        spec = export_decoder(model, stage, attention)
        raw = json.loads((root / MANIFEST).read_text())
        raw["decoder_graph"] = {"file": spec.file, "inputs": list(spec.inputs), "outputs": list(spec.outputs),
                                "macs_per_row": spec.macs_per_row}
        files = dict(raw.get("files", {}))
        for rel in (spec.file, spec.file + ".data"):
            if (stage / rel).exists():
                files[rel] = {"bytes": (stage / rel).stat().st_size, "sha256": file_sha256(stage / rel)}
            else:
                files.pop(rel, None)
        raw["files"] = files
        info = dict(raw.get("info", {}))
        info["decoder"] = {"attention": attention}
        raw["info"] = info
        (stage / MANIFEST).write_text(json.dumps(raw, indent=2))
    return spec
