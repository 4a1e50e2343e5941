"""A character window that follows a long text through its edits.

Real documents (PEPs) run to tens of thousands of tokens, more than a model's window. The window
[start, end) covers the same stretch of original content while the text is edited: edits before
it shift it, edits inside it resize it, edits after it leave it alone, edits across a boundary are
clipped. An insertion exactly at a boundary (start or end) goes inside the window, so a window that
holds the whole text sees insertions at offset 0 and appends at the end. `local` turns a full-text
edit into the edit of the window's text (or None).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EditWindow:
    start: int
    end: int

    def local(self, at: int, delete: int, insert: str) -> tuple[int, int, str] | None:
        """Apply the full-text edit to the window bounds; return the window-relative (start, end, text)."""
        a, b = at, at + delete
        boundary_insert = a == b and a in (self.start, self.end)
        if b <= self.start and not boundary_insert:  # entirely before
            shift = len(insert) - delete
            self.start += shift
            self.end += shift
            return None
        if a >= self.end and not boundary_insert:  # entirely after
            return None
        lo, hi = max(a, self.start), min(b, self.end)
        cut_before = max(0, self.start - a)  # deleted chars before the window
        local = (lo - self.start, hi - self.start, insert)
        self.start -= cut_before
        # an edit running past the window's end leaves the window ending where its insertion ends
        self.end = self.end + len(insert) - delete if b <= self.end else a + len(insert)
        return local

    @classmethod
    def around(cls, text_len: int, center: int, width: int) -> EditWindow:
        """A window of `width` chars centred on `center`, inside [0, text_len]."""
        width = min(width, text_len)
        start = max(0, min(center - width // 2, text_len - width))
        return cls(start, start + width)
