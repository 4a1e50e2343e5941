"""PyTorch face of the vqinc ops: `torch.ops.vqinc.*` custom ops and their ONNX export.

Owns the eager kernels (torch math with the formulas of `reference.py`), the fake kernels used while
tracing, the `custom_translation_table()` for `torch.onnx.export(dynamo=True)` and `attach_functions`.
It is the only module of `vqinc.ops` that imports torch. Training-time VQ (straight-through, EMA) lives
in `vqinc.model`; these ops are the inference-time encode/decode that must export as one node each.

Export, in full:

    program = torch.onnx.export(module, args, dynamo=True, optimize=False,
                                custom_translation_table=custom_translation_table())
    model = attach_functions(program.model_proto)

The translation functions emit a bare `vqinc::<Op>` node (no body); `attach_functions` then adds the
FunctionProtos and the `vqinc` opset import so that stock ONNX Runtime runs the model. Mapping the
`@script` functions directly in the table would make the exporter inline their bodies instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnx import TensorProto
from onnxscript import FLOAT, INT64
from onnxscript.values import Op, Opset

from vqinc.ops.domain import DOMAIN, ONNX_OPSET, OP_NAMES, VQINC_OPSET
from vqinc.ops.functions import SIGNATURES, function_proto

# --- eager and fake kernels -------------------------------------------------------------------------


def _scores(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """`‖c_k‖² − 2·x·c_k`: x (n,h,dh), codebook (h,K,dh) -> (h,n,K)."""
    dots = torch.matmul(x.transpose(0, 1), codebook.transpose(1, 2))  # (h, n, K)
    norms = (codebook * codebook).sum(dim=-1)  # (h, K)
    return norms[:, None, :] - 2.0 * dots


@torch.library.custom_op("vqinc::vq_encode", mutates_args=())
def vq_encode(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code per head: x (n,h,dh) f32, codebook (h,K,dh) f32 -> codes (n,h) int64 (first on ties)."""
    return torch.argmin(_scores(x, codebook), dim=-1).transpose(0, 1).contiguous()


@vq_encode.register_fake
def _(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:2], dtype=torch.int64)


@torch.library.custom_op("vqinc::vq_decode", mutates_args=())
def vq_decode(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Gather: codes (n,h) int64, codebook (h,K,dh) -> (n,h,dh). Differentiable in the codebook."""
    heads = torch.arange(codebook.shape[0], device=codes.device)
    return codebook[heads[None, :], codes]


@vq_decode.register_fake
def _(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return codebook.new_empty((codes.shape[0], codes.shape[1], codebook.shape[2]))


def _vq_decode_setup(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    codes, codebook = inputs
    ctx.save_for_backward(codes)
    ctx.codebook_shape = codebook.shape


def _vq_decode_backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
    """Gradient to the codebook only: each used code collects the gradients of its rows."""
    (codes,) = ctx.saved_tensors
    heads = torch.arange(codes.shape[1], device=codes.device).expand_as(codes)
    grad_codebook = grad.new_zeros(ctx.codebook_shape).index_put((heads, codes), grad, accumulate=True)
    return None, grad_codebook


vq_decode.register_autograd(_vq_decode_backward, setup_context=_vq_decode_setup)


# --- ONNX export ------------------------------------------------------------------------------------

_VQINC = Opset(DOMAIN, VQINC_OPSET)

# torch op -> ONNX op of the same semantics
_ONNX_NAMES = {"vq_encode": "VQEncode", "vq_decode": "VQDecode"}


def _bare_op(op_name: str) -> Op:
    """An onnxscript Op for `vqinc::<op_name>` that carries a schema but no body.

    The exporter's tracer records one node for it. (Calling the `@script` function instead makes
    the exporter inline the body.) The schema is local to this Op, not registered with onnx.defs.
    """
    inputs, outputs = SIGNATURES[op_name]
    dtype_name = {TensorProto.FLOAT: "tensor(float)", TensorProto.INT64: "tensor(int64)"}
    schema = onnx.defs.OpSchema(
        op_name,
        DOMAIN,
        VQINC_OPSET,
        inputs=[onnx.defs.OpSchema.FormalParameter(name, dtype_name[dtype]) for name, dtype, _ in inputs],
        outputs=[onnx.defs.OpSchema.FormalParameter(name, dtype_name[dtype]) for name, dtype, _ in outputs],
    )
    return Op(_VQINC, op_name, schema)


_ENCODE, _DECODE = (_bare_op(name) for name in ("VQEncode", "VQDecode"))


# The exporter reads the return annotation to count outputs: keep it.
def _vq_encode_onnx(x: FLOAT, codebook: FLOAT) -> INT64:
    return _ENCODE(x, codebook)


def _vq_decode_onnx(codes: INT64, codebook: FLOAT) -> FLOAT:
    return _DECODE(codes, codebook)


def custom_translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """`custom_translation_table=` for `torch.onnx.export(dynamo=True)`: each vqinc torch op becomes
    one bare `vqinc::<Op>` node. Follow the export with `attach_functions`."""
    return {
        torch.ops.vqinc.vq_encode.default: _vq_encode_onnx,
        torch.ops.vqinc.vq_decode.default: _vq_decode_onnx,
    }


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make an exported model runnable by stock ONNX Runtime, in place (and return it).

    Appends the FunctionProto of every `vqinc` op the graph uses (and that the model does not hold
    yet) and sets the `vqinc` opset import. The model's default opset must be ONNX_OPSET: export with
    `opset_version=ONNX_OPSET`.
    """
    versions = {entry.domain: entry.version for entry in model.opset_import}
    if versions.get("", versions.get("ai.onnx")) != ONNX_OPSET:
        raise ValueError(
            f"model imports ONNX opset {versions.get('', versions.get('ai.onnx'))}, the vqinc functions use "
            f"{ONNX_OPSET}; export with torch.onnx.export(..., opset_version={ONNX_OPSET})"
        )
    if versions.get(DOMAIN, VQINC_OPSET) != VQINC_OPSET:
        raise ValueError(
            f"model imports {DOMAIN} version {versions[DOMAIN]}; this vqinc provides {VQINC_OPSET}"
        )
    used = {node.op_type for node in _all_nodes(model) if node.domain == DOMAIN}
    unknown = used - set(OP_NAMES)
    if unknown:
        raise ValueError(f"model uses unknown {DOMAIN} ops {sorted(unknown)}; ops are {list(OP_NAMES)}")
    present = {(f.domain, f.name) for f in model.functions}
    for name in OP_NAMES:
        if name in used and (DOMAIN, name) not in present:
            model.functions.append(function_proto(name))
    if used and DOMAIN not in versions:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VQINC_OPSET))
    return model


def _all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph, its subgraphs and the model's functions."""
    nodes: list[onnx.NodeProto] = []
    pending = [model.graph.node, *(f.node for f in model.functions)]
    while pending:
        for node in pending.pop():
            nodes.append(node)
            for attr in node.attribute:
                pending.extend(g.node for g in attr.graphs)
                if attr.HasField("g"):
                    pending.append(attr.g.node)
    return nodes
