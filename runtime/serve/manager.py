"""`DocumentManager`: the open documents of one `vqinc serve` process, shared by its front-ends.

Front-ends (LSP, WebSocket) call `open` / `edit` / `close` from their own threads; each call checks
the request at once (limits, spans, unknown documents raise `ServeError` before anything changes) and
returns a `concurrent.futures.Future` of a `Result`. One worker thread owns the model and every
`Document`: it takes the oldest pending job of each document as a batch, so edits of one document run
strictly in order, and edits of several documents that arrive together go through the engine's
many-documents path (`model.edit_many`) when the model has one, else one `doc.edit` each.

Bursts: when the worker takes a document's edit and more edits of that document are already queued
behind it, it composes them (`compose_edits`) into one splice of the text and runs one engine edit;
every request of the burst is answered with the result after the last one, `Result.coalesced` saying
how many were merged. Each edit is checked against the text it applies to; merging stops before the
first one that does not fit, which is answered with its own error when its turn comes.

Documents are `ChunkedDocument`s (any length: a text past the model's window is cut into chunks).
The client's text is the truth (an editor never takes an edit back). When the model refuses an edit
(the document would exceed `ChunkConfig.max_doc_chars`) the manager keeps the client's text beside the stale
document and answers with an error; the first later edit that fits re-synchronises with
`doc.set_text`. This module imports no server library: it is testable with the model alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from vqinc.runtime.format.stages import savings


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts."""

    max_documents: int = 128
    """Open documents across all connections, at most (`memory_mb` may allow fewer)."""
    max_documents_per_client: int = 16
    """Open documents of one connection (one WebSocket, or the LSP client), at most."""
    memory_mb: int = 2048
    """Budget for the documents' state: documents are admitted only while every open one could grow to
    its worst case (a full window of tokens, `worst_document_bytes`) within it."""
    max_chars: int = 200_000
    """Characters per document (beyond that the model's window refuses it anyway)."""
    history: int = 1_000
    """Edits per document kept for the stats request."""


def worst_json_bytes(num_chars: int) -> int:
    """Bytes of a JSON string of `num_chars` code points in its largest encoding: every code point
    escaped, astral ones as a surrogate pair (\\uXXXX\\uXXXX, 12 bytes), plus the quotes."""
    return 12 * num_chars + 2


def worst_document_bytes(model, max_chars: int) -> int:
    """Upper bound on one open document's memory: its state arrays at the largest capacity a document
    of the model's full window can reach (the window's slots twice, during an edit that replaces them
    all, plus a quarter of growth), its text and its tokens' Python objects."""
    from vqinc.runtime.engine.state import DocState

    small, big = (DocState.empty(model.spec, cap=c).nbytes() for c in (64, 128))
    per_slot = (big - small) / 64
    slots = int(2 * model.max_positions * 1.25) + 32
    return int(small + per_slot * (slots - 64)) + 4 * max_chars + 256 * model.max_positions


class ServeError(Exception):
    """A request the server refuses; `code` is the protocol's machine-readable reason."""

    code = "bad_request"


class LimitError(ServeError):
    code = "limit"


class NotOpenError(ServeError):
    code = "not_open"


@dataclass
class Result:
    """The state of one document after a job, in the units the protocols report."""

    key: Hashable
    tag: object
    """Echoed from the request (an LSP version, a WebSocket sequence number)."""
    label: str | None = None
    probs: list[float] | None = None
    logits: list[float] | None = None
    num_tokens: int = 0
    num_chars: int = 0
    ms: float = 0.0
    """Wall-clock of the model call (`doc.edit` or the batch's `edit_many`), tokenisation included."""
    engine_ms: float = 0.0
    server_ms: float = 0.0
    """From the request's arrival at the manager to the result (queueing included)."""
    macs: int = 0
    full_macs: int = 0
    batch: int = 1
    """Documents in the model call that computed this result."""
    error: str | None = None
    code: str | None = None
    closed: bool = False
    coalesced: int = 1
    """Edit requests merged into the one engine edit that computed this result (a burst of keystrokes
    queued while the model ran): every request of the burst gets the state after its last edit."""

    @property
    def savings(self) -> float:
        return savings(self.full_macs, self.macs)

    def to_json(self, labels: tuple[str, ...]) -> dict:
        out = {"label": self.label, "probs": dict(zip(labels, self.probs, strict=True)) if self.probs else None,
               "logits": self.logits, "tokens": self.num_tokens, "chars": self.num_chars,
               "ms": round(self.ms, 3), "engine_ms": round(self.engine_ms, 3),
               "server_ms": round(self.server_ms, 3), "macs": self.macs, "full_macs": self.full_macs,
               "savings": round(self.savings, 2), "batch": self.batch}
        if self.coalesced > 1:
            out["coalesced"] = self.coalesced
        if self.error:
            out.update(error=self.error, code=self.code)
        return out


