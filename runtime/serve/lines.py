"""`LineIndex`: an editor's text as lines, for converting LSP positions to character offsets.

LSP addresses text by (line, character) where `character` counts UTF-16 code units by default
(UTF-8 bytes or UTF-32 code points if negotiated) and lines end at `\\n`, `\\r\\n` or `\\r` (and at
nothing else: not at U+2028, `\\v` or the other breaks `str.splitlines` knows). `Document.edit` takes
code-point offsets. This index converts between the two without scanning the text:

- lines are kept in blocks of at most `2 * block` lines, each line with its terminator, the last
  line of the text without one (so "a\\n" is ["a\\n", ""], as LSP counts it);
- two Fenwick trees over the blocks (characters and lines per block) find a line's block and its
  start offset in O(log blocks);
- an edit re-splits only the lines it touches plus one neighbour each side (a `\\r` at the end of the
  previous line and a `\\n` at the start of the edit make one `\\r\\n` terminator, and the reverse).

Cost per position lookup or single-line edit: O(log(lines / block) + block + line length); the
whole text is never re-scanned (`rescanned_chars` counts what the last edit re-split, for tests).
Positions follow the spec's clamping: a character past the end of its line means the end of the line
(before its terminator), a line past the last means the end of the text, and a position inside a
UTF-16 surrogate pair or a UTF-8 sequence rounds down to the start of that character.
"""

from __future__ import annotations

import re

_BREAK = re.compile(r"\r\n|\r|\n")
ENCODINGS = ("utf-16", "utf-8", "utf-32")


def split_lines(text: str) -> list[str]:
    """LSP lines of `text`, terminators kept; the last element has none (it may be empty)."""
    out, pos = [], 0
    for m in _BREAK.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
    out.append(text[pos:])
    return out


