"""One torch module per exported stage graph, and the dynamo export of each.

The stages are thin views over a trained `VQTransformer` (no copied weights), so the graphs
compute exactly what `VQTransformer.forward` computes, cut where the runtime needs to cut.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from vqinc.model.transformer import VQTransformer, causal_attention
from vqinc.ops.domain import ONNX_OPSET
from vqinc.ops.torch_ops import attach_functions, custom_translation_table

ROWS = torch.export.Dim("n", min=1, max=1 << 16)
# The exporter logs a warning per missing torchvision op on every export: noise for us.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def rope_positions(labels: torch.Tensor, scale: int) -> torch.Tensor:
    """What RoPE sees of a row's position label (runtime/engine/labels.py): label / scale, exact in float32
    for a power-of-two scale; the integer labels themselves where the model has no labels (scale 1)."""
    return labels if scale == 1 else labels.to(torch.float32) / scale


class EmbedQKV(nn.Module):
    """ids, positions -> layer 0's input x and its q, k, v (rows that are new or whose input moved)."""

    def __init__(self, m: VQTransformer, scale: int = 1):
        super().__init__()
        self.m, self.scale = m, scale

    def forward(self, ids: torch.Tensor, positions: torch.Tensor):
        x = self.m.embed(ids, positions)  # (n, d); positions index a table only in "learned" mode (scale 1)
        qkv = self.m.layers[0].qkv(x, rope_positions(positions, self.scale))
        return (x, *qkv)  # (n, H, dh), (n, Hkv, dh), (n, Hkv, dh)


class PostQKV(nn.Module):
    """Layer l's post stage, then layer l+1's q, k, v of the same rows (one call per layer per edit)."""

    def __init__(self, m: VQTransformer, layer_idx: int, scale: int = 1):
        super().__init__()
        self.block, self.next_block, self.scale = m.layers[layer_idx], m.layers[layer_idx + 1], scale

    def forward(self, x: torch.Tensor, codes: torch.Tensor, positions: torch.Tensor):
        x_out = self.block.post_codes(x, codes)  # (n, d)
        return (x_out, *self.next_block.qkv(x_out, rope_positions(positions, self.scale)))


class Final(nn.Module):
    """The last layer's post stage and the final norm: the rows the pooled head reads."""

    def __init__(self, m: VQTransformer):
        super().__init__()
        self.block, self.norm = m.layers[-1], m.final_norm

    def forward(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block.post_codes(x, codes))  # (n, d)


class QKV(nn.Module):
    """Norm + projections (+ RoPE) of one layer: rows whose position moved but whose input did not."""

    def __init__(self, m: VQTransformer, layer_idx: int, scale: int = 1):
        super().__init__()
        self.block, self.scale = m.layers[layer_idx], scale

    def forward(self, x: torch.Tensor, positions: torch.Tensor):
        return self.block.qkv(x, rope_positions(positions, self.scale))  # (n, H, dh), (n, Hkv, dh), (n, Hkv, dh)


class Head(nn.Module):
    """Classifier on pooled rows, one row per document: (B, d) -> (B, C)."""

    def __init__(self, m: VQTransformer):
        super().__init__()
        self.classifier = m.classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled)


class Full(nn.Module):
    """The monolithic graph: ids (n,), positions (n,) -> logits (1, C), codes (L, n, H). Same math as the
    stages; `positions` are the rows' position labels (0 .. n-1 times the scale for a fresh document)."""

    def __init__(self, m: VQTransformer, scale: int = 1):
        super().__init__()
        self.m, self.scale = m, scale

    def forward(self, ids: torch.Tensor, positions: torch.Tensor):
        m = self.m
        x = m.embed(ids, positions)
        rope_pos = rope_positions(positions, self.scale)
        codes = []
        for block in m.layers:
            q, k, v = block.qkv(x, rope_pos)
            c = block.vq.encode(causal_attention(q, k, v))
            codes.append(c)
            x = block.post_codes(x, c)
        hidden = m.final_norm(x)
        pooled = hidden.mean(0, keepdim=True) if m.cfg.pooling == "mean" else hidden[-1:]
        return m.classifier(pooled), torch.stack(codes)


EXTERNAL_DATA_BYTES = 1 << 30
"""Graphs whose weights exceed this go to `<file>.data` beside the graph (protobuf's limit is 2 GB)."""


def save_graph(proto: onnx.ModelProto, path: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> None:
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights > external_data_bytes:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)  # small constants stay inline
    else:
        onnx.save_model(proto, str(path))


def export_graph(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
                 path: Path, dynamic: dict[str, int] | None = None,
                 external_data_bytes: int = EXTERNAL_DATA_BYTES) -> onnx.ModelProto:
    """Dynamo-export `module` with a dynamic row axis on each named input; attach vqinc functions."""
    dynamic = dynamic if dynamic is not None else {n: 0 for n in input_names}
    shapes = tuple({dynamic[n]: ROWS} if n in dynamic else None for n in input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module.eval(), args, dynamo=True, dynamic_shapes=shapes, opset_version=ONNX_OPSET,
            input_names=input_names, output_names=output_names,
            custom_translation_table=custom_translation_table(), verbose=False, optimize=True,
        )
    proto = attach_functions(prog.model_proto)
    save_graph(proto, path, external_data_bytes)
    return proto
