"""`ChunkedDocument`: a text of any length, as content-defined chunks that are ordinary `Document`s.

Owns the mapping of a character edit to chunk operations and the document-level result. Where the
text is cut is `chunking.py` (a function of the text alone); each chunk's incremental state is a
`Document` (document.py), so "incremental == fresh build of the final text" holds chunk by chunk.

An edit: re-chunk around it (`rechunk`), keep the chunks whose text is unchanged, edit an old chunk
into a new one when at least half of the new chunk's text survives from it (the old chunk with the
largest surviving overlap), build the other new chunks fresh, drop the old chunks nobody took.
Everything is planned (validated, tokenised, re-chunked) before anything changes; the fresh chunks are
built, then the edits of the reused chunks run in one `edit_many` pass, which restores its documents
if the engine fails: a failed edit leaves the document as it was.

The result (`logits`):
- one chunk: exactly that chunk's logits (what a plain `Document` of the text gives);
- pooling `mean`: head(Σ_c S_c / Σ_c n_c), S_c the chunk's float64 sum of final-norm rows and n_c its
  rows (its BOS row included): the token-weighted mean of the chunks' pooled vectors, then head.onnx;
- pooling `last`: the last chunk's logits (the head of the document's last row within its chunk).
Each chunk's own result is in `chunks`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vqinc.runtime import document as _document
from vqinc.runtime.document import HISTORY, Document, DocumentOutputs, check_int, check_text
from vqinc.runtime.engine.propagate import EditStats
from vqinc.runtime.format.stages import full_macs, stage_macs
from vqinc.runtime.model_dir import softmax
from vqinc.runtime.text.chunking import ChunkConfig, chunk_bounds, rechunk
from vqinc.runtime.text.tokens import TokenizedText, diff_texts, retokenize

if TYPE_CHECKING:
    from vqinc.runtime.model_dir import Model


@dataclass
class ChunkEditStats(EditStats):
    """`EditStats` of a whole chunked document: the chunks' costs summed, plus what happened to chunks."""

    num_chunks: int = 0
    chunks_edited: int = 0
    chunks_built: int = 0
    chunks_dropped: int = 0
    chunking_ms: float = 0.0
    """Of wall_ms: validation, tokenisation and re-chunking (before any chunk is touched)."""


@dataclass(frozen=True)
class ChunkResult:
    """One chunk: characters [start, end) of the document, its tokens and its own result."""

    start: int
    end: int
    num_tokens: int
    logits: np.ndarray
    label: str

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits)


@dataclass
class _Plan:
    """A validated edit: the new text, its chunk bounds and tokenisations, and where each new chunk comes from."""

    text: str
    bounds: list[int]
    toks: list[TokenizedText]
    keep: dict[int, int] = field(default_factory=dict)
    """new chunk -> old chunk with the same text."""
    edit: dict[int, tuple[int, tuple[int, int, str]]] = field(default_factory=dict)
    """new chunk -> (old chunk, its character edit)."""
    build: list[int] = field(default_factory=list)
    """new chunks built fresh."""
    whole: TokenizedText | None = None
    """The whole text's tokenisation, kept while the text is short enough for the single-chunk rule."""
    ms: float = 0.0


