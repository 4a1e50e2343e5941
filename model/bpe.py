"""Byte-level BPE tokenizer for the project's small from-scratch model (no torch).

Owns training and saving; loading is `tokenizers.Tokenizer.from_file`. The tokenizer is GPT-2 style:
ByteLevel pre-tokenizer (GPT-2 regex, no prefix space) and decoder, BOS `<s>` at id 0, and no
post-processor, so `encode(text)` never adds tokens: the runtime puts BOS in front itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

NUM_BYTES = 256


def train_bpe(
    texts: Iterable[str], vocab_size: int = 4096, bos: str = "<s>", unk: str | None = None
) -> Tokenizer:
    """Train a byte-level BPE on `texts` (deterministic for the same texts in the same order).

    `bos` gets id 0, `unk` (optional; byte-level BPE never needs it) id 1. Merges need a pair seen
    at least twice, so a small corpus may give fewer than `vocab_size` tokens.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of str, not a single str (wrap it in a list)")
    if not isinstance(bos, str) or not bos:
        raise ValueError(f"bos must be a non-empty str, got {bos!r}")
    if unk is not None and (not isinstance(unk, str) or not unk or unk == bos):
        raise ValueError(f"unk must be None or a non-empty str other than bos {bos!r}, got {unk!r}")
    specials = [bos] if unk is None else [bos, unk]
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < NUM_BYTES + len(specials):
        raise ValueError(f"vocab_size must be an int >= {NUM_BYTES + len(specials)} (256 bytes + special tokens), "
                         f"got {vocab_size!r}")

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_checked(texts), trainer=trainer)
    assert tok.token_to_id(bos) == 0, "special tokens come first in the trained vocabulary"
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write `tok` as a Hugging Face `tokenizer.json` at `path` (parents created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def _checked(texts: Iterable[str]) -> Iterable[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
        yield t