@dataclass(eq=False)
class _Doc:
    key: Hashable
    length: int
    """Characters in the client's text after every accepted request (kept at submit time)."""
    doc: object = None
    client_text: str | None = None
    """The client's text while `doc` lags behind it (None when `doc` holds exactly the client's text)."""
    history: deque = field(default_factory=deque)
    last_stats: object = None


@dataclass(eq=False)
class _Job:
    kind: str  # "open" | "edit" | "close"
    rec: _Doc
    start: int = 0
    end: int = 0
    text: str = ""
    tag: object = None
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.perf_counter)
    merged: list = field(default_factory=list)
    """Later edits of the same document composed into this one (answered with its result)."""


def _type_error(start: object, end: object) -> str | None:
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, int) or isinstance(v, bool):
            return f"{name} must be an integer, got {type(v).__name__}"
    return None


def edit_error(length: int, start: object, end: object) -> str | None:
    """Why the edit [start, end) does not fit a text of `length` code points, or None when it does."""
    if (err := _type_error(start, end)) is not None:
        return err
    if not 0 <= start <= end <= length:
        return (f"edit span [{start}, {end}) is invalid: need 0 <= start <= end <= {length} "
                f"(the document's length in code points)")
    return None


def compose_edits(base: str, edits) -> tuple[int, int, str]:
    """One splice (start, end, text) of `base` equal to applying `edits` ((start, end, text) each, in
    the coordinates of the text left by the ones before it) one by one: `base[:start] + text +
    base[end:]` is the final text. The splice is trimmed of what it would rewrite unchanged, so a burst
    that types and deletes the same characters gives an empty edit. Raises ValueError, naming the
    edit, when one does not fit the text it applies to. Costs the edits' sizes, not the text's."""
    s, e, t = 0, 0, ""  # the composed splice so far: the current text is base[:s] + t + base[e:]
    for i, (a, b, u) in enumerate(edits):
        err = edit_error(len(base) - (e - s) + len(t), a, b)
        if err is not None:
            raise ValueError(f"edit {i}: {err}")
        if i == 0:
            s, e, t = a, b, u
            continue
        mid = s + len(t)  # where the composed text ends, in current coordinates
        lo, hi = min(a, s), max(b, mid)
        seg = base[lo:s] + t + base[e:e + hi - mid]  # the current text's [lo, hi)
        s, e, t = lo, e + max(0, hi - mid), seg[: a - lo] + u + seg[b - lo:]
    old = base[s:e]
    k = 0
    while k < min(len(old), len(t)) and old[k] == t[k]:
        k += 1
    j = 0
    while j < min(len(old), len(t)) - k and old[-1 - j] == t[-1 - j]:
        j += 1
    return s + k, e - j, t[k: len(t) - j]


def call_in_loop(loop, fn, *args) -> None:
    """Run `fn(*args)` on `loop`'s thread: at once if that is this thread, else through its queue."""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


