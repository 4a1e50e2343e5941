"""`Document`: one text under edit, with all of its incremental state.

Edits are validated before anything changes; if the engine fails part-way (it should not), the
document is rebuilt from its previous text before the error propagates, so an edit either happens
completely or not at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vqinc.runtime.engine import EditStats
from vqinc.runtime.state import DocState
from vqinc.runtime.tokens import TokenizedText, diff_texts, retokenize

if TYPE_CHECKING:
    from vqinc.runtime.model import Model


def _check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, got {type(text).__name__}")
    return text


def _check_span(start: object, end: object, length: int, unit: str) -> tuple[int, int]:
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    start, end = int(start), int(end)
    if not 0 <= start <= end <= length:
        raise ValueError(f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= {length} ({unit})")
    return start, end


class Document:
    """Incrementally classified text. Create with `model.document(text)`."""

    def __init__(self, model: Model, text: str = "", _ids: list[int] | None = None):
        self.model = model
        self.history: list[EditStats] = []
        self._pending: list[int] | None = None
        if _ids is None:
            self._tok: TokenizedText | None = TokenizedText.build(model.tokenizer, _check_text(text))
            ids = list(self._tok.ids)
        else:
            self._tok, ids = None, list(_ids)
        self._check_ids(ids, len(ids))
        self._build(ids)

    # -- public state ------------------------------------------------------------------------
    @property
    def text(self) -> str:
        if self._tok is None:  # after edit_tokens: the text is what the tokens decode to
            return self.model.tokenizer.decode(self.token_ids.tolist(), skip_special_tokens=False)
        return self._tok.text

    @property
    def token_ids(self) -> np.ndarray:
        """Token ids without the leading BOS."""
        return self.state.ids[1:].copy()

    @property
    def logits(self) -> np.ndarray:
        return self.state.logits.copy()

    @property
    def probs(self) -> np.ndarray:
        z = self.state.logits.astype(np.float64)
        e = np.exp(z - z.max())
        return e / e.sum()

    @property
    def label(self) -> str:
        return self.model.labels[int(np.argmax(self.state.logits))]

    @property
    def stats(self) -> EditStats:
        """What the latest edit (or the initial build) cost."""
        return self.history[-1]

    @property
    def codes(self) -> np.ndarray:
        """(L, n, H) attention codes in position order (BOS row included)."""
        st = self.state
        return np.stack([layer.codes[st.order] for layer in st.layers])

    def nbytes(self) -> int:
        return self.state.nbytes()

    # -- edits -------------------------------------------------------------------------------
    def edit(self, start: int, end: int, text: str) -> EditStats:
        """Replace characters [start, end) by `text` (an editor's change event)."""
        _check_text(text)
        tok = self._tokens()
        start, end = _check_span(start, end, len(tok.text), "characters")
        new_tok, te = retokenize(self.model.tokenizer, tok, start, end, text)
        self._check_ids(te.ids, len(new_tok.ids))
        stats = self._apply(te.pos, te.n_delete, te.ids)
        self._tok = new_tok
        return stats

    def set_text(self, new_text: str) -> EditStats:
        """Make the document hold `new_text` (computes the single splice from the current text)."""
        _check_text(new_text)
        start, end, piece = diff_texts(self._tokens().text, new_text)
        return self.edit(start, end, piece)

    def edit_tokens(self, pos: int, n_delete: int, ids: list[int] | np.ndarray) -> EditStats:
        """Replace tokens [pos, pos + n_delete) (BOS excluded) by `ids`; the text becomes their decoding."""
        n = self.state.n - 1
        for name, v in (("pos", pos), ("n_delete", n_delete)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not (0 <= pos <= n and 0 <= n_delete <= n - pos):
            raise ValueError(f"token span [{pos}, {pos + n_delete}) is invalid for a document of {n} tokens")
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        self._check_ids(ids, n - n_delete + len(ids))
        stats = self._apply(int(pos), int(n_delete), ids)
        self._tok = None
        return stats

    # -- internals ---------------------------------------------------------------------------
    def _tokens(self) -> TokenizedText:
        """The text's tokenisation; after token-level edits, re-synchronise with the decoded text."""
        if self._tok is None:
            tok = TokenizedText.build(self.model.tokenizer, self.text)
            start, end, ids = _splice(self.token_ids.tolist(), list(tok.ids))
            if end > start or ids:
                self._check_ids(ids, len(tok.ids))
                self._apply(start, end - start, ids)
            self._tok = tok
        return self._tok

    def _check_ids(self, ids: list[int], new_len: int) -> None:
        bad = [i for i in ids if not 0 <= i < self.model.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the vocabulary [0, {self.model.vocab_size})")
        if new_len + 1 > self.model.max_positions:
            raise ValueError(f"the document would be {new_len} tokens; this model takes at most "
                             f"{self.model.max_positions - 1} (cut the text or split it into windows)")

    @property
    def state(self) -> DocState:
        """The numeric state, rebuilt first if a failed edit left it pending."""
        if self._pending is not None:
            ids = self._pending
            n_hist = len(self.history)
            self._build(ids)
            del self.history[n_hist:]
            self._pending = None
        return self._state

    def _build(self, ids: list[int]) -> None:
        m = self.model
        self._state = DocState.empty(m.num_layers, m.d_model, m.num_heads, m.num_kv_heads, m.head_dim,
                                     len(m.labels), cap=max(64, 1 << (len(ids) + 1).bit_length()))
        self.history.append(m.engine.apply(self._state, 0, 0, np.asarray([m.bos_token_id, *ids], np.int64)))

    def _apply(self, pos: int, n_delete: int, ids: list[int]) -> EditStats:
        before = self.state.ids  # the engine replaces `ids` rather than mutating it: keeping it is free
        try:
            stats = self.model.engine.apply(self._state, pos + 1, n_delete, np.asarray(ids, np.int64))
        except BaseException:
            # Restore exactly the previous document, then report the failure. If the rebuild fails too
            # (a lost device), it is retried on the next access instead.
            self._pending = before[1:].tolist()
            try:
                self.state  # noqa: B018
            except BaseException:
                pass
            raise
        self.history.append(stats)
        return stats


def _splice(old: list[int], new: list[int]) -> tuple[int, int, list[int]]:
    """Minimal single splice turning old into new: (start, end in old, replacement)."""
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    s = 0
    while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
        s += 1
    return p, len(old) - s, new[p:len(new) - s]
