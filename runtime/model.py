"""`Model`: a loaded model directory (read-only, shared by any number of documents)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from vqinc.runtime.engine import Engine
from vqinc.runtime.manifest import Manifest, ModelDirError, load_manifest
from vqinc.runtime.sessions import Sessions


def default_model_dir() -> Path:
    """The model bundled with the package (see the README for how it was trained)."""
    return Path(str(resources.files("vqinc.runtime") / "default_model"))


class Model:
    """Sessions + tokenizer + manifest of one exported VQ model."""

    def __init__(self, root: Path, manifest: Manifest, sessions: Sessions, tokenizer: Tokenizer):
        self.root, self.manifest, self.sessions, self.tokenizer = root, manifest, sessions, tokenizer
        self.engine = Engine(sessions)
        self.providers: list[str] = sessions.embed.session.get_providers()  # what ORT runs on (runtime/providers.py)
        a = manifest.arch
        self.num_layers = manifest.num_layers
        self.d_model, self.num_heads = int(a["d_model"]), int(a["num_heads"])
        self.num_kv_heads, self.vocab_size = int(a["num_kv_heads"]), int(a["vocab_size"])
        self.head_dim = self.d_model // self.num_heads
        self.labels = manifest.labels
        self.max_positions = manifest.max_positions
        self.bos_token_id = manifest.bos_token_id

    @classmethod
    def load(cls, model_dir: str | Path | None = None, providers: list[str] | None = None,
             threads: int | None = None) -> Model:
        """Load and validate a model directory (default: the bundled model)."""
        root = Path(model_dir) if model_dir is not None else default_model_dir()
        manifest = load_manifest(root)
        try:
            tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer))
        except Exception as e:
            raise ModelDirError(f"{root}: {manifest.tokenizer} is not a valid tokenizers file ({e})") from e
        if tokenizer.get_vocab_size() > int(manifest.arch["vocab_size"]):
            raise ModelDirError(f"{root}: {manifest.tokenizer} has {tokenizer.get_vocab_size()} tokens, more "
                                f"than the model's vocabulary {manifest.arch['vocab_size']}")
        return cls(root, manifest, Sessions(root, manifest, providers, threads), tokenizer)

    def document(self, text: str = ""):
        """A new incremental document holding `text`."""
        from vqinc.runtime.document import Document

        return Document(self, text)

    def document_ids(self, ids: list[int]):
        """A document built from token ids (BOS excluded) rather than text."""
        from vqinc.runtime.document import Document

        return Document(self, "", _ids=[int(i) for i in ids])

    def classify(self, text: str) -> tuple[str, np.ndarray]:
        """One-shot: (label, probabilities)."""
        doc = self.document(text)
        return doc.label, doc.probs

    def full_logits(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The monolithic graph on `text`: (logits (C,), codes (L, n, H)); the baseline contender."""
        ids = self.encode_ids(text)
        logits, codes = self.sessions.full.run(ids=ids)
        return logits[0], codes

    def encode_ids(self, text: str) -> np.ndarray:
        """Token ids with BOS first, as every graph expects."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray([self.bos_token_id, *ids], np.int64)
