"""The VQ transformer in PyTorch, written as the stages the exporter cuts into graphs.

Per layer: `qkv` (norm + projections + RoPE), causal attention, VQ of the per-head output,
`post` (out-projection + residual + norm + MLP + residual). Everything but attention is
position-wise, which is what lets the runtime recompute only rows whose inputs or codes changed.
Shapes: (T, ...) or (B, T, ...) for every stage; exported graphs use (T, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vqinc.model.config import ModelConfig
from vqinc.model.vq import VectorQuantizer


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(family: str, d: int, eps: float) -> nn.Module:
    return RMSNorm(d, eps) if family == "llama" else nn.LayerNorm(d, eps=eps)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, Llama's rotate-half convention. x (..., T, h, dh), positions (..., T)."""
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))  # (dh/2,)
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, dh/2)
    emb = torch.cat([freqs, freqs], dim=-1)[..., None, :]  # (..., T, 1, dh)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (..., T, H, dh), k/v (..., T, Hkv, dh) -> (..., T, H, dh); plain math so it exports cleanly."""
    group = q.shape[-2] // k.shape[-2]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=-2), v.repeat_interleave(group, dim=-2)
    q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)  # (..., H, T, dh)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (..., H, T, T)
    t = q.shape[-2]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(-3, -2)


def fused_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Same function as `causal_attention` through `F.scaled_dot_product_attention` (fused kernels).

    Used only in training mode: about 3x faster at 1,024 tokens on CPU, but its float rounding differs
    from the exported graphs', so evaluation and export keep the plain math (codes must match exactly).
    """
    group = q.shape[-2] // k.shape[-2]
    q, k, v = q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)  # (..., H, T, dh)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1).transpose(-3, -2)


def attention_with_past(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (S, H, dh) of the last S positions, k/v (P+S, Hkv, dh) of all P+S -> (S, H, dh).

    Query i (position P+i) sees keys 0..P+i: the causal mask of the full sequence, cut to its last S rows.
    Same math as `causal_attention` when P = 0."""
    group = q.shape[-2] // k.shape[-2]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=-2), v.repeat_interleave(group, dim=-2)
    s, t = q.shape[0], k.shape[0]
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (H, S, dh), (H, T, dh)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (H, S, T)
    visible = torch.arange(t, device=q.device)[None, :] <= torch.arange(t - s, t, device=q.device)[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)


class Block(nn.Module):
    """One pre-norm decoder layer with VQ on the per-head attention output."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        a = cfg.arch
        self.cfg, self.layer_idx = cfg, layer_idx
        bias = a.family == "opt"
        dh = a.head_dim
        self.attn_norm = make_norm(a.family, a.d_model, a.norm_eps)
        self.q_proj = nn.Linear(a.d_model, a.num_heads * dh, bias=bias)
        self.k_proj = nn.Linear(a.d_model, a.num_kv_heads * dh, bias=bias)
        self.v_proj = nn.Linear(a.d_model, a.num_kv_heads * dh, bias=bias)
        self.o_proj = nn.Linear(a.num_heads * dh, a.d_model, bias=bias)
        self.mlp_norm = make_norm(a.family, a.d_model, a.norm_eps)
        self.gate_proj = nn.Linear(a.d_model, a.d_ff, bias=False) if a.family == "llama" else None
        self.up_proj = nn.Linear(a.d_model, a.d_ff, bias=bias)
        self.down_proj = nn.Linear(a.d_ff, a.d_model, bias=bias)
        v = cfg.vq
        self.vq = VectorQuantizer(a.num_heads, v.num_codes, dh, v.commitment, v.ema_decay, v.dead_code_threshold)
        self.res_vq = (
            VectorQuantizer(v.residual_heads, v.num_codes, a.d_model // v.residual_heads, v.commitment,
                            v.ema_decay, v.dead_code_threshold)
            if v.residual else None
        )

    def qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """x (..., T, d), positions (..., T) -> q (..., T, H, dh), k, v (..., T, Hkv, dh)."""
        a = self.cfg.arch
        h = self.attn_norm(x)
        q = self.q_proj(h).unflatten(-1, (a.num_heads, a.head_dim))
        k = self.k_proj(h).unflatten(-1, (a.num_kv_heads, a.head_dim))
        v = self.v_proj(h).unflatten(-1, (a.num_kv_heads, a.head_dim))
        if self.cfg.positions == "rope":
            q, k = rope(q, positions, a.rope_theta), rope(k, positions, a.rope_theta)
        return q, k, v

    def post(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """x (..., T, d), attn (..., T, H, dh) (already quantised) -> layer output (..., T, d)."""
        x = x + self.o_proj(attn.flatten(-2))
        h = self.mlp_norm(x)
        if self.gate_proj is not None:
            h = F.silu(self.gate_proj(h)) * self.up_proj(h)
        else:
            h = F.relu(self.up_proj(h))
        return x + self.down_proj(h)

    def post_codes(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The exported post stage: decode codes, then `post`, then optional residual VQ."""
        out = self.post(x, self.vq.decode(codes))
        if self.res_vq is not None:
            out = self.res_vq.decode(self.res_vq.encode(out.unflatten(-1, (self.res_vq.num_heads, -1)))).flatten(-2)
        return out


