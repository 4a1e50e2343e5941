"""Configuration dataclasses of a VQ transformer: architecture, VQ and the whole model.

These are plain data (no torch) so the exporter and checkpoints can serialise them to JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("llama", "opt")
POSITION_MODES = ("none", "rope", "learned")
POOLINGS = ("mean", "last")


@dataclass(frozen=True)
class ArchConfig:
    """Sizes of the base causal LM; `family` picks norm, biases, MLP and native positions."""

    family: str
    """"llama" (RMSNorm, SwiGLU, no biases, RoPE) or "opt" (LayerNorm, ReLU MLP, biases, learned positions)."""
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_ff: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    """RoPE base (used only in positional mode "rope")."""
    max_positions: int = 2048
    """Longest document in tokens (BOS included)."""
    bos_token_id: int = 0
    """Token every document starts with: no graph ever runs on zero rows."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} not supported; choose one of {FAMILIES}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def position_offset(self) -> int:
        """OPT's learned position table starts at index 2 (a fairseq legacy)."""
        return 2 if self.family == "opt" else 0


@dataclass(frozen=True)
class VQConfig:
    """Multi-head vector quantisation of each attention block's per-head output."""

    num_codes: int = 64
    """Codes per head (K)."""
    enabled: bool = True
    """False: identity (the un-quantised teacher)."""
    commitment: float = 0.25
    """Weight of ‖x − sg(q)‖² in the loss."""
    ema_decay: float = 0.99
    """EMA codebook decay; 0 learns the codebook by gradient instead."""
    dead_code_threshold: float = 1e-3
    """EMA cluster size under which a code is restarted from a random activation."""
    residual: bool = False
    """Also quantise each layer's output (the residual stream), with `residual_heads` heads."""
    residual_heads: int = 8


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the computation of a VQ model (and so its exported graphs)."""

    arch: ArchConfig
    vq: VQConfig = field(default_factory=VQConfig)
    positions: str = "none"
    """"none" (NoPE), "rope" or "learned"; see the README on what each costs per edit."""
    pooling: str = "mean"
    """Classification input: "mean" of final states or the "last" token."""
    labels: tuple[str, ...] = ("negative", "positive")

    def __post_init__(self) -> None:
        if self.positions not in POSITION_MODES:
            raise ValueError(f"positions {self.positions!r} not in {POSITION_MODES}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} not in {POOLINGS}")
        if self.positions == "learned" and self.arch.family != "opt":
            raise ValueError("positions 'learned' needs a learned position table: only family 'opt' has one")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be >= 2 distinct names, got {list(self.labels)}")
        if self.vq.residual and self.arch.d_model % self.vq.residual_heads:
            raise ValueError(f"d_model {self.arch.d_model} not a multiple of residual_heads {self.vq.residual_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        try:
            return cls(
                arch=ArchConfig(**d["arch"]),
                vq=VQConfig(**d.get("vq", {})),
                positions=d.get("positions", "none"),
                pooling=d.get("pooling", "mean"),
                labels=tuple(d["labels"]),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"invalid model config: {e}") from e

    def fingerprint(self) -> str:
        """Hash of everything that changes the graphs (weights are hashed separately by the exporter)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
