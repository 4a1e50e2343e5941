"""Incremental tokenisation: every edit gives exactly the from-scratch tokenisation, cheaply."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import PEP_REVISIONS, PEP_TYPES
from tokenizers import Regex, Tokenizer, pre_tokenizers

from vqinc.model.bpe import train_bpe
from vqinc.runtime.replay.traces import read_trace_file
from vqinc.runtime.text.tokens import TokenEdit, TokenizedText, diff_texts, retokenize

# Llama-3 / tiktoken cl100k pre-tokenizer regex: look-ahead over whitespace runs, newline groups
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
HYP = settings(max_examples=100, deadline=None, derandomize=True)

# pieces that stress pre-tokenisation: multi-byte chars, emoji, whitespace runs, contractions,
# digits, the BOS string itself, Unicode spaces and combining marks
PIECES = ["a", "b", "é", "😀", "🇫🇷", " ", "  ", "\n", "\n\n", "\t", "\r\n", "'", "'ll", "s", "1", "234", ".",
          "(", "<s>", "<", "s>", " the", "the", "\u00a0", "\u2028", "\u0301", "中文", "ﬁ", "x_y"]


def _corpus() -> list[str]:
    with gzip.open(PEP_TYPES, "rt", encoding="utf-8") as f:
        texts, size = [], 0
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size > 300_000:
                break
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _corpus()


@pytest.fixture(scope="module")
def byte_level(corpus: list[str]) -> Tokenizer:
    return train_bpe(corpus, vocab_size=4096)


@pytest.fixture(scope="module", params=["gpt2", "llama3", "digits"])
def tokenizer(request: pytest.FixtureRequest, byte_level: Tokenizer) -> Tokenizer:
    """The trained byte-level BPE under three pre-tokenizers used by real models."""
    if request.param == "gpt2":
        return byte_level
    tok = Tokenizer.from_str(byte_level.to_str())
    if request.param == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:  # SmolLM2: digits one by one, then the GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
    return tok


class Counting:
    """A tokenizer proxy that counts `encode` calls and the characters they tokenise."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.calls, self.chars = tok, 0, 0

    def encode(self, text: str, add_special_tokens: bool = True):
        self.calls += 1
        self.chars += len(text)
        return self.tok.encode(text, add_special_tokens=add_special_tokens)


def assert_same(got: TokenizedText, ref: TokenizedText) -> None:
    assert got.text == ref.text
    np.testing.assert_array_equal(got.ids, ref.ids)
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_array_equal(got.word_starts, ref.word_starts)


def check_edit(
    tok: Tokenizer, old: TokenizedText, start: int, end: int, piece: str, margin: int = 8
) -> TokenizedText:
    old_ids = old.ids.copy()
    new, te = retokenize(tok, old, start, end, piece, margin=margin)
    ref = TokenizedText.build(tok, old.text[:start] + piece + old.text[end:])
    assert_same(new, ref)
    assert te.apply(old.ids.tolist()) == ref.ids.tolist()
    assert te.pos + te.n_delete <= len(old)
    np.testing.assert_array_equal(old.ids, old_ids)  # never mutated
    return new


texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=30).map("".join)
# few letters, many spaces and newlines: where pre-token boundaries depend on look-ahead
spacey = st.lists(st.sampled_from(["a", "b", " ", "  ", "\n", "'", "1", "x"]), max_size=14).map("".join)


@st.composite
def edit_sequences(draw: st.DrawFn, real: list[str]) -> tuple[str, list[tuple[float, int, str, int]]]:
    """A base text and edits (where as a fraction of the length, chars deleted, insert, margin)."""
    base = draw(texts | spacey | st.sampled_from(real))
    # margins of 1-2 tokens put the window edges right beside the edit: the re-sync checks must hold
    edits = draw(st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0, 0, 1, 2, 5, 40, 10**6]), texts | spacey,
                                    st.sampled_from([1, 2, 8])), min_size=1, max_size=4))
    return base, edits


