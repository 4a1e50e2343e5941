"""Configuration dataclasses of a VQ transformer: architecture, VQ and the whole model.

These are plain data (no torch) so the exporter and checkpoints can serialise them to JSON. The choices
and consistency rules are the runtime's (`vqinc.runtime.format.spec`): a config that trains is a config
that loads, checked in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vqinc.runtime.format.spec import FAMILIES, ModelSpec


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

    def __post_init__(self) -> None:  # the rest is checked with the whole model (ModelConfig)
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} not supported; choose one of {FAMILIES}")

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
        self.spec()  # the runtime's checks (ConfigError, a ValueError, names the field and the rule)

    def spec(self) -> ModelSpec:
        """What the runtime will read from the exported manifest (validated)."""
        return ModelSpec.from_dict(self.to_dict())

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

