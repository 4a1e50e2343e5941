"""EditWindow: the window text always equals the same slice of the edited full text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vqinc.runtime.text.window import EditWindow


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


def test_a_window_over_the_whole_text_sees_inserts_at_both_ends():
    """Inserts at offset 0 and appends at the end used to be skipped as "outside the window"."""
    text = "hello world"
    win = EditWindow(0, len(text))
    assert win.local(0, 0, ">> ") == (0, 0, ">> ")
    assert (win.start, win.end) == (0, 14)
    assert win.local(14, 0, "!") == (14, 14, "!")
    assert (win.start, win.end) == (0, 15)


def test_inserts_at_a_middle_windows_boundaries_go_inside_and_others_stay_out():
    win = EditWindow(10, 20)
    assert win.local(10, 0, "ab") == (0, 0, "ab")  # at the start: inside
    assert (win.start, win.end) == (10, 22)
    assert win.local(22, 0, "c") == (12, 12, "c")  # at the end: inside
    assert (win.start, win.end) == (10, 23)
    assert win.local(5, 5, "") is None  # a deletion ending at the start: before, shifts the window
    assert (win.start, win.end) == (5, 18)
    assert win.local(18, 2, "xy") is None  # a replacement starting at the end: after
    assert (win.start, win.end) == (5, 18)