@pytest.fixture(scope="module")
def excerpts(corpus: list[str]) -> list[str]:
    return [t[i:i + 400] for t in corpus[:8] for i in (0, 1000, 5000)]


def test_random_edits_match_scratch(tokenizer: Tokenizer, excerpts: list[str]) -> None:
    @HYP
    @given(edit_sequences(excerpts))
    def run(case: tuple[str, list[tuple[float, int, str, int]]]) -> None:
        base, edits = case
        doc = TokenizedText.build(tokenizer, base)
        for frac, span, piece, margin in edits:
            start = int(frac * len(doc.text))
            doc = check_edit(tokenizer, doc, start, min(len(doc.text), start + span), piece, margin)

    run()


def test_real_history_replays_exactly(tokenizer: Tokenizer) -> None:
    """Every atomic edit of a real PEP history (pep-0002: 13 revisions, ~500 edits) through retokenize."""
    trace = next(t for t in read_trace_file(PEP_REVISIONS) if t.doc_id == "pep-0002")
    doc = TokenizedText.build(tokenizer, trace.base)
    ids = doc.ids.tolist()
    for rev, text in zip(trace.revisions, trace.texts(), strict=True):
        for e in rev.edits:
            doc, te = retokenize(tokenizer, doc, e.at, e.at + e.delete, e.insert)
            ids = te.apply(ids)
        assert doc.text == text
        assert_same(doc, TokenizedText.build(tokenizer, text))
        assert ids == doc.ids.tolist()


@pytest.mark.parametrize(("base", "start", "end", "piece"), [
    ("", 0, 0, "hello world"),                      # insert into an empty text
    ("hello world", 0, 11, ""),                     # delete everything
    ("hello world", 0, 11, "something else 😀"),    # whole-document replace
    ("hello world", 0, 0, "  "),                    # at the start
    ("hello world", 11, 11, "\n\n  x"),             # at the end
    ("a" + " " * 50 + "b", 51, 52, " "),            # a whitespace run that reaches the end
    ("a\n\n   x", 6, 7, "\n"),                        # Llama-3: the boundary after "\n\n" moves
    (" \n  b", 4, 5, "\n"),                           # ... a single newline and a space run merge
    ("\n'1\n\n  ba", 7, 8, "\n"),                      # ... a run after the edit joins it
    ("caf\u00e9 na\u00efve", 3, 4, "e\u0301"),      # multi-byte -> combining sequence
    ("emoji 😀😀 here", 7, 7, "🇫🇷"),               # between two 4-byte characters
    ("it is", 2, 2, "'ll"),                         # creates a contraction
    ("<s", 2, 2, ">"),                              # creates the special token's text
])
def test_edge_cases(tokenizer: Tokenizer, base: str, start: int, end: int, piece: str) -> None:
    for margin in (1, 2, 8):
        check_edit(tokenizer, TokenizedText.build(tokenizer, base), start, end, piece, margin)


def test_offsets_are_characters(byte_level: Tokenizer) -> None:
    text = "é😀 中文 x"
    doc = TokenizedText.build(byte_level, text)
    assert doc.offsets.max() <= len(text)
    # byte pieces of one character share its span; the spans tile the text
    spans = [tuple(o) for o in doc.offsets.tolist()]
    assert "".join(text[a:b] for (a, b) in dict.fromkeys(spans)) == text
    assert byte_level.decode(doc.ids.tolist()) == text


def test_one_token_substitution_is_one_token(byte_level: Tokenizer) -> None:
    text = "x = the value of the type and the name"
    doc = TokenizedText.build(byte_level, text)
    i = text.index("type")
    new, te = retokenize(byte_level, doc, i - 1, i + 4, " name")  # " type" -> " name"
    assert (te.n_delete, len(te.ids)) == (1, 1)
    assert te.ids == [byte_level.token_to_id("Ġname")]
    assert new.ids[te.pos] == te.ids[0]


