"""Content-defined chunking: where a text longer than the model's window is cut into chunks.

Owns `ChunkConfig` and two pure functions over a text and a token counter: `chunk_bounds` (the
chunking of a text, from scratch) and `rechunk` (the same result after an edit, recomputed only
around the edit). It knows nothing of models, documents or ORT; `chunked.py` builds on it.

The rule (FastCDC / restic style, restricted to line ends so chunks stay readable):
- a text of at most `single_max_chars` characters and `single_max_tokens` tokens is one chunk;
- otherwise, from a chunk's start B, the chunk ends at the first line end q (q = index after a
  "\\n") with q - B >= `min_chars` where the CRC-32 of the `hash_window` characters before q is
  0 mod `period`; with none by B + `max_chars`, at the last line end (else space, else character)
  before it; the rest of a text with no such cut is the last chunk;
- a chunk whose tokens exceed `max_tokens` ends earlier: at the last line end (else space, else
  character) inside it where a binary search finds its prefix fits.
Every decision at q reads only text before q (and after the chunk's start), so an edit at [a, e)
leaves every boundary <= a where it was, and once a new boundary at or past the edit's end (plus the
hash window) coincides with an old one, all later boundaries are the old ones shifted. A fresh
chunking of the edited text gives exactly what `rechunk` gives (tested).
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Counter = Callable[[int, int], int]
"""count(start, end) -> number of tokens of text[start:end] tokenised on its own."""


@dataclass(frozen=True)
class ChunkConfig:
    """Where long texts are cut. Boundaries are a function of the text and these values alone."""

    max_tokens: int
    """Hard limit of tokens per chunk (the model's window less the BOS row)."""
    min_chars: int = 1024
    """No natural cut closer than this to the chunk's start."""
    period: int = 31
    """A line end is a natural cut with probability 1/period (its hash is 0 mod period)."""
    max_chars: int = 8184
    """A chunk with no natural cut by this many characters is cut at the last line end before it."""
    hash_window: int = 16
    """Characters before a line end that decide whether it is a natural cut."""
    single_max_chars: int = 8192
    """A text of at most this many characters and `single_max_tokens` tokens is one chunk (exactly what a
    plain document gives)."""
    single_max_tokens: int | None = None
    """See `single_max_chars`; None: `max_tokens`."""
    max_doc_chars: int = 1_000_000
    """Longest document accepted (a larger text or paste is refused, nothing changes)."""

    def __post_init__(self) -> None:
        if self.single_max_tokens is None:
            object.__setattr__(self, "single_max_tokens", self.max_tokens)
        for name in ("max_tokens", "min_chars", "period", "max_chars", "hash_window", "single_max_chars",
                     "single_max_tokens", "max_doc_chars"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ChunkConfig.{name} must be an int >= 1, got {v!r}")
        if self.max_tokens < 8:
            raise ValueError(f"ChunkConfig.max_tokens must be >= 8 (one character can take 4 tokens), "
                             f"got {self.max_tokens}")
        if self.single_max_tokens > self.max_tokens:
            raise ValueError(f"ChunkConfig.single_max_tokens ({self.single_max_tokens}) must be <= max_tokens "
                             f"({self.max_tokens})")
        if self.max_chars <= self.min_chars:
            raise ValueError(f"ChunkConfig.max_chars ({self.max_chars}) must exceed min_chars ({self.min_chars})")

    @classmethod
    def for_window(cls, max_tokens: int) -> ChunkConfig:
        """Defaults for a model taking `max_tokens` tokens per window. With T = min(1024, max_tokens // 4):
        one chunk up to min(1024, max_tokens) tokens (and 8 x that in characters); beyond, natural cuts at
        least T characters apart with a line end's chance 1/(T/32), forced by 8 T characters; on text of
        ~50-character lines that is T + 1.6 T characters per chunk on average (2,600 characters, about
        770 tokens of PEP text with the bundled tokenizer at T = 1,023)."""
        target = max(8, min(1024, max_tokens // 4))
        single = min(1024, max_tokens)
        return cls(max_tokens=max_tokens, min_chars=target, period=max(2, target // 32),
                   max_chars=8 * target, single_max_chars=8 * single, single_max_tokens=single)


def fits_single(text: str, cfg: ChunkConfig, count: Counter) -> bool:
    """Is `text` one chunk (short enough in characters, and its tokens fit)?"""
    return len(text) <= cfg.single_max_chars and count(0, len(text)) <= cfg.single_max_tokens  # type: ignore[operator]


def chunk_bounds(text: str, cfg: ChunkConfig, count: Counter) -> list[int]:
    """Chunk boundaries [0, b1, ..., len(text)] of `text` (one chunk [0, 0] for the empty text)."""
    if fits_single(text, cfg, count):
        return [0, len(text)]
    out, b = [0], 0
    while b < len(text):
        b = next_cut(text, b, cfg, count)
        out.append(b)
    return out


def rechunk(old_bounds: list[int], new_text: str, start: int, old_end: int, new_end: int, cfg: ChunkConfig,
            count: Counter) -> list[int]:
    """`chunk_bounds(new_text)` where new_text is the old text with [start, old_end) replaced by
    new_text[start:new_end], recomputed from the last old boundary at or before `start` until the
    boundaries meet the old ones again."""
    n = len(new_text)
    if fits_single(new_text, cfg, count):
        return [0, n]
    if len(old_bounds) <= 2:  # the old text was one chunk by the single-chunk rule: no CDC bounds to keep
        return chunk_bounds(new_text, cfg, count)
    delta = new_end - old_end
    i = bisect.bisect_right(old_bounds, start, 0, len(old_bounds) - 1) - 1  # never the final bound
    old_after = {b: k for k, b in enumerate(old_bounds[i + 1:-1], i + 1)}
    out = old_bounds[: i + 1]
    b = old_bounds[i]
    while b < n:
        b = next_cut(new_text, b, cfg, count)
        out.append(b)
        k = old_after.get(b - delta)
        if k is not None and b >= new_end + cfg.hash_window and b < n:
            out.extend(x + delta for x in old_bounds[k + 1:])
            break
    return out


def next_cut(text: str, b: int, cfg: ChunkConfig, count: Counter) -> int:
    """End of the chunk that starts at `b` (see the module docstring)."""
    n = len(text)
    lo, hi = b + cfg.min_chars, min(n, b + cfg.max_chars)
    end = None
    q = text.find("\n", lo - 1, hi)
    while q != -1:
        cut = q + 1
        if zlib.crc32(text[max(0, cut - cfg.hash_window):cut].encode("utf-8", "surrogatepass")) % cfg.period == 0:
            end = cut
            break
        q = text.find("\n", cut, hi)
    if end is None:
        end = n if b + cfg.max_chars >= n else _last_break(text, lo, hi)
    if count(b, end) > cfg.max_tokens:
        end = _shrink(text, b, end, cfg, count)
    return end


def _last_break(text: str, lo: int, hi: int) -> int:
    """The last cut in [lo, hi] (lo = chunk start + min_chars): after a line end, else after a space, else hi."""
    for sep in ("\n", " "):
        q = text.rfind(sep, lo - 1, hi)
        if q != -1:
            return q + 1
    return hi


def _shrink(text: str, b: int, end: int, cfg: ChunkConfig, count: Counter) -> int:
    """A cut in (b, end) whose prefix fits `max_tokens`: the last line end found by binary search, else
    space, else character (a single character always fits: at most 4 byte tokens)."""
    for sep in ("\n", " ", None):
        if sep is None:
            cands = list(range(b + 1, end))
        else:
            cands, q = [], text.find(sep, b, end - 1)
            while q != -1:
                cands.append(q + 1)
                q = text.find(sep, q + 1, end - 1)
        lo, hi = 0, len(cands) - 1  # find the largest index whose prefix fits (assuming monotone counts)
        best = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if count(b, cands[mid]) <= cfg.max_tokens:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best >= 0:
            return cands[best]
    raise AssertionError(f"no prefix of text[{b}:{end}] fits {cfg.max_tokens} tokens")
