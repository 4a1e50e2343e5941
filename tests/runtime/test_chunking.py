"""The content-defined chunker (runtime/text/chunking.py): pure functions, no model, no ORT."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vqinc.runtime.text.chunking import ChunkConfig, chunk_bounds, rechunk

CFG = ChunkConfig(max_tokens=40, min_chars=30, period=3, max_chars=160, hash_window=6, single_max_chars=60)
_TOKEN = re.compile(r"\w{1,4}|[^\w\s]|\s+")


def counter(text: str):
    """A stand-in tokenizer: words split every 4 characters, punctuation and whitespace runs (a function of the
    slice alone, like a real tokenizer)."""
    return lambda a, b: len(_TOKEN.findall(text[a:b]))


def bounds(text: str, cfg: ChunkConfig = CFG) -> list[int]:
    return chunk_bounds(text, cfg, counter(text))


lines = st.lists(st.text(alphabet="ab cd,\u00e9\U0001f600", max_size=40), max_size=40)
texts = lines.map("\n".join)


def edits(text: str):
    return st.tuples(st.integers(0, len(text)), st.integers(0, 30), st.text(alphabet="xy \n", max_size=50))


def apply(text: str, at: int, n: int, s: str) -> tuple[str, int, int, int]:
    end = min(len(text), at + n)
    return text[:at] + s + text[end:], at, end, at + len(s)


def check_valid(text: str, b: list[int], cfg: ChunkConfig = CFG) -> None:
    assert b[0] == 0 and b[-1] == len(text)
    count = counter(text)
    if len(b) == 2:
        return  # one chunk: either the single-chunk rule, or a text shorter than any cut
    assert all(x < y for x, y in zip(b, b[1:], strict=False)), "chunks are never empty"
    for x, y in zip(b, b[1:], strict=False):
        assert count(x, y) <= cfg.max_tokens
        assert y - x <= cfg.max_chars


@given(texts)
def test_deterministic_and_within_bounds(text):
    b = bounds(text)
    assert b == bounds(text)
    check_valid(text, b)
    if len(text) <= CFG.single_max_chars and counter(text)(0, len(text)) <= CFG.max_tokens:
        assert b == [0, len(text)]
    else:
        assert b[1] >= min(len(text), 1)


@given(st.data())
def test_rechunk_equals_fresh_chunking(data):
    text = data.draw(texts)
    old = bounds(text)
    new_text, a, e, ne = apply(text, *data.draw(edits(text)))
    got = rechunk(old, new_text, a, e, ne, CFG, counter(new_text))
    assert got == bounds(new_text)
    check_valid(new_text, got)


@given(st.data())
def test_boundaries_before_an_edit_stay(data):
    text = data.draw(texts)
    old = bounds(text)
    new_text, a, _, _ = apply(text, *data.draw(edits(text)))
    new = bounds(new_text)
    if len(old) > 2 and len(new) > 2:  # both chunked by content (not the single-chunk rule)
        # the cuts (not the text's end) at or before the edit are where they were
        assert [x for x in new[:-1] if x <= a] == [x for x in old[:-1] if x <= a]


@given(st.text(alphabet="\U0001f600\u00e9a", min_size=200, max_size=400))
def test_no_line_breaks_still_fits(text):
    """A text without a line end or a space is cut between characters where its tokens fit."""
    cfg = ChunkConfig(max_tokens=10, min_chars=20, period=3, max_chars=60, hash_window=6, single_max_chars=20)
    b = chunk_bounds(text, cfg, lambda a, z: len(text[a:z].encode()))  # one token per byte: the worst case
    check_valid(text, b, cfg)
    assert all(len(text[x:y].encode()) <= 10 for x, y in zip(b, b[1:], strict=False))


def test_single_chunk_rule():
    short = "a short text\nof two lines"
    assert bounds(short) == [0, len(short)]
    assert bounds("") == [0, 0]
    long = "\n".join(f"line {i} of a longer text" for i in range(40))
    assert len(bounds(long)) > 3


def test_locality_of_small_edits():
    """Typing-sized edits of a long text move few boundaries: the chunks after the edit's chunk resynchronise."""
    rng = random.Random(0)
    words = ["the", "proposal", "adds", "a", "keyword", "grammar", "code", "keeps", "working"]
    text = "\n".join(" ".join(rng.choices(words, k=rng.randint(0, 9))) for _ in range(3000))
    cfg = ChunkConfig.for_window(4095)  # the bundled model's defaults: chunks of ~1,000 tokens
    old = chunk_bounds(text, cfg, counter(text))
    assert len(old) > 20
    changed = []
    for _ in range(300):
        at = rng.randrange(len(text))
        n, s = rng.choice([(0, "x"), (1, ""), (0, "new words "), (3, "y"), (0, "\n")])
        new_text, a, e, ne = apply(text, at, n, s)
        new = rechunk(old, new_text, a, e, ne, cfg, counter(new_text))
        shifted = {x if x <= a else x + ne - e for x in old}
        changed.append(len(set(new) ^ shifted))
    changed.sort()
    assert changed[len(changed) // 2] == 0, "most keystrokes move no boundary"
    assert changed[int(0.95 * len(changed))] <= 2, changed[-20:]
    assert max(changed) <= 10


@pytest.mark.parametrize("kw", [{"max_tokens": 4}, {"min_chars": 0}, {"max_chars": 10, "min_chars": 10},
                                {"period": True}])
def test_config_rejects_bad_values(kw):
    args = {"max_tokens": 40, **kw}
    with pytest.raises(ValueError, match="ChunkConfig"):
        ChunkConfig(**args)