class Drainer:
    """For a manager without a worker thread: runs its pending jobs once per event-loop turn, after
    every message already read has been submitted (so documents edited together run as one batch)."""

    def __init__(self, manager: DocumentManager):
        self.manager, self._scheduled = manager, False

    def kick(self, loop) -> None:
        if not self.manager.threaded and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        self.manager.run_pending()


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise ServeError(f"text must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON allows "\ud800" alone; no text holds it
        raise ServeError(f"text is not valid Unicode: a lone surrogate {text[e.start]!r} at index {e.start} "
                         f"(UTF-16 surrogates come in pairs)") from None


def _client(key: Hashable) -> Hashable:
    """The connection a key belongs to: front-ends key documents as (front-end, [connection,] name)."""
    if isinstance(key, tuple) and len(key) >= 2:
        return key[:-1] if len(key) > 2 else key[:1]
    return None


def _name(key: Hashable) -> object:
    """How errors name a document: front-ends key them as (front-end, ..., client's name)."""
    return key[-1] if isinstance(key, tuple) and key else key


class DocumentManager:
    """Thread-safe registry of open documents over one `Model`; see the module docstring."""

    def __init__(self, model, limits: ServeLimits = ServeLimits(), threaded: bool = True):
        """`threaded`: a worker thread runs the jobs (any number of front-ends, on any threads). Without
        it the owner calls `run_pending()` (one front-end on one event loop: no thread hand-offs, which
        cost a scheduler wake-up each way on a busy machine)."""
        self.model, self.limits, self.threaded = model, limits, threaded
        self.labels = tuple(model.labels)
        self.document_bytes = worst_document_bytes(model, limits.max_chars)
        budget_docs = max(1, limits.memory_mb * (1 << 20) // self.document_bytes)
        self.max_documents = min(limits.max_documents, budget_docs)
        """Open documents at most: the flag, or fewer where the memory budget says so."""
        self.max_documents_per_client = min(limits.max_documents_per_client, self.max_documents)
        self._docs: dict[Hashable, _Doc] = {}
        self._per_client: dict[Hashable, int] = {}
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._model_lock = threading.RLock()  # re-entrant: a result callback may run pending jobs itself
        self._stopping = False
        self.batches: deque[int] = deque(maxlen=10_000)
        """Sizes of recent model calls (for tests and stats: >1 means the many-documents path ran)."""
        self._worker = None
        if threaded:
            self._worker = threading.Thread(target=self._run, name="vqinc-serve-worker", daemon=True)
            self._worker.start()

    # -- requests (any thread) -------------------------------------------------------------------
    def open(self, key: Hashable, text: str, tag: object = None) -> Future:
        """Open `key` holding `text` (an open key is replaced, as an editor re-opening a buffer)."""
        _check_text(text)
        if len(text) > self.limits.max_chars:
            raise LimitError(f"document of {len(text)} characters is over this server's limit of "
                             f"{self.limits.max_chars} (--max-chars)")
        with self._cv:
            self._check_running()
            old = self._docs.get(key)
            client = _client(key)
            if old is None and len(self._docs) >= self.max_documents:
                raise LimitError(f"{len(self._docs)} documents are open, the limit of this server "
                                 f"({self.max_documents}: --max-documents {self.limits.max_documents}, memory "
                                 f"budget {self.limits.memory_mb} MB at {self.document_bytes / 2**20:.0f} MB "
                                 f"a document at most); close one first")
            if old is None and self._per_client.get(client, 0) >= self.max_documents_per_client:
                raise LimitError(f"this connection has {self.max_documents_per_client} documents open, the "
                                 f"limit of one connection; close one first")
            if old is not None:
                self._forget(key)
                self._queue.append(_Job("close", old))
            rec = _Doc(key, len(text), history=deque(maxlen=self.limits.history))
            self._docs[key] = rec
            self._per_client[client] = self._per_client.get(client, 0) + 1
            return self._enqueue(_Job("open", rec, text=text, tag=tag))

    def edit(self, key: Hashable, start: int, end: int, text: str, tag: object = None) -> Future:
        """Replace characters [start, end) (code points) of `key` by `text`."""
        if (err := _type_error(start, end)) is not None:
            raise ServeError(err)
        _check_text(text)
        with self._cv:
            self._check_running()
            rec = self._get(key)
            if (err := edit_error(rec.length, start, end)) is not None:
                raise ServeError(err)
            new_len = rec.length - (end - start) + len(text)
            if new_len > self.limits.max_chars:
                raise LimitError(f"the edit would make the document {new_len} characters, over this server's "
                                 f"limit of {self.limits.max_chars} (--max-chars)")
            rec.length = new_len
            return self._enqueue(_Job("edit", rec, start, end, text, tag))

    def close(self, key: Hashable) -> Future:
        with self._cv:
            rec = self._get(key)
            self._forget(key)
            return self._enqueue(_Job("close", rec))

    def close_all(self, keys=None) -> list[Future]:
        """Close every open key (or those of `keys` that are open): a connection going away."""
        with self._cv:
            wanted = list(self._docs) if keys is None else [k for k in keys if k in self._docs]
            return [self.close(k) for k in wanted]

    def is_open(self, key: Hashable) -> bool:
        with self._cv:
            return key in self._docs

    @property
    def num_open(self) -> int:
        with self._cv:
            return len(self._docs)

    def stats(self, key: Hashable) -> dict:
        """Per-edit costs of `key`: the last edit in full, and a summary of the recent ones."""
        with self._cv:
            rec = self._get(key)
            hist, last = list(rec.history), rec.last_stats
        ms = np.array([h[0] for h in hist]) if hist else np.zeros(0)
        sav = np.array([h[1] for h in hist]) if hist else np.zeros(0)
        summary = {"edits": len(hist)}
        if len(hist):
            summary.update(ms_median=round(float(np.median(ms)), 3), ms_p90=round(float(np.percentile(ms, 90)), 3),
                           savings_median=round(float(np.median(sav)), 2))
        last_d = None
        if last is not None:
            last_d = dataclasses.asdict(last)
            last_d["savings"] = round(last.savings, 2)
        return {"last": last_d, "summary": summary,
                "recent": [{"ms": round(m, 3), "savings": round(s, 2)} for m, s in hist[-100:]]}

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close everything and stop the worker (pending jobs finish first)."""
        self.close_all()
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._worker is not None:
            self._worker.join(timeout)
        else:
            self.run_pending()

    def run_pending(self) -> int:
        """Run queued jobs in the calling thread until none is left (for `threaded=False`); returns how
        many ran."""
        done = 0
        while batch := self._take_batch(block=False):
            done += sum(1 + len(j.merged) for j in batch)
        return done

    def _forget(self, key: Hashable) -> None:
        del self._docs[key]
        client = _client(key)
        self._per_client[client] -= 1
        if not self._per_client[client]:
            del self._per_client[client]

    def _get(self, key: Hashable) -> _Doc:
        rec = self._docs.get(key)
        if rec is None:
            raise NotOpenError(f"document {_name(key)!r} is not open")
        return rec

    def _check_running(self) -> None:
        if self._stopping:
            raise ServeError("the server is shutting down")

    def _enqueue(self, job: _Job) -> Future:
        self._queue.append(job)
        self._cv.notify()
        return job.future

    # -- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while self._take_batch(block=True):
            pass

    def _take_batch(self, block: bool) -> list[_Job]:
        """Take the oldest pending job of each document and run them; [] when there is nothing (and,
        blocking, the manager is stopping). Taking and running happen under one lock, so two threads
        running jobs can never reorder the edits of a document."""
        with self._model_lock:
            with self._cv:
                while block and not self._queue and not self._stopping:
                    self._cv.wait()
                batch, rest, seen, waiting = [], deque(), {}, set()
                for job in self._queue:  # the oldest job of each document; the rest wait their turn
                    lead = seen.get(id(job.rec))
                    if lead is None:
                        seen[id(job.rec)] = job if job.kind == "edit" else False
                        batch.append(job)
                    elif lead and job.kind == "edit" and id(job.rec) not in waiting:
                        lead.merged.append(job)  # a burst: composed into the lead's edit below
                    else:
                        waiting.add(id(job.rec))  # a burst ends at a non-edit job of its document
                        rest.append(job)
                self._queue = rest
                bad = [j for j in batch if j.kind == "edit" and not self._coalesce(j)]
                if bad:
                    batch = [j for j in batch if all(j is not b for b in bad)]
            for job in bad:
                self._refuse(job)
            try:
                self._run_batch(batch)
            except BaseException as e:  # never leave a caller waiting
                for job in batch:
                    for j in (job, *job.merged):
                        if not j.future.done():
                            j.future.set_exception(e)
        return batch + bad

    def _coalesce(self, lead: _Job) -> bool:
        """Compose `lead.merged` into `lead`'s edit, over the text it applies to (under `_cv`). Merging
        stops before the first edit that does not fit: it and the ones after it go back to the front of
        the queue. False when `lead` itself does not fit."""
        rec = lead.rec
        base = rec.client_text if rec.client_text is not None else (rec.doc.text if rec.doc is not None else None)
        if base is None or edit_error(len(base), lead.start, lead.end) is not None:
            self._queue.extendleft(reversed(lead.merged))
            lead.merged = []
            return False
        if not lead.merged:
            return True
        edits, length = [(lead.start, lead.end, lead.text)], len(base) - (lead.end - lead.start) + len(lead.text)
        for n, j in enumerate(lead.merged):
            if edit_error(length, j.start, j.end) is not None:
                self._queue.extendleft(reversed(lead.merged[n:]))
                lead.merged = lead.merged[:n]
                break
            edits.append((j.start, j.end, j.text))
            length += len(j.text) - (j.end - j.start)
        if lead.merged:
            lead.start, lead.end, lead.text = compose_edits(base, edits)
        return True

    def _refuse(self, job: _Job) -> None:
        """Answer an edit that does not fit the text it applies to; the document is unchanged."""
        rec = job.rec
        length = len(rec.client_text) if rec.client_text is not None else len(rec.doc.text) if rec.doc else 0
        res = Result(rec.key, job.tag, num_chars=length, code=ServeError.code,
                     error=edit_error(length, job.start, job.end) or "the document is not open")
        _answer(job, res)

    def _run_batch(self, batch: list[_Job]) -> None:
        fast = [j for j in batch if j.kind == "edit" and j.rec.doc is not None and j.rec.client_text is None]
        fast_ids = {id(j) for j in fast}
        for job in batch:
            if id(job) not in fast_ids:
                self._run_one(job)
        if len(fast) > 1:
            self._edit_many(fast)
        else:
            for job in fast:
                self._edit_one(job)

    def _run_one(self, job: _Job) -> None:
        rec = job.rec
        if job.kind == "close":
            rec.doc = rec.client_text = None
            job.future.set_result(Result(rec.key, job.tag, closed=True))
        elif job.kind == "open":
            self._resync(job, job.text)
        else:  # an edit of a document that lags behind its client: apply to the client's text, resync
            base = rec.client_text if rec.client_text is not None else rec.doc.text
            self._resync(job, base[: job.start] + job.text + base[job.end:])

    def _resync(self, job: _Job, text: str) -> None:
        """Make the document hold `text`: build it, or diff against what it holds."""
        rec = job.rec
        t0 = time.perf_counter()
        try:
            if rec.doc is None:
                rec.doc = self.model.document(text, chunked=True)
                stats = rec.doc.stats
            else:
                stats = rec.doc.set_text(text)
        except (ValueError, TypeError) as e:
            rec.client_text = text
            self._finish(job, None, 0.0, error=str(e), code="too_long")
            return
        except Exception as e:
            rec.client_text = text
            self._finish(job, None, 0.0, error=f"model failure: {e}", code="internal")
            return
        rec.client_text = None
        self._finish(job, stats, (time.perf_counter() - t0) * 1e3)

    def _edit_one(self, job: _Job) -> None:
        doc = job.rec.doc
        before = doc.text
        self.batches.append(1)
        t0 = time.perf_counter()
        try:
            stats = doc.edit(job.start, job.end, job.text)
        except Exception as e:  # the document is unchanged (Document's guarantee); keep the client's text
            job.rec.client_text = before[: job.start] + job.text + before[job.end:]
            code = "too_long" if isinstance(e, ValueError) else "internal"
            self._finish(job, None, 0.0, error=str(e) if code == "too_long" else f"model failure: {e}", code=code)
            return
        self._finish(job, stats, (time.perf_counter() - t0) * 1e3)

    def _edit_many(self, jobs: list[_Job]) -> None:
        befores = [j.rec.doc.text for j in jobs]
        self.batches.append(len(jobs))
        t0 = time.perf_counter()
        try:
            all_stats = self.model.edit_many([(j.rec.doc, j.start, j.end, j.text) for j in jobs])
        except Exception:
            # Some edit was refused, and `edit_many` changed no document (its contract): redo them one
            # by one, so that each gets its own answer or error.
            for j, before in zip(jobs, befores, strict=True):
                assert j.rec.doc.text == before, "edit_many changed a document it then refused"
                self._edit_one(j)
            return
        ms = (time.perf_counter() - t0) * 1e3
        for j, stats in zip(jobs, all_stats, strict=True):
            self._finish(j, stats, ms, batch=len(jobs))

    def _finish(self, job: _Job, stats, ms: float, batch: int = 1, error: str | None = None,
                code: str | None = None) -> None:
        rec = job.rec
        chars = len(rec.client_text) if rec.client_text is not None else len(rec.doc.text)
        res = Result(rec.key, job.tag, num_chars=chars, ms=ms, batch=batch, error=error, code=code)
        if stats is not None:
            doc = rec.doc
            logits = doc.logits
            res.label, res.probs, res.logits = doc.label, doc.probs.tolist(), logits.astype(float).tolist()
            res.num_tokens, res.engine_ms = stats.num_tokens, stats.wall_ms  # BOS not counted
            res.macs, res.full_macs = stats.macs, stats.full_macs
            rec.last_stats = stats
            rec.history.append((ms, stats.savings))
        _answer(job, res)


def _answer(job: _Job, res: Result) -> None:
    """Answer a job and every request merged into it with one result (each its own tag and wait)."""
    res.coalesced = 1 + len(job.merged)
    now = time.perf_counter()
    res.server_ms = (now - job.t_submit) * 1e3
    job.future.set_result(res)
    for j in job.merged:  # in the order they arrived, after the lead
        j.future.set_result(dataclasses.replace(res, tag=j.tag, server_ms=(now - j.t_submit) * 1e3))