def test_no_op_and_identity_edits(byte_level: Tokenizer) -> None:
    doc = TokenizedText.build(byte_level, "some text here")
    same, te = retokenize(byte_level, doc, 5, 5, "")
    assert same is doc and (te.n_delete, te.ids) == (0, [])
    _, te = retokenize(byte_level, doc, 5, 9, "text")  # replaced by itself
    assert (te.n_delete, te.ids) == (0, [])


def test_cost_is_local(byte_level: Tokenizer, corpus: list[str]) -> None:
    text = "\n\n".join(corpus)
    doc = TokenizedText.build(byte_level, text)
    counting = Counting(byte_level)
    mid = len(text) // 2
    for start, end, piece in [(mid, mid, "x"), (mid, mid + 1, ""), (mid, mid + 1, "Q"), (0, 0, "y"),
                              (len(text), len(text), "z")]:
        counting.calls = counting.chars = 0
        new, te = retokenize(counting, doc, start, end, piece)
        assert counting.calls <= 2 and counting.chars < 2_000, (counting.calls, counting.chars)
        assert len(te.ids) <= 3 and te.n_delete <= 3
    assert_same(new, TokenizedText.build(byte_level, new.text))


@pytest.mark.parametrize(("start", "end", "piece", "error", "match"), [
    (-1, 0, "", ValueError, r"\[-1, 0\).*0 <= start <= end <= 5"),
    (3, 2, "", ValueError, r"\[3, 2\)"),
    (0, 6, "", ValueError, r"\[0, 6\).*<= 5"),
    (1.0, 2, "", TypeError, "start must be an int, got float"),
    (True, 2, "", TypeError, "start must be an int, got bool"),
    (0, "2", "", TypeError, "end must be an int, got str"),
    (0, 1, b"x", TypeError, "new_text_piece must be str, got bytes"),
])
def test_bad_edits_raise_and_change_nothing(byte_level: Tokenizer, start, end, piece, error, match) -> None:
    doc = TokenizedText.build(byte_level, "hello")
    ids = doc.ids.copy()
    with pytest.raises(error, match=match):
        retokenize(byte_level, doc, start, end, piece)
    assert doc.text == "hello"
    np.testing.assert_array_equal(doc.ids, ids)


def test_build_validates(byte_level: Tokenizer) -> None:
    with pytest.raises(TypeError, match="text must be str, got int"):
        TokenizedText.build(byte_level, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="old must be a TokenizedText"):
        retokenize(byte_level, "hello", 0, 0, "x")  # type: ignore[arg-type]
    truncating = Tokenizer.from_str(byte_level.to_str())
    truncating.enable_truncation(8)
    with pytest.raises(ValueError, match="truncation"):
        TokenizedText.build(truncating, "hello")
    doc = TokenizedText.build(byte_level, "hello")
    with pytest.raises(ValueError, match="read-only"):
        doc.ids[0] = 1


@HYP
@given(texts, texts)
def test_diff_texts_is_a_minimal_splice(old: str, new: str) -> None:
    start, end, piece = diff_texts(old, new)
    assert old[:start] + piece + old[end:] == new
    assert 0 <= start <= end <= len(old)
    if start < min(len(old), len(new)):
        assert old[start] != new[start]  # the common prefix is maximal
    if end > start and piece:
        assert old[end - 1] != piece[-1]  # so is the common suffix


def test_diff_texts_long_and_invalid() -> None:
    a = "x" * 100_000 + "abc" + "y" * 50_000
    assert diff_texts(a, a.replace("abc", "aZc")) == (100_001, 100_002, "Z")
    assert diff_texts("same", "same") == (4, 4, "")
    with pytest.raises(TypeError, match="new must be str, got NoneType"):
        diff_texts("a", None)  # type: ignore[arg-type]


def test_token_edit_apply() -> None:
    assert TokenEdit(1, 2, [9]).apply([0, 1, 2, 3]) == [0, 9, 3]
    assert TokenEdit(4, 0, [5, 6]).apply([0, 1, 2, 3]) == [0, 1, 2, 3, 5, 6]
