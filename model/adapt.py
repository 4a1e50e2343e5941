"""Adaptation of Hugging Face causal LMs (OPT, Llama family) into a `VQTransformer`.

Copies the base model's weights into our stage-structured module; the LM head is dropped and a
fresh classification head added. VQ codebooks start random: initialise them with k-means on
real activations (`vqinc.model.train.kmeans_init_all`) before distillation.
"""

from __future__ import annotations

import torch

from vqinc.model.config import ArchConfig, ModelConfig, VQConfig
from vqinc.model.transformer import VQTransformer

SUPPORTED = ("llama", "opt")


def arch_from_hf(hf_config, max_positions: int | None = None) -> ArchConfig:
    """ArchConfig from a transformers config (LlamaConfig / OPTConfig)."""
    t = getattr(hf_config, "model_type", None)
    if t == "llama":
        return ArchConfig(
            family="llama", vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            d_ff=hf_config.intermediate_size, norm_eps=hf_config.rms_norm_eps,
            rope_theta=_rope_theta(hf_config),
            max_positions=max_positions or hf_config.max_position_embeddings,
            bos_token_id=hf_config.bos_token_id if hf_config.bos_token_id is not None else 0,
        )
    if t == "opt":
        if not hf_config.do_layer_norm_before or hf_config.word_embed_proj_dim != hf_config.hidden_size:
            raise ValueError("only pre-norm OPT with word_embed_proj_dim == hidden_size (e.g. OPT-125M) is supported")
        return ArchConfig(
            family="opt", vocab_size=hf_config.vocab_size, d_model=hf_config.hidden_size,
            num_layers=hf_config.num_hidden_layers, num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_attention_heads, d_ff=hf_config.ffn_dim, norm_eps=1e-5,
            max_positions=min(max_positions or hf_config.max_position_embeddings,
                              hf_config.max_position_embeddings),
            bos_token_id=hf_config.bos_token_id if hf_config.bos_token_id is not None else 2,
        )
    raise ValueError(f"model_type {t!r} is not supported; supported: {SUPPORTED}")


def _rope_theta(hf_config) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


@torch.no_grad()
def vqify(
    hf_model,
    labels: tuple[str, ...],
    positions: str | None = None,
    vq: VQConfig | None = None,
    pooling: str = "mean",
    num_layers: int | None = None,
    max_positions: int | None = None,
) -> VQTransformer:
    """A VQTransformer holding `hf_model`'s weights (optionally only its first `num_layers` layers).

    positions defaults to the base model's own ("rope" for Llama, "learned" for OPT).
    """
    arch = arch_from_hf(hf_model.config, max_positions)
    if num_layers is not None:
        if not 1 <= num_layers <= arch.num_layers:
            raise ValueError(f"num_layers must be in [1, {arch.num_layers}], got {num_layers}")
        arch = ArchConfig(**{**arch.__dict__, "num_layers": num_layers})
    positions = positions or ("rope" if arch.family == "llama" else "learned")
    cfg = ModelConfig(arch=arch, vq=vq or VQConfig(), positions=positions, pooling=pooling, labels=tuple(labels))
    model = VQTransformer(cfg)
    sd = hf_model.state_dict()
    pre = "model." if arch.family == "llama" else "model.decoder."
    out = {"embed_tokens.weight": sd[pre + "embed_tokens.weight"]}
    if model.embed_positions is not None:
        table = sd[pre + "embed_positions.weight"]
        out["embed_positions.weight"] = table[: model.embed_positions.num_embeddings]
    names = _layer_names(arch.family)
    for i in range(arch.num_layers):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                key = f"{pre}layers.{i}.{theirs}.{kind}"
                if key in sd:
                    out[f"layers.{i}.{ours}.{kind}"] = sd[key]
    final = "norm" if arch.family == "llama" else "final_layer_norm"
    for kind in ("weight", "bias"):
        if f"{pre}{final}.{kind}" in sd:
            out[f"final_norm.{kind}"] = sd[f"{pre}{final}.{kind}"]
    missing, unexpected = model.load_state_dict(out, strict=False)
    weights_missing = [k for k in missing if not k.startswith(("classifier.",)) and ".vq." not in k
                       and ".res_vq." not in k]
    assert not weights_missing and not unexpected, (weights_missing, unexpected)
    return model


def _layer_names(family: str) -> dict[str, str]:
    if family == "llama":
        return {
            "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
            "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
            "mlp_norm": "post_attention_layernorm", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
            "down_proj": "mlp.down_proj",
        }
    return {
        "attn_norm": "self_attn_layer_norm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj", "o_proj": "self_attn.out_proj", "mlp_norm": "final_layer_norm",
        "up_proj": "fc1", "down_proj": "fc2",
    }


def scratch_model(arch: ArchConfig, labels: tuple[str, ...], positions: str = "none",
                  vq: VQConfig | None = None, pooling: str = "mean", seed: int = 0) -> VQTransformer:
    """A randomly initialised VQTransformer (for small from-scratch models such as the bundled default)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, vq=vq or VQConfig(), positions=positions, pooling=pooling, labels=tuple(labels))
    model = VQTransformer(cfg)
    for name, p in model.named_parameters():
        if p.dim() == 2 and "codebook" not in name:
            torch.nn.init.normal_(p, std=0.02)
    return model
