"""Names and versions of the vqinc custom op set.

Owns the constants every graph builder must agree on; owns no ops.
"""

from __future__ import annotations

DOMAIN = "vqinc"
"""ONNX domain of the custom ops (`VQEncode`, `VQDecode`)."""

VQINC_OPSET = 1
"""Version of the `vqinc` domain written into every model's `opset_import`."""

ONNX_OPSET = 18
"""Default ONNX opset of the function bodies. A model that embeds them must import the same
version, or `onnx.checker` rejects the model-local functions."""

IR_VERSION = 10
"""IR version of the models built here (what torch.onnx writes; ORT >= 1.20 reads it)."""

OP_NAMES = ("VQEncode", "VQDecode")
"""All ops of the domain, in the order of the ARCHITECTURE.md table."""
