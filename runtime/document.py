"""`Document`: one text under edit, with all of its incremental state.

An edit is validated and tokenised completely before anything changes (`_prepare`), then applied by
the engine (`_commit`). If the engine fails part-way (it should not), the document is rebuilt from
its previous text before the error propagates, so an edit happens completely or not at all.

Thread safety: every public method of a Document holds the document's lock, so one document may be
edited from several threads (edits serialise); different documents edit in parallel. `edit_many`
takes the locks of all its documents in a fixed order (by `id`), so concurrent calls cannot deadlock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqinc.runtime.engine.labels import check_labels
from vqinc.runtime.engine.propagate import EditStats
from vqinc.runtime.engine.state import DocState
from vqinc.runtime.model_dir import softmax
from vqinc.runtime.plain import plain_fields
from vqinc.runtime.text.splice import id_splice
from vqinc.runtime.text.tokens import TokenizedText, diff_texts, retokenize

if TYPE_CHECKING:
    from vqinc.runtime.model_dir import Model

HISTORY = 256
"""`Document.history` keeps the stats of this many latest edits."""


def check_text(text: object, what: str = "text") -> str:
    """`text` if it is a str that can be encoded as UTF-8 (no lone surrogates), else TypeError/ValueError."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode: {e.reason} at index {e.start} "
                         f"({text[e.start:e.end]!r}); lone surrogates cannot be tokenised") from None
    return text


def check_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def check_ids(ids: object, vocab_size: int) -> list[int]:
    """Token ids as a list of ints in [0, vocab_size); floats and bools are refused, not truncated."""
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got an array of {ids.dtype}")
        values = ids.reshape(-1).tolist()
    elif isinstance(ids, (list, tuple)):
        values = list(ids)
    else:
        raise TypeError(f"token ids must be a list, tuple or integer array, got {type(ids).__name__}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"token ids must be ints, got {v!r} ({type(v).__name__})")
    bad = [int(v) for v in values if not 0 <= v < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} outside the vocabulary [0, {vocab_size})")
    return [int(v) for v in values]


@dataclass(frozen=True)
class _Prepared:
    """A validated edit: replace tokens [pos, pos + n_delete) (BOS excluded) by `ids`; the document then
    holds `tok` (None after a token-level edit: the text is the tokens' decoding)."""

    pos: int
    n_delete: int
    ids: list[int]
    tok: TokenizedText | None
    length: int
    """Tokens after the edit (BOS excluded)."""

    @property
    def noop(self) -> bool:
        return self.n_delete == 0 and not self.ids


class DocumentOutputs:
    """What `Document` and `ChunkedDocument` derive the same way from their `logits` and `history`."""

    model: Model
    history: Any
    _lock: Any

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)

    @property
    def label(self) -> str:
        return self.model.label_of(self.logits)

    @property
    def stats(self) -> EditStats:
        """What the latest edit (or the initial build) cost."""
        with self._lock:
            return self.history[-1]


