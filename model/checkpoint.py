"""Checkpoints: `model.safetensors` + `config.json` (ModelConfig and provenance) + `tokenizer.json`.

Everything the exporter needs sits in one directory; nothing refers back to the base model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from vqinc.model.config import ModelConfig
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.format.atomic import replacing_dir

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def weights_sha256(model: VQTransformer) -> str:
    """Hash of every tensor of the state dict, by name: the weights half of a manifest's fingerprint."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: VQTransformer, tokenizer: Tokenizer, out_dir: str | Path,
                    info: dict[str, Any] | None = None) -> Path:
    """Write the three files; `info` (training recipe, metrics) is stored beside the config. Written
    beside `out_dir` and swapped in at the end (other files already in `out_dir` are kept)."""
    out = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = {"format": "vqinc-checkpoint", "version": 1, "model": model.cfg.to_dict(), "info": info or {}}
    with replacing_dir(out, carry=lambda p: p.name not in (WEIGHTS, CONFIG, TOKENIZER)) as stage:
        save_file(state, str(stage / WEIGHTS))
        (stage / CONFIG).write_text(json.dumps(blob, indent=2))
        tokenizer.save(str(stage / TOKENIZER))
    return out


def load_checkpoint(path: str | Path) -> tuple[VQTransformer, Tokenizer, dict[str, Any]]:
    """(model in eval mode, tokenizer, info); clear errors naming the missing or bad file."""
    d = Path(path)
    if not d.is_dir():
        if d.exists():
            raise NotADirectoryError(f"checkpoint {d} is a file; a checkpoint is a directory of {CONFIG}, "
                                     f"{WEIGHTS} and {TOKENIZER}")
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        if not (d / name).is_file():
            raise FileNotFoundError(f"checkpoint {d}: missing {name}")
    try:
        blob = json.loads((d / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{d / CONFIG}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{d / CONFIG}: not UTF-8 text ({e.reason})") from None
    if not isinstance(blob, dict) or blob.get("format") != "vqinc-checkpoint":
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{d / CONFIG}: not a vqinc checkpoint (format={got!r})")
    if not isinstance(blob.get("model"), dict):
        raise ValueError(f"{d / CONFIG}: 'model' must be a JSON object")
    try:
        cfg = ModelConfig.from_dict(blob["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{d / CONFIG}: bad model config ({type(e).__name__}: {_short(e)})") from None
    model = VQTransformer(cfg)
    try:
        state = load_file(str(d / WEIGHTS))
    except Exception as e:  # safetensors' SafetensorError (a truncated or foreign file) is no ValueError
        raise ValueError(f"{d / WEIGHTS}: not a readable safetensors file ({_short(e)})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{d / WEIGHTS}: weights do not match config.json (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    try:
        tok = Tokenizer.from_file(str(d / TOKENIZER))
    except Exception as e:
        raise ValueError(f"{d / TOKENIZER}: not a valid tokenizers file ({_short(e)})") from None
    if tok.get_vocab_size() > cfg.arch.vocab_size:
        raise ValueError(f"{d / TOKENIZER}: vocabulary {tok.get_vocab_size()} exceeds the model's "
                         f"{cfg.arch.vocab_size}")
    return model.eval(), tok, blob.get("info", {})


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
