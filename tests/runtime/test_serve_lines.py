"""`LineIndex` against a naive reference: LSP positions in UTF-16 / UTF-8 / UTF-32 over texts with
`\\n`, `\\r\\n`, bare `\\r`, emoji and other astral characters, under random edit sequences; and a
keystroke in a long text re-splits a few lines, not the text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqinc.runtime.serve.lines import LineIndex, split_lines

PIECES = ["a", "b", " ", "\n", "\r", "\r\n", "é", "日", "🙂", "𝔘", "\u2028", "\x0b", "\x85", "xyz"]


def naive_lines(text: str) -> list[str]:
    """Line contents by the LSP rule (only \\n, \\r\\n, \\r break a line)."""
    return re.split(r"\r\n|\r|\n", text)


def naive_offset(text: str, line: int, character: int, encoding: str) -> int:
    """The spec, spelled out: walk to the line, then count code units character by character."""
    lines = naive_lines(text)
    if line >= len(lines):
        return len(text)
    start = 0
    for m, _ in zip(re.finditer(r"[^\r\n]*(\r\n|\r|\n)", text), range(line), strict=False):
        start = m.end()
    units = 0
    for i, ch in enumerate(lines[line]):
        width = {"utf-16": 2 if ord(ch) > 0xFFFF else 1, "utf-8": len(ch.encode()), "utf-32": 1}[encoding]
        if units + width > character:
            return start + i
        units += width
    return start + len(lines[line])


def naive_position(text: str, offset: int, encoding: str) -> tuple[int, int]:
    head = text[:offset]
    line = len(naive_lines(head)) - 1
    col = naive_lines(head)[-1]
    # a "\r" just before offset followed by "\n" after it: the offset sits inside a terminator
    units = {"utf-16": len(col.encode("utf-16-le")) // 2, "utf-8": len(col.encode()), "utf-32": len(col)}[encoding]
    return line, units


texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@st.composite
def edit_sequences(draw):
    text = draw(texts)
    edits = []
    length = len(text)
    for _ in range(draw(st.integers(1, 12))):
        a = draw(st.integers(0, length))
        b = draw(st.integers(a, length))
        ins = draw(texts)
        edits.append((a, b, ins))
        length += len(ins) - (b - a)
    return text, edits


@pytest.mark.parametrize("block", [2, 64])
@settings(max_examples=120)
@given(case=edit_sequences())
def test_index_matches_naive_reference_under_edits(block, case):
    text, edits = case
    idx = LineIndex(text, block=block)
    for a, b, ins in edits:
        idx.edit(a, b, ins)
        text = text[:a] + ins + text[b:]
        assert idx.text == text and idx.length == len(text)
        assert idx.num_lines == len(naive_lines(text))
        for line in range(idx.num_lines + 1):
            for character in (0, 2, 3, 100):
                for enc in ("utf-16", "utf-8", "utf-32"):
                    assert idx.offset(line, character, enc) == naive_offset(text, line, character, enc), (
                        text, line, character, enc)


@given(text=texts)
def test_position_and_offset_round_trip(text):
    idx = LineIndex(text, block=2)
    for off in range(len(text) + 1):
        if 0 < off < len(text) and text[off - 1] == "\r" and text[off] == "\n":
            continue  # between \r and \n: not a position an editor can name
        for enc in ("utf-16", "utf-8", "utf-32"):
            pos = idx.position(off, enc)
            assert pos == naive_position(text, off, enc)
            assert idx.offset(*pos, enc) == off


def test_utf16_examples():
    idx = LineIndex("a🙂b\r\nx😀\ry\nlast")
    assert idx.num_lines == 4
    assert idx.offset(0, 3) == 2  # 'a' (1 unit) + '🙂' (2 units): before 'b', 2 code points in
    assert idx.offset(0, 2) == 1  # inside the surrogate pair: rounds down to before the emoji
    assert idx.offset(0, 99) == 3  # past the end: before "\r\n"
    assert idx.offset(1, 3) == 7  # line 1 starts at 5; "x😀" is 3 units, 2 code points
    assert idx.offset(3, 4) == len(idx.text)
    assert idx.offset(10, 0) == len(idx.text)
    assert idx.offset(0, 4, "utf-8") == 1  # inside the 4 UTF-8 bytes of 🙂
    assert idx.offset(0, 5, "utf-8") == 2
    assert split_lines("a\n") == ["a\n", ""] and split_lines("") == [""]


def test_crlf_joins_and_splits():
    idx = LineIndex("ab\rcd")
    assert idx.num_lines == 2
    idx.edit(3, 3, "\n")  # "\r" + "\n" become one terminator
    assert idx.num_lines == 2 and idx.line(0) == "ab\r\n" and idx.offset(1, 0) == 4
    idx.edit(3, 3, "X")  # "\rX\n": two terminators again
    assert idx.num_lines == 3 and idx.offset(1, 0) == 3 and idx.offset(2, 0) == 5


def test_keystroke_in_long_text_rescans_a_few_lines():
    text = "".join(f"line {i} with some words 🙂\r\n" for i in range(20_000))
    idx = LineIndex(text)
    line = 12_345
    off = idx.offset(line, 10)
    idx.edit(off, off, "x")
    assert idx.rescanned_chars < 200  # three lines, not the 560,000-character text
    assert idx.line(line).startswith("line 12345x")
    assert idx.offset(line + 1, 0) == off + 1 + len(text.split("\r\n")[line]) - 10 + 2
    idx.edit(off, off + 1, "")
    assert idx.text == text
