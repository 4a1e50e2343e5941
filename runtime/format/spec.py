"""`ModelSpec`: the typed, validated model configuration the runtime reads (from manifest.json's
`model` object). Owns the checks of types, ranges and consistency of the architecture numbers; it
does not know about files or graphs (that is `manifest.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FAMILIES = ("llama", "opt")
POSITION_MODES = ("none", "rope", "learned")
POOLINGS = ("mean", "last")
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16
MAX_POSITIONS = 1 << 20
MAX_VOCAB = 1 << 24
MAX_LABELS = 1 << 16
MAX_POSITION_SCALE = 1 << 20


class ConfigError(ValueError):
    """A model configuration value has the wrong type, is out of range, or contradicts another one."""


@dataclass(frozen=True)
class ModelSpec:
    """The numbers every stage graph was exported with (ARCHITECTURE.md, "Shapes and names")."""

    family: str
    """"llama" or "opt"."""
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_ff: int
    max_positions: int
    """Longest document in tokens, BOS included."""
    bos_token_id: int
    """Token every document starts with (so no graph ever runs on zero rows)."""
    num_codes: int
    """VQ codes per head (K)."""
    positions: str
    """"none", "rope" or "learned"."""
    pooling: str
    """"mean" or "last"."""
    labels: tuple[str, ...]
    residual_vq: bool = False
    residual_heads: int = 0
    position_scale: int = 1
    """RoPE position labels (runtime/engine/labels.py): graphs take integer labels and RoPE sees
    label / position_scale. 1: plain positions, every insertion renumbers the rows after it."""

    @property
    def labelled(self) -> bool:
        """Does an insertion keep the labels of the rows after it (RoPE with position_scale > 1)?"""
        return self.position_scale > 1

    @property
    def label_limit(self) -> int:
        """Largest label a document may carry (beyond it, a compaction)."""
        return 2 * self.max_positions * self.position_scale

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def from_dict(cls, model: Any) -> ModelSpec:
        """Parse and validate manifest.json's `model` object; ConfigError names the field and the rule."""
        if not isinstance(model, dict):
            raise ConfigError(f"model must be an object, got {type(model).__name__}")
        arch, vq = _obj(model, "arch"), _obj(model, "vq")
        spec = cls(
            family=_choice(arch, "family", FAMILIES, "arch."),
            vocab_size=_int(arch, "vocab_size", 1, MAX_VOCAB, "arch."),
            d_model=_int(arch, "d_model", 1, MAX_WIDTH, "arch."),
            num_layers=_int(arch, "num_layers", 1, MAX_LAYERS, "arch."),
            num_heads=_int(arch, "num_heads", 1, MAX_WIDTH, "arch."),
            num_kv_heads=_int(arch, "num_kv_heads", 1, MAX_WIDTH, "arch."),
            d_ff=_int(arch, "d_ff", 1, 1 << 20, "arch."),
            max_positions=_int(arch, "max_positions", 2, MAX_POSITIONS, "arch."),
            bos_token_id=_int(arch, "bos_token_id", 0, MAX_VOCAB, "arch."),
            num_codes=_int(vq, "num_codes", 1, 1 << 16, "vq."),
            positions=_choice(model, "positions", POSITION_MODES, ""),
            pooling=_choice(model, "pooling", POOLINGS, ""),
            labels=_labels(model),
            residual_vq=_bool(vq, "residual", "vq.") if "residual" in vq else False,
            residual_heads=_int(vq, "residual_heads", 1, MAX_WIDTH, "vq.") if vq.get("residual") else 0,
            position_scale=_int(model, "position_scale", 1, MAX_POSITION_SCALE, "") if "position_scale" in model else 1,
        )
        spec._check_consistency()
        return spec

    def _check_consistency(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"arch.d_model {self.d_model} is not a multiple of arch.num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"arch.num_heads {self.num_heads} is not a multiple of arch.num_kv_heads "
                              f"{self.num_kv_heads}")
        if self.bos_token_id >= self.vocab_size:
            raise ConfigError(f"arch.bos_token_id {self.bos_token_id} is outside the vocabulary "
                              f"[0, {self.vocab_size})")
        if self.positions == "learned" and self.family != "opt":
            raise ConfigError("positions 'learned' needs family 'opt' (a learned position table)")
        if self.position_scale & (self.position_scale - 1):
            raise ConfigError(f"position_scale {self.position_scale} is not a power of two")
        if self.position_scale > 1 and self.positions != "rope":
            raise ConfigError(f"position_scale {self.position_scale} needs positions 'rope' (labels are RoPE's)")
        if self.residual_vq and self.d_model % self.residual_heads:
            raise ConfigError(f"arch.d_model {self.d_model} is not a multiple of vq.residual_heads "
                              f"{self.residual_heads}")


def _obj(d: dict, key: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ConfigError(f"{key} must be an object, got {type(v).__name__ if key in d else 'nothing'}")
    return v


def _int(d: dict, key: str, lo: int, hi: int, where: str) -> int:
    if key not in d:
        raise ConfigError(f"{where}{key} is missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not
                                                                   (math.isfinite(v) and v.is_integer())):
        raise ConfigError(f"{where}{key} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ConfigError(f"{where}{key} = {v} is out of range [{lo}, {hi}]")
    return v


def _bool(d: dict, key: str, where: str) -> bool:
    v = d[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{where}{key} must be true or false, got {v!r}")
    return v


def _choice(d: dict, key: str, options: tuple[str, ...], where: str) -> str:
    v = d.get(key)
    if v not in options:
        raise ConfigError(f"{where}{key} must be one of {list(options)}, got {v!r}")
    return v


def _labels(model: dict) -> tuple[str, ...]:
    v = model.get("labels")
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"labels must be a list of strings, got {v!r}"[:200])
    if not 2 <= len(v) <= MAX_LABELS or len(set(v)) != len(v):
        raise ConfigError(f"labels must be 2..{MAX_LABELS} distinct names, got {len(v)} ({len(set(v))} distinct)")
    return tuple(v)