@dataclass(frozen=True)
class KVCache:
    """What a causal LM keeps of a document's prefix (Hugging Face's `past_key_values`), plus the pooling
    state the classification head needs to resume: the running sum of final hidden states at every position."""

    keys: tuple[torch.Tensor, ...]  # per layer (P, Hkv, dh)
    values: tuple[torch.Tensor, ...]  # per layer (P, Hkv, dh)
    hidden_sums: torch.Tensor  # (P, d): sum of final hidden states of positions 0..i, for every i

    @property
    def length(self) -> int:
        return int(self.hidden_sums.shape[0])

    def truncate(self, n: int) -> KVCache:
        """The cache of the first n positions (views, no copy)."""
        return replace(self, keys=tuple(k[:n] for k in self.keys), values=tuple(v[:n] for v in self.values),
                       hidden_sums=self.hidden_sums[:n])


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (B, C)
    hidden: torch.Tensor  # (B, T, d) after the final norm
    codes: list[torch.Tensor]  # per layer (B, T, H) int64
    vq_loss: torch.Tensor  # scalar
    attn: list[torch.Tensor]  # per layer (B, T, H, dh): attention output before VQ (what the codes encode)


class VQTransformer(nn.Module):
    """Causal decoder (Llama or OPT family) with multi-head VQ and a classification head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        a = cfg.arch
        self.embed_tokens = nn.Embedding(a.vocab_size, a.d_model)
        self.embed_positions = (
            nn.Embedding(a.max_positions + a.position_offset, a.d_model) if cfg.positions == "learned" else None
        )
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(a.num_layers))
        self.final_norm = make_norm(a.family, a.d_model, a.norm_eps)
        self.classifier = nn.Linear(a.d_model, len(cfg.labels))

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + self.cfg.arch.position_offset)
        return x

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, d), mask (B, T) bool (right padding) -> (B, d)."""
        if self.cfg.pooling == "mean":
            m = mask.to(hidden.dtype)[..., None]
            return (hidden * m).sum(-2) / m.sum(-2).clamp(min=1.0)
        last = mask.long().sum(-1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0]), last]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> ForwardOutput:
        """ids (B, T) int64 with BOS first, right-padded; mask (B, T) bool (True = token); `positions`
        (B, T) float, strictly increasing per row: what RoPE sees (label-invariant training,
        model/positions.py; default 0, 1, 2, ...)."""
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        if positions is None:
            positions = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        elif self.cfg.positions != "rope":
            raise ValueError(f"positions= is for RoPE models (label-invariant training); this one has "
                             f"positions {self.cfg.positions!r}")
        x = self.embed(ids, positions)
        codes, attns, vq_loss = [], [], x.new_zeros(())
        attention = fused_causal_attention if self.training else causal_attention
        for block in self.layers:
            q, k, v = block.qkv(x, positions)
            attn = attention(q, k, v)  # right padding: causal masking already hides pads
            attns.append(attn)
            if self.cfg.vq.enabled:
                out = block.vq(attn, valid=mask)
                attn, vq_loss = out.quantized, vq_loss + out.loss
                codes.append(out.codes)
            x = block.post(x, attn)
            if block.res_vq is not None and self.cfg.vq.enabled:
                r = block.res_vq(x.unflatten(-1, (block.res_vq.num_heads, -1)), valid=mask)
                x, vq_loss = r.quantized.flatten(-2), vq_loss + r.loss
        hidden = self.final_norm(x)
        return ForwardOutput(self.classifier(self.pool(hidden, mask)), hidden, codes, vq_loss, attns)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., T, vocab) from final hidden states, tied to the token embedding.

        Used only by causal-LM pretraining of scratch models; the exported model has no LM head.
        """
        return hidden @ self.embed_tokens.weight.T


    def forward_cached(self, ids: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """One document (no batch axis): ids (S,) continue the prefix held in `cache` -> logits (1, C) of the
        whole document and the cache of prefix + ids.

        The standard causal-LM KV cache: only the S new positions run; they attend the cached keys. Equals
        `forward` on the whole sequence (tested); VQ runs as in the exported graphs (decode of the codes)."""
        p = 0 if cache is None else cache.length
        positions = torch.arange(p, p + ids.shape[0], device=ids.device)
        x = self.embed(ids, positions)  # (S, d)
        keys, values = [], []
        for i, block in enumerate(self.layers):
            q, k, v = block.qkv(x, positions)  # (S, H, dh), (S, Hkv, dh)
            if cache is not None:
                k, v = torch.cat([cache.keys[i], k]), torch.cat([cache.values[i], v])
            keys.append(k)
            values.append(v)
            attn = attention_with_past(q, k, v)
            x = block.post_codes(x, block.vq.encode(attn)) if self.cfg.vq.enabled else block.post(x, attn)
        hidden = self.final_norm(x)  # (S, d)
        sums = hidden.cumsum(0)
        if p:
            sums = sums + cache.hidden_sums[-1]
        new = KVCache(tuple(keys), tuple(values), sums if cache is None else torch.cat([cache.hidden_sums, sums]))
        pooled = sums[-1:] / new.length if self.cfg.pooling == "mean" else hidden[-1:]
        return self.classifier(pooled), new
