"""Multi-head vector quantiser: nearest-code encode, gather decode, straight-through training.

Encode and decode call the `vqinc` torch custom ops, so `torch.onnx.export` emits one
`vqinc::VQEncode` / `vqinc::VQDecode` node instead of inlined math (see ops/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqinc.ops import torch_ops  # noqa: F401  (registers torch.ops.vqinc.*)


@dataclass
class VQOutput:
    quantized: torch.Tensor  # (..., h, dh) straight-through values
    codes: torch.Tensor  # (..., h) int64
    loss: torch.Tensor  # scalar: commitment (+ codebook loss when learned)


class VectorQuantizer(nn.Module):
    """h independent codebooks of K codes of width dh; EMA or gradient-learned."""

    def __init__(
        self,
        num_heads: int,
        num_codes: int,
        head_dim: int,
        commitment: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1e-3,
    ):
        super().__init__()
        self.num_heads, self.num_codes, self.head_dim = num_heads, num_codes, head_dim
        self.commitment, self.ema_decay, self.dead_code_threshold = commitment, ema_decay, dead_code_threshold
        init = torch.randn(num_heads, num_codes, head_dim) * head_dim**-0.5
        if ema_decay > 0:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_size", torch.ones(num_heads, num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialised", torch.tensor(False))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., h, dh) -> (..., h) int64 nearest codes."""
        flat = x.reshape(-1, self.num_heads, self.head_dim).float()
        codes = torch.ops.vqinc.vq_encode(flat, self.codebook)
        return codes.reshape(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., h) int64 -> (..., h, dh)."""
        flat = torch.ops.vqinc.vq_decode(codes.reshape(-1, self.num_heads), self.codebook)
        return flat.reshape(*codes.shape, self.head_dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> VQOutput:
        """x (..., h, dh); valid (...) bool marks rows that may update the codebook (not padding)."""
        codes = self.encode(x.detach())
        q = self.decode(codes)
        rows = x.detach().reshape(-1, self.num_heads, self.head_dim)
        if valid is not None:
            rows = rows[valid.reshape(-1)]
        if self.training and self.ema_decay > 0 and rows.shape[0] > 0:
            self._ema_update(rows, codes.reshape(-1, self.num_heads)[valid.reshape(-1)] if valid is not None
                             else codes.reshape(-1, self.num_heads))
        loss = self.commitment * F.mse_loss(x, q.detach())
        if self.ema_decay == 0:
            loss = loss + F.mse_loss(q, x.detach())
        # Eval returns the code vectors exactly (x + (q - x) can be 1 ULP off q), as the exported graphs do.
        quantized = x + (q - x).detach() if self.training else q.to(x.dtype)
        return VQOutput(quantized=quantized, codes=codes, loss=loss)

    @torch.no_grad()
    def _ema_update(self, rows: torch.Tensor, codes: torch.Tensor) -> None:
        """rows (n, h, dh), codes (n, h): EMA of cluster sizes and sums; restart dead codes."""
        onehot = F.one_hot(codes, self.num_codes).to(rows.dtype)  # (n, h, K)
        size = onehot.sum(0)  # (h, K)
        total = torch.einsum("nhk,nhd->hkd", onehot, rows)
        d = self.ema_decay
        self.ema_size.mul_(d).add_(size, alpha=1 - d)
        self.ema_sum.mul_(d).add_(total, alpha=1 - d)
        n = self.ema_size.sum(-1, keepdim=True)
        smoothed = (self.ema_size + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(-1))
        dead = self.ema_size < self.dead_code_threshold
        if dead.any():
            for h in range(self.num_heads):
                idx = dead[h].nonzero().flatten()
                if len(idx):
                    pick = torch.randint(0, rows.shape[0], (len(idx),), device=rows.device)
                    self.codebook[h, idx] = rows[pick, h]
                    self.ema_sum[h, idx] = rows[pick, h]
                    self.ema_size[h, idx] = 1.0

    @torch.no_grad()
    def kmeans_init(self, samples: torch.Tensor, iters: int = 10, seed: int = 0) -> None:
        """Initialise every head's codebook by k-means on real activations samples (n, h, dh)."""
        g = torch.Generator().manual_seed(seed)
        n = samples.shape[0]
        for h in range(self.num_heads):
            x = samples[:, h].float()
            centers = x[torch.randperm(n, generator=g)[: self.num_codes]].clone()
            if centers.shape[0] < self.num_codes:  # fewer samples than codes: jitter duplicates
                extra = x[torch.randint(0, n, (self.num_codes - centers.shape[0],), generator=g)]
                centers = torch.cat([centers, extra + 1e-3 * torch.randn(extra.shape, generator=g).to(x.device)])
            for _ in range(iters):
                assign = torch.cdist(x, centers).argmin(1)
                sums = torch.zeros_like(centers).index_add_(0, assign, x)
                counts = torch.bincount(assign, minlength=self.num_codes).float()
                empty = counts == 0
                centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
            self.codebook[h] = centers
            if self.ema_decay > 0:
                counts = torch.bincount(torch.cdist(x, centers).argmin(1), minlength=self.num_codes).float()
                self.ema_size[h] = counts.clamp(min=1.0)
                self.ema_sum[h] = centers * self.ema_size[h, :, None]
        self.initialised.fill_(True)