class Document(DocumentOutputs):
    """Incrementally classified text. Create with `model.document(text)`."""

    def __init__(self, model: Model, text: str = "", _ids: list[int] | None = None, positions: object = None):
        self.model = model
        self.history: deque[EditStats] = deque(maxlen=HISTORY)
        self._lock = threading.RLock()
        if _ids is None:
            self._tok: TokenizedText | None = TokenizedText.build(model.tokenizer, check_text(text))
            ids = [int(i) for i in self._tok.ids]
        else:
            self._tok, ids = None, list(_ids)
        self._check_length(len(ids))
        labels = self._check_positions(positions, len(ids))
        self._pending: tuple[list[int], np.ndarray | None] | None = None  # what to rebuild from after a failed restore
        self._state = self._build(ids, labels)

    # -- public state ------------------------------------------------------------------------
    @property
    def text(self) -> str:
        with self._lock:
            return self._text()

    @property
    def token_ids(self) -> np.ndarray:
        """Token ids without the leading BOS."""
        with self._lock:
            return self._live().ids[1:].copy()

    @property
    def logits(self) -> np.ndarray:
        with self._lock:
            return self._live().logits.copy()

    @property
    def positions(self) -> np.ndarray:
        """The position label of each token (BOS excluded; BOS is 0), strictly increasing. With RoPE
        position labels (runtime/engine/labels.py) edits leave gaps and fractional spacing; without them
        (and for a fresh document) they are 1, 2, ... times `model.spec.position_scale`."""
        with self._lock:
            st = self._live()
            return st.labels[st.order[1:]].copy()

    def compact(self) -> EditStats:
        """Relabel every token 1, 2, ... times the scale (a fresh build of the same text): what the
        document does by itself when its labels have no room left. In RoPE mode every row is recomputed."""
        with self._lock:
            ids = self._live().ids[1:].tolist()
            state = self._build(ids)
            self._state = state
            self.history[-1].compacted = True
            return self.history[-1]

    @property
    def codes(self) -> np.ndarray:
        """(L, n, H) attention codes in position order (BOS row included)."""
        with self._lock:
            st = self._live()
            return np.stack([layer.codes[st.order] for layer in st.layers])

    @property
    def state(self) -> DocState:
        with self._lock:
            return self._live()

    def nbytes(self) -> int:
        with self._lock:
            return self._live().nbytes()

    # -- edits -------------------------------------------------------------------------------
    def edit(self, start: int, end: int, text: str) -> EditStats:
        """Replace characters [start, end) by `text` (an editor's change event)."""
        with self._lock:
            self._live()
            return self._commit([(self, self._prepare(start, end, text))])[0]

    def set_text(self, new_text: str) -> EditStats:
        """Make the document hold `new_text` (computes the single splice from the current text)."""
        with self._lock:
            self._live()
            check_text(new_text)
            start, end, piece = diff_texts(self._text(), new_text)
            return self._commit([(self, self._prepare(start, end, piece))])[0]

    def edit_tokens(self, pos: int, n_delete: int, ids: list[int] | np.ndarray) -> EditStats:
        """Replace tokens [pos, pos + n_delete) (BOS excluded) by `ids`; the text becomes their decoding."""
        with self._lock:
            self._live()
            pos, n_delete = check_int("pos", pos), check_int("n_delete", n_delete)
            n = self._state.n - 1
            if not (0 <= pos <= n and 0 <= n_delete <= n - pos):
                raise ValueError(f"token span [{pos}, {pos + n_delete}) is invalid for a document of {n} tokens")
            new = check_ids(ids, self.model.vocab_size)
            self._check_length(n - n_delete + len(new))
            return self._commit([(self, _Prepared(pos, n_delete, new, None, n - n_delete + len(new)))])[0]

    # -- internals ---------------------------------------------------------------------------
    def _live(self) -> DocState:
        """The numeric state, rebuilt first if a failed edit could not restore it (e.g. a lost device)."""
        if self._pending is not None:
            (ids, labels), n_hist = self._pending, len(self.history)
            self._state = self._build(ids, labels)
            while len(self.history) > n_hist:
                self.history.pop()
            self._pending = None
        return self._state

    def _text(self) -> str:
        if self._tok is None:  # after edit_tokens: the text is what the tokens decode to
            return self.model.tokenizer.decode(self._live().ids[1:].tolist(), skip_special_tokens=False)
        return self._tok.text

    def _prepare(self, start: object, end: object, text: object, base: _Prepared | None = None) -> _Prepared:
        """Validate and tokenise a character edit of the current text (or of the text a prepared,
        not yet applied character edit `base` leaves)."""
        check_text(text)
        tok = base.tok if base is not None else self._tok
        current = tok.text if tok is not None else self._text()
        start, end = check_int("start", start), check_int("end", end)
        if not 0 <= start <= end <= len(current):
            raise ValueError(f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= "
                             f"{len(current)} (characters)")
        if tok is not None:
            new_tok, te = retokenize(self.model.tokenizer, tok, start, end, text)
            prepared = _Prepared(te.pos, te.n_delete, te.ids, new_tok, len(new_tok.ids))
        else:  # the tokens are not the text's canonical tokenisation: one splice to the canonical one
            new_tok = TokenizedText.build(self.model.tokenizer, current[:start] + text + current[end:])
            p, e, piece = id_splice(self._state.ids[1:], new_tok.ids)
            prepared = _Prepared(p, e - p, piece.tolist(), new_tok, len(new_tok.ids))
        self._check_length(prepared.length)
        return prepared

    def _check_length(self, n: int) -> None:
        if n + 1 > self.model.max_positions:
            raise ValueError(f"the document would be {n} tokens; this model takes at most "
                             f"{self.model.max_tokens} (model.document(text, chunked=True) takes any length)")

    def _check_positions(self, positions: object, n: int) -> np.ndarray | None:
        """`positions` (one label per token, BOS excluded) as the labels of every row; None: fresh labels."""
        if positions is None:
            return None
        spec = self.model.spec
        if not spec.labelled:
            raise ValueError("positions= needs a RoPE model exported with position labels (position_scale > 1); "
                             f"this one has positions {spec.positions!r}, position_scale {spec.position_scale}")
        a = np.asarray(positions)
        if a.ndim != 1 or len(a) != n:
            raise ValueError(f"positions must be one label per token ({n}), got shape {a.shape}")
        return check_labels(np.concatenate([np.zeros(1, a.dtype), a]), n + 1, spec.label_limit)

    def _saved_labels(self) -> np.ndarray | None:
        """Every row's position label where the model has labels (a rebuild must keep them), else None."""
        st = self._state
        return st.labels[st.order].copy() if self.model.spec.labelled else None

    def _build(self, ids: list[int], labels: np.ndarray | None = None) -> DocState:
        m = self.model
        state = DocState.empty(m.spec, cap=max(64, len(ids) + 1 + (len(ids) + 1) // 8))
        stats = m.engine.apply(state, 0, 0, np.asarray([m.bos_token_id, *ids], np.int64), labels)
        self.history.append(plain_fields(stats))
        return state

    @staticmethod
    def _commit(batch: list[tuple[Document, _Prepared]]) -> list[EditStats]:
        """Apply prepared edits of distinct documents in one engine pass (their locks are held)."""
        model = batch[0][0].model
        stats: list[EditStats | None] = [None] * len(batch)
        work = []
        for i, (d, p) in enumerate(batch):
            if p.noop:  # nothing to compute and nothing to record; the text may still be re-canonicalised
                d._tok = p.tok if p.tok is not None else d._tok
                stats[i] = EditStats.nothing(model.spec, d._state.n - 1)
            else:
                work.append((i, d, p))
        if work:
            before = [(d, (d._state.ids[1:].tolist(), d._saved_labels()), d._tok) for _, d, _ in work]
            try:
                done = model.engine.apply_many([(d._state, p.pos + 1, p.n_delete, np.asarray(p.ids, np.int64))
                                                for _, d, p in work])
            except BaseException:
                for d, saved, tok in before:  # restore exactly the previous documents, then report
                    d._tok, d._pending = tok, saved
                    try:
                        d._live()
                    except BaseException:  # the rebuild failed too: it is retried on the next access
                        pass
                raise
            for (i, d, p), s in zip(work, done, strict=True):
                d._tok = p.tok
                d.history.append(plain_fields(s))
                stats[i] = s
        return stats  # type: ignore[return-value]


def edit_many(model: Model, edits: Sequence[tuple[Document, int, int, str]]) -> list[EditStats]:
    """`Model.edit_many`: validate every edit first, then apply them in rounds (each document at most
    once per round), every round one engine pass over all its documents."""
    if not isinstance(edits, Sequence) or isinstance(edits, (str, bytes)):
        raise TypeError(f"edits must be a sequence of (document, start, end, text), got {type(edits).__name__}")
    docs: dict[int, Document] = {}
    for i, e in enumerate(edits):
        if not isinstance(e, (tuple, list)) or len(e) != 4 or not isinstance(e[0], Document):
            raise TypeError(f"edits[{i}] must be (document, start, end, text), got {e!r}"[:200])
        if e[0].model is not model:
            raise ValueError(f"edits[{i}]: the document belongs to another model")
        docs[id(e[0])] = e[0]
    locks = [docs[k]._lock for k in sorted(docs)]
    for lock in locks:
        lock.acquire()
    try:
        for d in docs.values():
            d._live()
        last: dict[int, _Prepared] = {}
        rounds: list[list[tuple[int, Document, _Prepared]]] = []
        seen: dict[int, int] = {}
        for i, (doc, start, end, text) in enumerate(edits):
            try:
                p = doc._prepare(start, end, text, base=last.get(id(doc)))
            except (TypeError, ValueError) as err:
                raise type(err)(f"edits[{i}]: {err}") from None
            last[id(doc)] = p
            k = seen.get(id(doc), 0)
            seen[id(doc)] = k + 1
            if k == len(rounds):
                rounds.append([])
            rounds[k].append((i, doc, p))
        out: list[EditStats | None] = [None] * len(edits)
        for batch in rounds:
            stats = Document._commit([(d, p) for _, d, p in batch])
            for (i, _, _), s in zip(batch, stats, strict=True):
                out[i] = s
        return out  # type: ignore[return-value]
    finally:
        for lock in reversed(locks):
            lock.release()


