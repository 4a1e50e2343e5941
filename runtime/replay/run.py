"""Replay of real edit histories through incremental documents, with per-edit statistics.

Shared by `vqinc replay`, `vqinc demo` and the benchmarks. By default the whole document is replayed
(a `ChunkedDocument`: any length, every edit applied). With `max_tokens` (benchmarks that need a fixed
n) a long text is followed through an `EditWindow` of at most that many tokens instead; edits outside
the window do not touch the document (a text that fits is one window: every edit reaches it). A trace
whose edits do not fit its text is refused before anything runs (`Trace.check`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vqinc.runtime.engine.propagate import EditStats
from vqinc.runtime.model_dir import Model
from vqinc.runtime.replay.traces import Trace
from vqinc.runtime.text.window import EditWindow


@dataclass
class RevisionResult:
    doc_id: str
    revision: str
    num_edits: int
    label: str
    prob: float
    ms: float
    macs: int
    full_macs: int
    num_tokens: int
    prev_label: str = ""
    """The label before this revision (the document's label after the previous one, or its base text's)."""
    num_chunks: int = 1

    @property
    def label_changed(self) -> bool:
        return self.label != self.prev_label


@dataclass
class ReplaySummary:
    edits: list[EditStats] = field(default_factory=list)
    revisions: list[RevisionResult] = field(default_factory=list)
    label_changes: int = 0
    skipped_edits: int = 0
    """Atomic edits that fell outside the window (no work to do)."""
    document: object = None
    """The Document being replayed (the latest one)."""
    checked_revisions: int = 0
    code_flips: int = 0
    """With check=True: codes that differ from a fresh build of the same text, summed over revisions."""
    max_logit_diff: float = 0.0

    def table(self) -> str:
        """A short markdown summary: per-edit wall time, ops saved, label changes."""
        if not self.edits:
            return "no edits replayed"
        ms = np.array([e.wall_ms for e in self.edits])
        ratio = np.array([e.savings for e in self.edits])
        macs = np.array([e.macs for e in self.edits], dtype=np.float64)
        full = np.array([e.full_macs for e in self.edits], dtype=np.float64)
        toks = np.array([e.num_tokens for e in self.edits])
        rows = [
            ("atomic edits replayed", f"{len(self.edits)}" + (f" ({self.skipped_edits} outside the window)"
                                                              if self.skipped_edits else "")),
            ("revisions", f"{len(self.revisions)}"),
            ("document tokens (median)", f"{np.median(toks):.0f}"),
            ("ms per edit (median / p90)", f"{np.median(ms):.2f} / {np.percentile(ms, 90):.2f}"),
            ("MACs per edit (median)", f"{np.median(macs):,.0f} vs full {np.median(full):,.0f}"),
            ("ops saved (median ratio / total ratio)", f"{np.median(ratio):.1f}x / {full.sum() / macs.sum():.1f}x"),
            ("label changes", f"{self.label_changes}"),
            ("codes float32 could not prove (settled in float64)", f"{sum(e.near_ties for e in self.edits)}"),
        ]
        if self.checked_revisions:
            rows.append(("vs fresh build (revisions / code flips / max dlogit)",
                         f"{self.checked_revisions} / {self.code_flips} / {self.max_logit_diff:.1e}"))
        w = max(len(k) for k, _ in rows)
        return "\n".join([f"| {'metric':<{w}} | value |", f"|{'-' * (w + 2)}|-------|"]
                         + [f"| {k:<{w}} | {v} |" for k, v in rows])


def initial_window(model: Model, text: str, max_tokens: int, center: int | None = None) -> EditWindow:
    """The widest character window around `center` whose tokenisation fits in `max_tokens`."""
    limit = min(max_tokens, model.max_tokens)
    enc = model.tokenizer.encode(text, add_special_tokens=False)
    if len(enc.ids) <= limit:
        return EditWindow(0, len(text))
    offsets = enc.offsets
    center = len(text) // 2 if center is None else center
    c_tok = next((i for i, (a, _) in enumerate(offsets) if a >= center), len(offsets) - 1)
    lo = max(0, min(c_tok - limit // 2, len(offsets) - limit))
    # a little slack: re-tokenising a window may split its edge tokens differently
    slack = min(7, (limit - 1) // 2)  # 7: the window used to end at token lo + limit - 8
    lo_char, hi_char = offsets[lo][0], offsets[lo + limit - 1 - slack][1]
    return EditWindow(lo_char, hi_char)


def check_replay_args(max_tokens: int | None, max_revisions: int | None = None) -> None:
    """ValueError unless `max_tokens` is None or an int >= 1 and `max_revisions` None or an int >= 0."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None (the whole document) or an integer >= 1, got {max_tokens!r}")
    if max_revisions is not None and (isinstance(max_revisions, bool) or not isinstance(max_revisions, int)
                                      or max_revisions < 0):
        raise ValueError(f"max_revisions must be None or an integer >= 0, got {max_revisions!r}")


