"""vqinc.ops: the `vqinc` custom ONNX op set, `VQEncode` and `VQDecode` (see README.md in this folder).

- `domain`     names and versions (DOMAIN, VQINC_OPSET, ONNX_OPSET, IR_VERSION, OP_NAMES)
- `reference`  numpy ground truth
- `functions`  onnxscript bodies, `function_protos()`, `make_op_model()`
- `torch_ops`  torch custom ops and their export (import it explicitly: the only module that needs torch)

Importing this package needs numpy only: the names from `functions` (onnx, onnxscript) load on
first use, so code that needs only `domain` and `reference` runs without the export extras.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vqinc.ops import reference
from vqinc.ops.domain import DOMAIN, IR_VERSION, ONNX_OPSET, OP_NAMES, VQINC_OPSET

if TYPE_CHECKING:
    from vqinc.ops.functions import (
        SIGNATURES,
        function_proto,
        function_protos,
        make_op_model,
        opset_imports,
    )

_LAZY = ("SIGNATURES", "function_proto", "function_protos", "make_op_model", "opset_imports")

__all__ = [
    "DOMAIN",
    "IR_VERSION",
    "ONNX_OPSET",
    "OP_NAMES",
    "VQINC_OPSET",
    "reference",
    "SIGNATURES",
    "function_proto",
    "function_protos",
    "make_op_model",
    "opset_imports",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vqinc.ops import functions

        return getattr(functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
