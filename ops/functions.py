"""ONNX function bodies of the vqinc ops, written in onnxscript, and single-op models around them.

Owns the graphs that stock ONNX Runtime runs for `vqinc::VQEncode` and `VQDecode`
(model-local functions: ORT inlines them). Semantics and the ground truth live in
`reference.py`; the torch side that emits these nodes lives in `torch_ops.py`. No torch here.

A runtime with a native kernel registered under the same domain, name and version would run that
kernel instead of the body; the bodies are the portable fallback and the specification.
"""

from __future__ import annotations

from functools import cache

import onnx
from onnx import TensorProto, helper
from onnxscript import FLOAT, INT64, script
from onnxscript import opset18 as op
from onnxscript.values import Opset

from vqinc.ops.domain import DOMAIN, IR_VERSION, ONNX_OPSET, OP_NAMES, VQINC_OPSET

assert op.version == ONNX_OPSET, "the bodies' default opset must equal ONNX_OPSET"

vqinc = Opset(DOMAIN, VQINC_OPSET)

# Tensor types with symbolic dims (aliases keep the string dims out of annotations, which
# `from __future__ import annotations` turns into strings that onnxscript resolves by name).
_X = FLOAT["n", "h", "dh"]
_CODEBOOK = FLOAT["h", "K", "dh"]
_CODES = INT64["n", "h"]


# Scores per head, as in reference._vq_scores:
#
#   x (n,h,dh) --Transpose--> (h,n,dh) --MatMul--> dots (h,n,K)
#   codebook (h,K,dh) --Transpose--> (h,dh,K) ----^
#   codebook --Mul,ReduceSum--> (h,K) --Unsqueeze--> (h,1,K)
#   scores = norms − 2·dots                                  (h,n,K)
#   codes  = ArgMin(scores, axis=-1, first index on ties)    (h,n) --Transpose--> (n,h)
@script(vqinc, default_opset=op)
def VQEncode(x: _X, codebook: _CODEBOOK) -> _CODES:
    dots = op.MatMul(op.Transpose(x, perm=[1, 0, 2]), op.Transpose(codebook, perm=[0, 2, 1]))
    norms = op.Unsqueeze(op.ReduceSum(op.Mul(codebook, codebook), [-1], keepdims=0), [1])
    scores = op.Sub(norms, op.Mul(op.Constant(value_float=2.0), dots))
    codes_hn = op.ArgMin(scores, axis=-1, keepdims=0, select_last_index=0)
    return op.Transpose(codes_hn, perm=[1, 0])


# Gather from the flattened codebook:
#
#   flat index = codes + head·K                              (n,h)
#   codebook (h,K,dh) --Reshape--> (h·K,dh) --Gather(flat index)--> (n,h,dh)
@script(vqinc, default_opset=op)
def VQDecode(codes: _CODES, codebook: _CODEBOOK) -> _X:
    heads = op.Shape(codebook, start=0, end=1)
    size = op.Shape(codebook, start=1, end=2)
    offsets = op.Mul(op.Range(op.Constant(value_int=0), op.Squeeze(heads), op.Constant(value_int=1)), size)
    flat = op.Reshape(codebook, op.Concat(op.Mul(heads, size), op.Shape(codebook, start=2), axis=0))
    return op.Gather(flat, op.Add(codes, offsets), axis=0)


_FUNCTIONS = {f.name: f for f in (VQEncode, VQDecode)}
assert tuple(_FUNCTIONS) == OP_NAMES

_F32, _I64 = TensorProto.FLOAT, TensorProto.INT64

# Graph inputs and outputs of the single-op models: (name, element type, symbolic dims).
SIGNATURES: dict[str, tuple[list[tuple[str, int, list[str]]], list[tuple[str, int, list[str]]]]] = {
    "VQEncode": (
        [("x", _F32, ["n", "h", "dh"]), ("codebook", _F32, ["h", "K", "dh"])],
        [("codes", _I64, ["n", "h"])],
    ),
    "VQDecode": (
        [("codes", _I64, ["n", "h"]), ("codebook", _F32, ["h", "K", "dh"])],
        [("x", _F32, ["n", "h", "dh"])],
    ),
}
"""Input and output names, types and dims of each op, as in the ARCHITECTURE.md table."""


def _check_op_name(op_name: str) -> None:
    if op_name not in _FUNCTIONS:
        raise ValueError(f"unknown vqinc op {op_name!r}; ops are {list(OP_NAMES)}")


@cache
def _function_proto(op_name: str) -> bytes:
    return _FUNCTIONS[op_name].to_function_proto().SerializeToString()


def function_proto(op_name: str) -> onnx.FunctionProto:
    """A fresh FunctionProto of one op (domain `vqinc`, default opset ONNX_OPSET)."""
    _check_op_name(op_name)
    proto = onnx.FunctionProto()
    proto.ParseFromString(_function_proto(op_name))
    return proto


def function_protos() -> list[onnx.FunctionProto]:
    """FunctionProtos of all ops, in OP_NAMES order (fresh copies: callers may mutate them)."""
    return [function_proto(name) for name in OP_NAMES]


def opset_imports() -> list[onnx.OperatorSetIdProto]:
    """The `opset_import` a model holding vqinc nodes needs: "" at ONNX_OPSET and `vqinc` at VQINC_OPSET."""
    return [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, VQINC_OPSET)]


def make_op_model(op_name: str) -> onnx.ModelProto:
    """A model with a single `vqinc::<op_name>` node, graph inputs/outputs named as in SIGNATURES
    (dynamic dims), the op's FunctionProto attached."""
    _check_op_name(op_name)
    inputs, outputs = SIGNATURES[op_name]
    node = helper.make_node(
        op_name,
        [name for name, _, _ in inputs],
        [name for name, _, _ in outputs],
        name=f"/{op_name}",
        domain=DOMAIN,
    )
    graph = helper.make_graph(
        [node],
        f"vqinc_{op_name}",
        [helper.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in inputs],
        [helper.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in outputs],
    )
    return helper.make_model(
        graph,
        opset_imports=opset_imports(),
        functions=[function_proto(op_name)],
        producer_name="vqinc",
        ir_version=IR_VERSION,
    )