def _content(line: str) -> str:
    """A line without its terminator."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith(("\n", "\r")):
        return line[:-1]
    return line


def units_to_chars(content: str, units: int, encoding: str) -> int:
    """Code points of `content` before `units` code units of `encoding` (clamped, rounding down)."""
    if units >= len(content) * (4 if encoding == "utf-8" else 2 if encoding == "utf-16" else 1):
        return len(content)  # past the end of the line in any encoding
    if encoding == "utf-32" or content.isascii():
        return min(units, len(content))
    if encoding == "utf-16":
        return len(content.encode("utf-16-le")[: 2 * units].decode("utf-16-le", errors="ignore"))
    return len(content.encode("utf-8")[:units].decode("utf-8", errors="ignore"))


def chars_to_units(content: str, chars: int, encoding: str) -> int:
    """Code units of `encoding` in the first `chars` code points of `content`."""
    head = content[:chars]
    if encoding == "utf-32" or head.isascii():
        return len(head)
    if encoding == "utf-16":
        return len(head.encode("utf-16-le")) // 2
    return len(head.encode("utf-8"))


class _Fenwick:
    """Prefix sums over a list of non-negative ints with point updates and lower-bound search."""

    def __init__(self, values: list[int]):
        self.n = len(values)
        tree = [0, *values]
        for i in range(1, self.n + 1):
            j = i + (i & -i)
            if j <= self.n:
                tree[j] += tree[i]
        self.tree = tree
        self.top = 1 << self.n.bit_length() if self.n else 0

    def add(self, i: int, delta: int) -> None:
        i += 1
        while i <= self.n:
            self.tree[i] += delta
            i += i & -i

    def prefix(self, i: int) -> int:
        """Sum of values[:i]."""
        s = 0
        while i > 0:
            s += self.tree[i]
            i -= i & -i
        return s

    def find(self, target: int) -> tuple[int, int]:
        """(i, sum of values[:i]) for the smallest i with sum(values[:i+1]) > target (n if none)."""
        pos, acc, step = 0, 0, self.top
        while step:
            nxt = pos + step
            if nxt <= self.n and acc + self.tree[nxt] <= target:
                pos, acc = nxt, acc + self.tree[nxt]
            step >>= 1
        return pos, acc


class LineIndex:
    """The lines of one text; `offset()` / `position()` convert, `edit()` applies a change."""

    def __init__(self, text: str = "", block: int = 64):
        if block < 2:
            raise ValueError(f"block must be >= 2, got {block}")
        self.block = block
        self.length = len(text)
        self.rescanned_chars = len(text)
        self._set_blocks(self._chunk(split_lines(text)))

    # -- queries -------------------------------------------------------------------------------
    @property
    def num_lines(self) -> int:
        return self._line_tree.prefix(len(self._blocks))

    @property
    def text(self) -> str:
        """The whole text (O(n): for checks and re-synchronisation, not per keystroke)."""
        return "".join(line for b in self._blocks for line in b)

    def line(self, line_idx: int) -> str:
        """Line `line_idx` with its terminator."""
        bi, first = self._line_tree.find(line_idx)
        return self._blocks[bi][line_idx - first]

    def offset(self, line_idx: int, character: int, encoding: str = "utf-16") -> int:
        """Code-point offset of an LSP position (clamped as the spec says)."""
        if line_idx < 0 or character < 0:
            raise ValueError(f"position ({line_idx}, {character}) is negative")
        if encoding not in ENCODINGS:
            raise ValueError(f"position encoding {encoding!r} is not one of {ENCODINGS}")
        if line_idx >= self.num_lines:
            return self.length
        bi, first = self._line_tree.find(line_idx)
        b = self._blocks[bi]
        start = self._char_tree.prefix(bi) + sum(len(b[i]) for i in range(line_idx - first))
        return start + units_to_chars(_content(b[line_idx - first]), character, encoding)

    def position(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        """LSP (line, character) of a code-point offset."""
        if not 0 <= offset <= self.length:
            raise ValueError(f"offset {offset} outside the text [0, {self.length}]")
        line_idx, start = self._locate(offset)
        return line_idx, chars_to_units(self.line(line_idx), offset - start, encoding)

    def _locate(self, offset: int) -> tuple[int, int]:
        """(line index, line start) of the line holding `offset` (the last line holds the end)."""
        if offset >= self.length:
            last = self.num_lines - 1
            return last, self.length - len(self.line(last))
        bi, start = self._char_tree.find(offset)
        line_idx = self._line_tree.prefix(bi)
        for line in self._blocks[bi]:
            if offset < start + len(line):
                return line_idx, start
            start += len(line)
            line_idx += 1
        raise AssertionError("offset inside a block but past its lines")

    # -- edits ---------------------------------------------------------------------------------
    def edit(self, start: int, end: int, text: str) -> None:
        """Replace characters [start, end) by `text`."""
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= {self.length}")
        first, first_start = self._locate(start)
        if "\n" not in text and "\r" not in text:  # a keystroke inside one line's content: no line changes
            bi, b_first = self._line_tree.find(first)
            line = self._blocks[bi][first - b_first]
            if end - first_start <= len(_content(line)):
                a, b = start - first_start, end - first_start
                self._blocks[bi][first - b_first] = line[:a] + text + line[b:]
                self._char_tree.add(bi, len(text) - (end - start))
                self.length += len(text) - (end - start)
                self.rescanned_chars = len(line)
                return
        last, _ = self._locate(end)
        # One neighbour each side: a terminator may merge ("\r" + "\n") or split across the boundary.
        if first > 0:
            first -= 1
            first_start -= len(self.line(first))
        last = min(last + 1, self.num_lines - 1)
        old = [self.line(i) for i in range(first, last + 1)]
        seg = "".join(old)
        seg = seg[: start - first_start] + text + seg[end - first_start:]
        new = split_lines(seg)
        if last < self.num_lines - 1:  # the segment ends with a terminator: drop split_lines' empty tail
            assert new[-1] == "", "a segment ending inside the text must end with a line break"
            new.pop()
        self.rescanned_chars = len(seg)
        self._replace_lines(first, last, new)
        self.length += len(text) - (end - start)

    # -- blocks --------------------------------------------------------------------------------
    def _chunk(self, lines: list[str]) -> list[list[str]]:
        """Balanced blocks of block..2*block lines (a short text makes one smaller block)."""
        n = len(lines)
        if n <= 2 * self.block:
            return [lines or [""]]
        k = -(-n // self.block)
        return [lines[i * n // k:(i + 1) * n // k] for i in range(k)]

    def _set_blocks(self, blocks: list[list[str]]) -> None:
        self._blocks = blocks
        self._char_tree = _Fenwick([sum(map(len, b)) for b in blocks])
        self._line_tree = _Fenwick([len(b) for b in blocks])

    def _replace_lines(self, first: int, last: int, new: list[str]) -> None:
        """Lines [first, last] become `new` (non-empty: the text always has a last line).

        Every block keeps between block // 4 and 2 * block lines (unless it is the only one), so a
        keystroke changes one block and two Fenwick entries; only a block crossing those bounds makes
        its run be re-chunked and the trees rebuilt (O(blocks), amortised over many edits)."""
        bi, b_first = self._line_tree.find(first)
        bj, bj_first = self._line_tree.find(last)
        merged = self._blocks[bi][: first - b_first] + new + self._blocks[bj][last - bj_first + 1:]
        single = len(self._blocks) == 1
        if bi == bj and (single or self.block // 4 <= len(merged)) and len(merged) <= 2 * self.block:
            old = self._blocks[bi]
            self._blocks[bi] = merged
            self._char_tree.add(bi, sum(map(len, merged)) - sum(map(len, old)))
            self._line_tree.add(bi, len(merged) - len(old))
            return
        if len(merged) < self.block // 4 and not single:  # too small: absorb a neighbour
            if bj + 1 < len(self._blocks):
                bj += 1
                merged += self._blocks[bj]
            elif bi > 0:
                bi -= 1
                merged = self._blocks[bi] + merged
        self._set_blocks(self._blocks[:bi] + self._chunk(merged) + self._blocks[bj + 1:])
