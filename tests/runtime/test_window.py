"""EditWindow: the window text always equals the same slice of the edited full text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vqinc.runtime.window import EditWindow


@given(st.data())
def test_window_follows_the_text(data):
    text = data.draw(st.text("abc", min_size=0, max_size=30))
    a = data.draw(st.integers(0, len(text)))
    win = EditWindow(a, data.draw(st.integers(a, len(text))))
    local_text = text[win.start:win.end]
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(text)))
        n = data.draw(st.integers(0, len(text) - at))
        ins = data.draw(st.text("xyz", max_size=5))
        text = text[:at] + ins + text[at + n:]
        loc = win.local(at, n, ins)
        if loc is not None:
            s, e, piece = loc
            assert 0 <= s <= e <= len(local_text)
            local_text = local_text[:s] + piece + local_text[e:]
        assert local_text == text[win.start:win.end]