class ChunkedDocument(DocumentOutputs):
    """A document of any length (up to `ChunkConfig.max_doc_chars`). Create with
    `model.document(text, chunked=True)` (or `model.document(text)` for a text longer than the window)."""

    def __init__(self, model: Model, text: str = "", config: ChunkConfig | None = None):
        self.model = model
        self.config = config if config is not None else ChunkConfig.for_window(model.max_tokens)
        if self.config.max_tokens > model.max_tokens:
            raise ValueError(f"ChunkConfig.max_tokens is {self.config.max_tokens}; this model takes at most "
                             f"{model.max_tokens} tokens per chunk")
        self.history: deque[EditStats] = deque(maxlen=HISTORY)
        self._lock = threading.RLock()
        self._text, self._bounds, self._docs, self._toks = "", [0, 0], [], []
        self._whole: TokenizedText | None = None
        self._logits = np.zeros(len(model.labels), np.float32)
        t0 = time.perf_counter()
        check_text(text)
        self._check_length(len(text))
        plan = self._plan_text(text, None)
        self.history.append(self._apply([(self, plan)], t0)[0])

    # -- public state ------------------------------------------------------------------------
    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    @property
    def logits(self) -> np.ndarray:
        with self._lock:
            return self._logits.copy()

    @property
    def num_tokens(self) -> int:
        """Tokens of all chunks (each chunk tokenised on its own; BOS rows not counted)."""
        with self._lock:
            return sum(len(t) for t in self._toks)

    @property
    def token_ids(self) -> np.ndarray:
        """The chunks' token ids, concatenated (BOS rows excluded)."""
        with self._lock:
            return np.concatenate([t.ids for t in self._toks]).astype(np.int64)

    @property
    def bounds(self) -> list[int]:
        """Chunk boundaries in characters: [0, b1, ..., len(text)]."""
        with self._lock:
            return list(self._bounds)

    @property
    def chunks(self) -> list[ChunkResult]:
        """Each chunk's span and own result (a client may show them)."""
        with self._lock:
            return [ChunkResult(a, b, len(t), d.logits, d.label)
                    for a, b, t, d in zip(self._bounds[:-1], self._bounds[1:], self._toks, self._docs, strict=True)]

    def chunk_codes(self) -> list[np.ndarray]:
        """Per chunk, its (L, n_c, H) attention codes (BOS row included), as `Document.codes`."""
        with self._lock:
            return [d.codes for d in self._docs]

    def chunk_logits(self) -> list[np.ndarray]:
        with self._lock:
            return [d.logits for d in self._docs]

    def chunk_positions(self) -> list[np.ndarray]:
        """Per chunk, its tokens' position labels, as `Document.positions` (each chunk labels itself)."""
        with self._lock:
            return [d.positions for d in self._docs]

    def nbytes(self) -> int:
        """Memory held by the chunks' incremental states."""
        with self._lock:
            return sum(d.nbytes() for d in self._docs)

    # -- edits -------------------------------------------------------------------------------
    def edit(self, start: int, end: int, text: str) -> EditStats:
        """Replace characters [start, end) by `text` (an editor's change event)."""
        with self._lock:
            t0 = time.perf_counter()
            plan = self._plan_edit(start, end, text)
            if plan is None:
                return _nothing(self)
            return self._apply([(self, plan)], t0)[0]

    def set_text(self, new_text: str) -> EditStats:
        """Make the document hold `new_text` (the single splice that differs from the current text)."""
        with self._lock:
            check_text(new_text)
            return self.edit(*diff_texts(self._text, new_text))

    # -- planning (pure with respect to the document: nothing changes here) ---------------------
    def _check_length(self, n: int) -> None:
        if n > self.config.max_doc_chars:
            raise ValueError(f"the document would be {n:,} characters; a document takes at most "
                             f"{self.config.max_doc_chars:,} (ChunkConfig.max_doc_chars)")

    def _validate(self, start: object, end: object, text: object, length: int) -> tuple[int, int, str]:
        check_text(text)
        start, end = check_int("start", start), check_int("end", end)
        if not 0 <= start <= end <= length:
            raise ValueError(f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= {length} (characters)")
        self._check_length(length - (end - start) + len(text))  # type: ignore[arg-type]
        return start, end, text  # type: ignore[return-value]

    def _plan_edit(self, start: object, end: object, piece: object) -> _Plan | None:
        a, e, piece = self._validate(start, end, piece, len(self._text))
        if piece == self._text[a:e]:
            return None
        return self._plan_text(self._text[:a] + piece + self._text[e:], (a, e, piece))

    def _plan_text(self, new_text: str, edit: tuple[int, int, str] | None) -> _Plan:
        t0 = time.perf_counter()
        cfg, tk = self.config, self.model.tokenizer
        ob, otoks, n = self._bounds, self._toks, len(new_text)
        a, e, piece = edit if edit is not None else (0, len(self._text), new_text)
        ne = a + len(piece)
        delta = ne - e
        cache: dict[tuple[int, int], TokenizedText] = {}
        old_chunk = {(x, y): k for k, (x, y) in enumerate(zip(ob, ob[1:], strict=False))} if otoks else {}

        def tok(s: int, z: int) -> TokenizedText:
            got = cache.get((s, z))
            if got is not None:
                return got
            k = old_chunk.get((s, z)) if z <= a else old_chunk.get((s - delta, z - delta)) if s >= ne else None
            if k is not None:  # unchanged text of an old chunk
                got = otoks[k]
            elif (s, z) == (0, n) and self._whole is not None and edit is not None:
                got = retokenize(tk, self._whole, a, e, piece)[0]
            else:
                k = old_chunk.get((s, z - delta)) if s <= a and ne <= z else None
                if k is not None and edit is not None:  # an old chunk with the edit inside it
                    got = retokenize(tk, otoks[k], a - s, e - s, piece)[0]
                else:
                    got = TokenizedText.build(tk, new_text[s:z])
            cache[(s, z)] = got
            return got

        def count(s: int, z: int) -> int:
            return len(tok(s, z))

        if edit is None or not otoks:
            nb = chunk_bounds(new_text, cfg, count)
        else:
            nb = rechunk(ob, new_text, a, e, ne, cfg, count)
        plan = _Plan(new_text, nb, [tok(x, y) for x, y in zip(nb, nb[1:], strict=False)])
        if n <= cfg.single_max_chars:
            plan.whole = tok(0, n)
        self._match(plan, a, e, ne)
        plan.ms = (time.perf_counter() - t0) * 1e3
        return plan

    def _match(self, plan: _Plan, a: int, e: int, ne: int) -> None:
        """Decide, for every new chunk, which old chunk it keeps or edits, or that it is built fresh."""
        ob, nb, delta = self._bounds, plan.bounds, ne - e
        if not self._docs:  # the initial build
            plan.build = list(range(len(nb) - 1))
            return
        old = {(x, y): k for k, (x, y) in enumerate(zip(ob, ob[1:], strict=False))} if self._docs else {}
        free_new, taken = [], set()
        for k, (x, y) in enumerate(zip(nb, nb[1:], strict=False)):
            t = old.get((x, y)) if y <= a else old.get((x - delta, y - delta)) if x >= ne else None
            if t is not None and t not in taken and y > x:
                plan.keep[k] = t
                taken.add(t)
            else:
                free_new.append(k)
        pairs = []
        for k in free_new:
            x, y = nb[k], nb[k + 1]
            pieces = [(x, min(y, a))] + [(max(x, ne) - delta, y - delta)]  # surviving old text, old coordinates
            for t in range(len(ob) - 1):
                if t in taken:
                    continue
                p, q = ob[t], ob[t + 1]
                ov = sum(max(0, min(q, hi) - max(p, lo)) for lo, hi in pieces if hi > lo)
                if 2 * ov >= y - x and (ov > 0 or y == x):
                    pairs.append((-ov, k, t))
        pairs.sort()
        for _, k, t in pairs:
            if k in plan.edit or t in taken:
                continue
            taken.add(t)
            x, y = nb[k], nb[k + 1]
            p, q = ob[t], ob[t + 1]
            if (x, y) == (p, q + delta) and p <= a and e <= q:
                plan.edit[k] = (t, (a - p, e - p, plan.text[a:ne]))
            else:
                plan.edit[k] = (t, diff_texts(self._text[p:q], plan.text[x:y]))
        plan.build = [k for k in free_new if k not in plan.edit]

    # -- applying ------------------------------------------------------------------------------
    @staticmethod
    def _apply(batch: list[tuple[ChunkedDocument, _Plan]], t0: float) -> list[EditStats]:
        """Build fresh chunks, edit reused ones (one edit_many pass over all documents), then commit."""
        model = batch[0][0].model
        fresh = [{k: Document(model, p.text[p.bounds[k]:p.bounds[k + 1]]) for k in p.build} for _, p in batch]
        jobs = [(cd, k, cd._docs[t], *ed) for cd, p in batch for k, (t, ed) in p.edit.items()]
        done = _document.edit_many(model, [(d, s, z, r) for _, _, d, s, z, r in jobs]) if jobs else []
        edited: dict[int, dict[int, EditStats]] = {}
        for (cd, k, _, _, _, _), st in zip(jobs, done, strict=True):
            edited.setdefault(id(cd), {})[k] = st
        out = []
        for (cd, p), built in zip(batch, fresh, strict=True):
            mine = edited.get(id(cd), {})
            docs = []
            for k in range(len(p.bounds) - 1):
                if k in p.keep:
                    docs.append(cd._docs[p.keep[k]])
                elif k in p.edit:
                    docs.append(cd._docs[p.edit[k][0]])
                else:
                    docs.append(built[k])
            dropped = len(cd._docs) - len(p.keep) - len(p.edit)
            cd._text, cd._bounds, cd._docs, cd._toks, cd._whole = p.text, p.bounds, docs, p.toks, p.whole
            head_macs = cd._update_result()
            parts = [d.stats for k, d in built.items()] + list(mine.values())
            st = _combine(model, parts, cd, head_macs)
            st.chunks_built, st.chunks_edited, st.chunks_dropped = len(built), len(mine), dropped
            st.chunking_ms = p.ms
            st.wall_ms = (time.perf_counter() - t0) * 1e3
            cd.history.append(st)
            out.append(st)
        return out

    def _update_result(self) -> int:
        """Recompute the document's logits from its chunks; the head's MACs when it ran."""
        docs = self._docs
        if len(docs) == 1 or self.model.spec.pooling != "mean":
            self._logits = docs[-1].logits
            return 0
        states = [d.state for d in docs]
        pooled = sum(s.pooled_sum for s in states) / sum(s.n for s in states)  # (d,) float64
        (logits,) = self.model.executor.run("head", pooled=pooled[None].astype(np.float32))
        self._logits = np.asarray(logits[0])
        return stage_macs(self.model.spec)["head"].per_row


def edit_many(model: Model, edits: Sequence[tuple[object, int, int, str]]) -> list[EditStats]:
    """`Model.edit_many` over plain and chunked documents: every edit validated first (nothing changes if one
    is invalid), plain documents' edits in one pass, then chunked documents' edits in rounds (each document
    once per round), every round's chunk edits in one pass."""
    if not isinstance(edits, Sequence) or isinstance(edits, (str, bytes)):
        raise TypeError(f"edits must be a sequence of (document, start, end, text), got {type(edits).__name__}")
    chunked: dict[int, ChunkedDocument] = {}
    for i, e in enumerate(edits):
        if not isinstance(e, (tuple, list)) or len(e) != 4 or not isinstance(e[0], (Document, ChunkedDocument)):
            raise TypeError(f"edits[{i}] must be (document, start, end, text), got {e!r}"[:200])
        if e[0].model is not model:
            raise ValueError(f"edits[{i}]: the document belongs to another model")
        if isinstance(e[0], ChunkedDocument):
            chunked[id(e[0])] = e[0]
    locks = [chunked[k]._lock for k in sorted(chunked)]
    for lock in locks:
        lock.acquire()
    try:
        length = {k: len(d._text) for k, d in chunked.items()}
        rounds: list[list[tuple[int, ChunkedDocument, tuple[int, int, str]]]] = []
        seen: dict[int, int] = {}
        plain = []
        for i, (doc, start, end, text) in enumerate(edits):
            if isinstance(doc, Document):
                plain.append(i)
                continue
            try:
                a, z, s = doc._validate(start, end, text, length[id(doc)])
            except (TypeError, ValueError) as err:
                raise type(err)(f"edits[{i}]: {err}") from None
            length[id(doc)] += len(s) - (z - a)
            r = seen.get(id(doc), 0)
            seen[id(doc)] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append((i, doc, (a, z, s)))
        out: list[EditStats | None] = [None] * len(edits)
        if plain:
            for i, st in zip(plain, _document.edit_many(model, [edits[i] for i in plain]), strict=True):
                out[i] = st
        for batch in rounds:
            t0 = time.perf_counter()
            todo = []
            for i, doc, (a, z, s) in batch:
                plan = doc._plan_edit(a, z, s)
                if plan is None:
                    out[i] = _nothing(doc)
                else:
                    todo.append((i, doc, plan))
            if todo:
                for (i, _, _), st in zip(todo, ChunkedDocument._apply([(d, p) for _, d, p in todo], t0),
                                         strict=True):
                    out[i] = st
        return out  # type: ignore[return-value]
    finally:
        for lock in reversed(locks):
            lock.release()


def _combine(model: Model, parts: list[EditStats], doc: ChunkedDocument, head_macs: int) -> ChunkEditStats:
    spec = model.spec
    st = ChunkEditStats(sum(p.n_delete for p in parts), sum(p.n_insert for p in parts), doc.num_tokens)
    for p in parts:
        for key, rows in p.rows.items():
            acc = st.rows.setdefault(key, [0] * len(rows))
            st.rows[key] = [x + y for x, y in zip(acc, rows, strict=True)]
    st.macs = sum(p.macs for p in parts) + head_macs
    st.full_macs = sum(full_macs(spec, len(t) + 1) for t in doc._toks) + head_macs
    st.near_ties = sum(p.near_ties for p in parts)
    st.canonical_rows = sum(p.canonical_rows for p in parts)
    st.dense_layers = sum(p.dense_layers for p in parts)
    st.relabelled = sum(p.relabelled for p in parts)
    st.compacted = any(p.compacted for p in parts)
    st.graph_calls = sum(p.graph_calls for p in parts) + (1 if head_macs else 0)
    st.num_chunks = len(doc._docs)
    return st


def _nothing(doc: ChunkedDocument) -> ChunkEditStats:
    """The stats of an edit that changes nothing (recorded nowhere, as for a plain document)."""
    spec = doc.model.spec
    rows = EditStats.nothing(spec, 0).rows
    return ChunkEditStats(0, 0, doc.num_tokens, rows, full_macs=sum(full_macs(spec, len(t) + 1) for t in doc._toks),
                          num_chunks=len(doc._docs))