def replay_trace(
    model: Model,
    trace: Trace,
    max_tokens: int | None = None,
    summary: ReplaySummary | None = None,
    on_revision: Callable[[RevisionResult], None] | None = None,
    max_revisions: int | None = None,
    check: bool = False,
) -> ReplaySummary:
    """Apply every atomic edit of `trace` to the whole document (or, with `max_tokens`, to a window of that
    many tokens); collect stats per edit and revision. ValueError (before any work) for bad arguments or an
    edit that does not fit the text it applies to."""
    check_replay_args(max_tokens, max_revisions)
    trace.check()
    summary = summary or ReplaySummary()
    if max_tokens is None:
        return _replay_whole(model, trace, summary, on_revision, max_revisions, check)
    text = trace.base
    edits_all = [e for rev in trace.revisions for e in rev.edits]
    center = int(np.median([e.at for e in edits_all])) if edits_all else None
    win = initial_window(model, text, max_tokens, center)
    doc = summary.document = model.document(text[win.start:win.end])
    prev_label = doc.label
    for k, rev in enumerate(trace.revisions):
        if max_revisions is not None and k >= max_revisions:
            break
        t0, n0, macs, full = time.perf_counter(), len(summary.edits), 0, 0
        for e in rev.edits:
            text = Trace.apply(text, e)
            local = win.local(e.at, e.delete, e.insert)
            if local is None:
                summary.skipped_edits += 1
                continue
            try:
                st = doc.edit(*local)
            except ValueError:  # the window outgrew the model
                st = None
            if st is None or len(doc.token_ids) > 1.5 * max_tokens:  # re-centre it: one large splice
                win = initial_window(model, text, max_tokens, (win.start + win.end) // 2)
                st = doc.set_text(text[win.start:win.end])
            summary.edits.append(st)
            macs, full = macs + st.macs, full + st.full_macs
        assert doc.text == text[win.start:win.end], "window drifted from the text"
        if check:  # the core invariant, on real histories: incremental == from scratch (same labels)
            fresh = model.document(doc.text, positions=doc.positions if model.spec.labelled else None)
            summary.checked_revisions += 1
            summary.code_flips += int((fresh.codes != doc.codes).sum())
            summary.max_logit_diff = max(summary.max_logit_diff, float(np.abs(fresh.logits - doc.logits).max()))
        res = RevisionResult(trace.doc_id, str(rev.id), len(summary.edits) - n0, doc.label,
                             float(doc.probs.max()), (time.perf_counter() - t0) * 1e3, macs, full,
                             len(doc.token_ids), prev_label)
        prev_label = _record(summary, res, on_revision)
    return summary


def _replay_whole(model: Model, trace: Trace, summary: ReplaySummary,
                  on_revision: Callable[[RevisionResult], None] | None, max_revisions: int | None,
                  check: bool) -> ReplaySummary:
    """`replay_trace` on the whole document: a ChunkedDocument, every edit applied as it is."""
    from vqinc.runtime.chunked import ChunkedDocument

    doc = summary.document = model.document(trace.base, chunked=True)
    assert isinstance(doc, ChunkedDocument)
    prev_label = doc.label
    for k, rev in enumerate(trace.revisions):
        if max_revisions is not None and k >= max_revisions:
            break
        t0, macs, full = time.perf_counter(), 0, 0
        for e in rev.edits:
            st = doc.edit(e.at, e.at + e.delete, e.insert)
            summary.edits.append(st)
            macs, full = macs + st.macs, full + st.full_macs
        if check:  # the core invariant, chunk by chunk: incremental == a fresh build of the same text
            fresh = ChunkedDocument(model, doc.text, doc.config)
            summary.checked_revisions += 1
            if fresh.bounds != doc.bounds:
                raise AssertionError(f"{trace.doc_id} rev {rev.id}: chunks differ from a fresh chunking")
            if model.spec.labelled:  # each chunk against a fresh build of its text with its labels
                refs = [model.document(doc.text[c.start:c.end], positions=p, chunked=False)
                        for c, p in zip(doc.chunks, doc.chunk_positions(), strict=True)]
                codes, logits = [r.codes for r in refs], [r.logits for r in refs]
            else:
                codes, logits = fresh.chunk_codes(), fresh.chunk_logits()
                summary.max_logit_diff = max(summary.max_logit_diff, float(np.abs(fresh.logits - doc.logits).max()))
            summary.code_flips += sum(int((a != b).sum()) for a, b in zip(codes, doc.chunk_codes(), strict=True))
            diffs = [np.abs(a - b).max() for a, b in zip(logits, doc.chunk_logits(), strict=True)]
            summary.max_logit_diff = max(summary.max_logit_diff, *map(float, diffs))
        res = RevisionResult(trace.doc_id, str(rev.id), len(rev.edits), doc.label, float(doc.probs.max()),
                             (time.perf_counter() - t0) * 1e3, macs, full, doc.num_tokens, prev_label,
                             len(doc.bounds) - 1)
        prev_label = _record(summary, res, on_revision)
    return summary


def _record(summary: ReplaySummary, res: RevisionResult,
            on_revision: Callable[[RevisionResult], None] | None) -> str:
    """Add one revision's result to the summary (and the callback); the label the next one compares with."""
    summary.label_changes += res.label_changed
    summary.revisions.append(res)
    if on_revision:
        on_revision(res)
    return res.label
