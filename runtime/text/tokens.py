"""Incremental tokenisation: a character edit -> the token-level splice.

Owns `TokenizedText` (text, ids, char offsets, pre-token starts; BOS is NOT included: the document
puts it in front), `retokenize` and `diff_texts`. It knows nothing of models or ORT.

`retokenize` re-encodes only a window of the new text, from a pre-token start a few tokens before
the edit to one a few tokens after it, and keeps the window's tokens up to a *sync point*: a
position after the edit where the window and the old tokenisation both start a pre-token (the
suffixes are equal from there, so their tokens are too). Failing that, the window doubles, up to
the whole text. Why the result equals encoding the new text from scratch, for regex pre-tokenizers
without look-behind (GPT-2, Llama-3, digit splitting) and no normaliser:
- a regex match ending at position p was decided by characters up to p + 2 or up to the first
  non-space character at or after p (whitespace runs are scanned to their end; `'ll` peeks 2 ahead);
- so if those characters lie on the same side of the edit (left edge) or inside the window (sync
  point), the pre-token boundaries there are the ones of the full text.
Other tokenizers (Metaspace prefixes, normalisers, trimmed offsets) are guarded by requiring the
window's edge pre-tokens to reproduce the old ones exactly; at worst the window grows to the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from vqinc.runtime.text.splice import id_splice, text_splice

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DEFAULT_MARGIN = 8
"""Tokens of context on each side of the edit in the first window."""


@dataclass(frozen=True, eq=False)
class TokenizedText:
    """A text and its tokenisation (`add_special_tokens=False`, so no BOS). Arrays are read-only."""

    text: str
    ids: npt.NDArray[np.int64]
    """(n,) token ids."""
    offsets: npt.NDArray[np.int64]
    """(n, 2) [start, end) in characters (Python str indices); byte pieces of one char share it."""
    word_starts: npt.NDArray[np.bool_]
    """(n,) token i begins a pre-token (a "word" of the pre-tokenizer) on a character boundary."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert self.offsets.shape == (n, 2) and self.word_starts.shape == (n,)
        for a in (self.ids, self.offsets, self.word_starts):
            a.flags.writeable = False

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, tokenizer: Tokenizer, text: str) -> TokenizedText:
        """Tokenise `text` from scratch."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        for attr in ("truncation", "padding"):
            if getattr(tokenizer, attr, None) is not None:
                raise ValueError(f"the tokenizer has {attr} enabled ({getattr(tokenizer, attr)}); "
                                 f"incremental tokenisation needs it off (tokenizer.no_{attr}())")
        return cls(text, *_encode(tokenizer, text))


@dataclass(frozen=True)
class TokenEdit:
    """Replace old tokens [pos, pos + n_delete) by `ids` (positions exclude BOS)."""

    pos: int
    n_delete: int
    ids: list[int]

    def apply(self, ids: list[int]) -> list[int]:
        """`ids` with this splice applied."""
        return [*ids[: self.pos], *self.ids, *ids[self.pos + self.n_delete:]]


def retokenize(
    tokenizer: Tokenizer, old: TokenizedText, start: int, end: int, new_text_piece: str, margin: int = DEFAULT_MARGIN
) -> tuple[TokenizedText, TokenEdit]:
    """Tokenisation of `old.text[:start] + new_text_piece + old.text[end:]`, and the minimal token splice.

    The result is identical (ids, offsets) to `TokenizedText.build` on the new text; the work is
    proportional to the re-encoded window, not the document. `old` is never modified.
    """
    if not isinstance(old, TokenizedText):
        raise TypeError(f"old must be a TokenizedText, got {type(old).__name__}")
    if not isinstance(new_text_piece, str):
        raise TypeError(f"new_text_piece must be str, got {type(new_text_piece).__name__}")
    for name, v in (("start", start), ("end", end), ("margin", margin)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    text = old.text
    start, end = int(start), int(end)
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= {len(text)} (characters)")
    if margin < 1:
        raise ValueError(f"margin must be >= 1 token, got {margin}")
    if start == end and not new_text_piece:
        return old, TokenEdit(0, 0, [])

    new_text = text[:start] + new_text_piece + text[end:]
    delta = len(new_text_piece) - (end - start)
    new_end = start + len(new_text_piece)  # the changed characters are new_text[start:new_end]
    n = len(old)
    ends = old.offsets[:, 1]
    i_lo = int(np.searchsorted(ends, start, side="left"))  # first token ending at or after the edit
    i_hi = int(np.searchsorted(old.offsets[:, 0], end, side="right"))  # first token starting after it
    m = int(margin)
    while True:
        a = max(0, i_lo - m)
        while a > 0 and not old.word_starts[a]:
            a -= 1
        b = min(n, i_hi + m)
        while b < n and not old.word_starts[b]:
            b += 1
        left = 0 if a == 0 else int(ends[a - 1])
        right = len(new_text) if b == n else int(ends[b - 1]) + delta
        if a == 0 or _left_edge_ok(text, left, start):
            spliced = _splice(tokenizer, old, new_text, a, b, left, right, new_end, delta)
            if spliced is not None:
                return spliced
        assert a > 0 or b < n, "a window over the whole text always splices"
        m *= 2


def diff_texts(old: str, new: str) -> tuple[int, int, str]:
    """The minimal single splice `(start, end, replacement)` with `old[:start] + replacement + old[end:] == new`."""
    for name, v in (("old", old), ("new", new)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be str, got {type(v).__name__}")
    return text_splice(old, new)


# -- internals ---------------------------------------------------------------------------------
def _encode(
    tokenizer: Tokenizer, text: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(ids, offsets, word_starts) of `text` without special tokens."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, dtype=np.int64).reshape(-1)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    words = np.fromiter((-1 if w is None else w for w in enc.word_ids), dtype=np.int64, count=len(ids))
    starts = np.ones(len(ids), dtype=np.bool_)
    # a new pre-token on a character boundary (byte pieces of one character share offsets)
    new_word = (words[1:] != words[:-1]) | (words[1:] < 0) | (words[:-1] < 0)
    starts[1:] = new_word & (offsets[1:, 0] >= offsets[:-1, 1])
    return ids, offsets, starts


def _first_non_space(text: str, lo: int, hi: int) -> int:
    """Index of the first character in text[lo:hi] that no regex `\\s` matches, or hi."""
    for i in range(lo, hi):
        c = text[i]
        # printable and not space => no Unicode White_Space (Python's isspace is wider than \s)
        if c.isprintable() and not c.isspace():
            return i
    return hi


def _left_edge_ok(text: str, left: int, start: int) -> bool:
    """Is the pre-token boundary at `left` decided by characters before the edit at `start`?"""
    return left + 2 < start and _first_non_space(text, left, start) < start


def _splice(
    tokenizer: Tokenizer, old: TokenizedText, new_text: str, a: int, b: int, left: int, right: int,
    new_end: int, delta: int,
) -> tuple[TokenizedText, TokenEdit] | None:
    """Encode new_text[left:right] in place of old tokens [a, b); None if it does not re-synchronise."""
    n = len(old)
    w_ids, w_off, w_starts = _encode(tokenizer, new_text[left:right])
    w_off = w_off + left
    nw = len(w_ids)
    if a > 0:  # the window's first pre-token must be the old one (guards non-regex context effects)
        k1 = next((k for k in range(1, nw) if w_starts[k]), nw)
        if not (a + k1 < n and old.word_starts[a + k1] and k1 < nw
                and _same(old, a, a + k1, w_ids[:k1], w_off[:k1], 0)):
            return None
    if b == n:
        k, j = nw, n
    else:
        sync = _sync_point(old, new_text, w_ids, w_off, w_starts, right, new_end, delta)
        if sync is None:
            return None
        k, j = sync
    ids = np.concatenate([old.ids[:a], w_ids[:k], old.ids[j:]])
    offsets = np.concatenate([old.offsets[:a], w_off[:k], old.offsets[j:] + delta])
    starts = np.concatenate([old.word_starts[:a], w_starts[:k], old.word_starts[j:]])
    return TokenizedText(new_text, ids, offsets, starts), _minimal_edit(old.ids[a:j], w_ids[:k], a)


def _sync_point(
    old: TokenizedText, new_text: str, w_ids: npt.NDArray[np.int64], w_off: npt.NDArray[np.int64],
    w_starts: npt.NDArray[np.bool_], right: int, new_end: int, delta: int,
) -> tuple[int, int] | None:
    """(window index k, old index j) of the first pre-token start after the edit shared by both."""
    n, nw = len(old), len(w_ids)
    ends = old.offsets[:, 1]
    word_ks = [k for k in range(1, nw) if w_starts[k]]
    for k, k2 in zip(word_ks, word_ks[1:], strict=False):
        p = int(w_off[k - 1, 1])  # boundary in new coordinates
        if p < new_end:
            continue
        if p + 2 >= right or _first_non_space(new_text, p, right) >= right:
            return None  # the window ends too close: its last pre-tokens may be cut short
        q = p - delta
        j = int(np.searchsorted(ends, q, side="right"))
        if not (0 < j < n and old.word_starts[j] and ends[j - 1] == q):
            continue
        # the next whole pre-token must agree too, and end where an old pre-token ends
        j2 = j + (k2 - k)
        if j2 < n and old.word_starts[j2] and _same(old, j, j2, w_ids[k:k2], w_off[k:k2], delta):
            return k, j
    return None


def _same(
    old: TokenizedText, lo: int, hi: int, ids: npt.NDArray[np.int64], off: npt.NDArray[np.int64], delta: int
) -> bool:
    return bool(np.array_equal(old.ids[lo:hi], ids) and np.array_equal(old.offsets[lo:hi] + delta, off))


def _minimal_edit(old_ids: npt.NDArray[np.int64], new_ids: npt.NDArray[np.int64], base: int) -> TokenEdit:
    """Strip the equal leading and trailing tokens of the replaced span."""
    p, end, piece = id_splice(old_ids, new_ids)
    return TokenEdit(base + p, end - p, piece.tolist())
