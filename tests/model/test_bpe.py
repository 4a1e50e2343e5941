"""The from-scratch model's byte-level BPE: BOS at 0, no added tokens, lossless, deterministic."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from tests_support import PEP_TYPES
from tokenizers import Tokenizer, decoders, pre_tokenizers

from vqinc.model.bpe import save_tokenizer, train_bpe

SAMPLES = ["", "hello", " hello", "Hello, wörld! 😀 中文\n\n\tx = f(1, 2)  # ok", "<s> inside", "\x00\x7f\u2028"]


def _corpus(limit: int = 150_000) -> list[str]:
    texts, size = [], 0
    with gzip.open(PEP_TYPES, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size > limit:
                break
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def tok(corpus: list[str]) -> Tokenizer:
    return train_bpe(corpus, vocab_size=1024)


def test_layout(tok: Tokenizer) -> None:
    assert tok.token_to_id("<s>") == 0
    assert 256 < tok.get_vocab_size() <= 1024
    assert isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel)
    assert isinstance(tok.decoder, decoders.ByteLevel)
    assert tok.post_processor is None
    assert tok.encode("hello").ids != tok.encode(" hello").ids  # no prefix space added


@pytest.mark.parametrize("text", SAMPLES)
def test_lossless_and_adds_nothing(tok: Tokenizer, text: str) -> None:
    for add in (True, False):
        ids = tok.encode(text, add_special_tokens=add).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert (0 in ids) == ("<s>" in text)  # BOS only where the text spells it
    assert tok.encode("").ids == []


def test_deterministic_and_saved(tok: Tokenizer, corpus: list[str], tmp_path: Path) -> None:
    again = train_bpe(iter(corpus), vocab_size=1024)  # any iterable, e.g. a generator
    assert again.to_str() == tok.to_str()
    path = save_tokenizer(tok, tmp_path / "nested" / "tokenizer.json")
    loaded = Tokenizer.from_file(str(path))
    for text in SAMPLES:
        assert loaded.encode(text).ids == tok.encode(text).ids


def test_unk_and_vocab_size() -> None:
    small = train_bpe(["abcabc abcabc"] * 3, vocab_size=260, unk="<unk>")
    assert (small.token_to_id("<s>"), small.token_to_id("<unk>")) == (0, 1)
    assert small.get_vocab_size() == 260


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"texts": "one string"}, TypeError, "iterable of str, not a single str"),
    ({"texts": ["ok", 3]}, TypeError, r"texts\[1\] must be str, got int"),
    ({"vocab_size": 100}, ValueError, "vocab_size must be an int >= 257.*got 100"),
    ({"vocab_size": 2000.0}, ValueError, "vocab_size must be an int"),
    ({"bos": ""}, ValueError, "bos must be a non-empty str"),
    ({"unk": "<s>"}, ValueError, "unk must be None or a non-empty str other than bos"),
])
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"texts": ["some text"], **kwargs}
    with pytest.raises(error, match=match):
        train_bpe(**args)
