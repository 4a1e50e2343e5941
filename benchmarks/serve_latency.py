"""Latency an editor sees from `vqinc serve` over LSP: didChange sent -> `vqinc/result` received.

A real LSP client (pygls' LanguageClient) starts `vqinc serve MODEL_DIR` on stdio, opens a document of
`--tokens` tokens (a PEP from ../shared/data/pep-revisions.jsonl.gz, or this README) and types a
sentence into its middle one character per didChange, then deletes it with backspaces, waiting for each
result before the next keystroke (an editor's steady state, no queueing). In the same run, edit by
edit, the same keystroke is applied in this process to a local `Document` (`doc.edit`, timed here),
alternating which goes first. Reported: median / p90 of the round trip, of the local `doc.edit`, of the
server's own `doc.edit` time (from the result), and of round trip minus the server's `doc.edit` (the
protocol's overhead per keystroke). The issue's goal: median round trip <= median local doc.edit + 2 ms.

`--burst N`: instead, after the warm-up keystrokes (one at a time), send N keystrokes within
`--burst-ms` (default 100 ms) without waiting, as a fast typist, a macro or a plugin does, and report
the round trip of each (its didChange sent -> its `vqinc/result` received: p50 / p99 / max), how many
results said `coalesced`, and the check that the last result equals a fresh (chunked) document of the final text.

    python -m benchmarks.serve_latency [--model-dir DIR] [--tokens 1024] [--edits 200] [--warmup 20] [--repeats 3]
    python -m benchmarks.serve_latency --burst 180 [--burst-ms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "pep-revisions.jsonl.gz"
SENTENCE = " This proposal is clear, useful and well argued; we should accept it."


def source_text(model, n_tokens: int) -> tuple[str, str]:
    """A real text cut to n tokens: the first PEP long enough, else this README."""
    texts = []
    if TRACE.exists():
        with gzip.open(TRACE, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                texts.append((f"PEP trace {rec['doc_id']}", rec["base"]))
                if len(texts) >= 20:
                    break
    texts.append(("README.md", (ROOT / "README.md").read_text(encoding="utf-8")))
    for name, text in texts:
        enc = model.tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) >= n_tokens:
            return name, text[: enc.offsets[n_tokens - 1][1]]
    raise SystemExit(f"no source text has {n_tokens} tokens")


def keystrokes(text: str, count: int) -> list[tuple[int, int, str]]:
    """(start, end, insert) per keystroke: type SENTENCE at a word break mid-text, then backspace it."""
    at = text.find(" ", len(text) // 2)
    at = len(text) // 2 if at < 0 else at
    out, typed = [], 0
    while len(out) < count:
        for ch in SENTENCE:
            out.append((at + typed, at + typed, ch))
            typed += 1
        for _ in SENTENCE:
            out.append((at + typed - 1, at + typed, ""))
            typed -= 1
    return out[:count]


def lsp_position(text: str, offset: int):
    from lsprotocol import types as t

    head = text[:offset]
    line = head.count("\n")  # the source texts use \n only
    col = head[head.rfind("\n") + 1:]
    return t.Position(line=line, character=len(col.encode("utf-16-le")) // 2)


async def measure(args, model, text: str, edits) -> dict:
    from lsprotocol import types as t
    from pygls.lsp.client import LanguageClient

    from vqinc.runtime.serve.lsp import plain_converter

    # Custom notifications as plain JSON, as an editor parses them (pygls' default builds a namedtuple
    # class per message: ~0.3 ms of client time that no editor spends).
    client = LanguageClient("serve-latency", "0", converter_factory=plain_converter)
    results: asyncio.Queue = asyncio.Queue()
    client.feature("vqinc/result")(lambda p: results.put_nowait((time.perf_counter(), p)))
    cmd = [sys.executable, "-m", "vqinc.runtime.cli", "serve", *([args.model_dir] if args.model_dir else []),
           "--threads", str(args.threads)]
    await client.start_io(*cmd)
    await client.initialize_async(t.InitializeParams(capabilities=t.ClientCapabilities()))
    client.initialized(t.InitializedParams())
    uri = "file:///bench.txt"
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        text_document=t.TextDocumentItem(uri=uri, language_id="plaintext", version=1, text=text)))
    _, first = await results.get()
    local = model.document(text)
    assert first["label"] == local.label

    async def remote(change) -> tuple[float, dict]:
        t0 = time.perf_counter()
        client.text_document_did_change(change)
        t1, res = await results.get()
        return (t1 - t0) * 1e3, res

    def in_process(a: int, b: int, piece: str) -> float:
        t0 = time.perf_counter()
        local.edit(a, b, piece)
        return (time.perf_counter() - t0) * 1e3

    def change_of(i: int, a: int, b: int, piece: str):
        return t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            content_changes=[t.TextDocumentContentChangePartial(
                range=t.Range(start=lsp_position(text, a), end=lsp_position(text, b)), text=piece)])

    if args.burst:
        for i, (a, b, piece) in enumerate(edits[: args.warmup]):  # steady: one at a time
            await remote(change_of(i, a, b, piece))
            local.edit(a, b, piece)
            text = text[:a] + piece + text[b:]
        sent, t_start = {}, time.perf_counter()
        for k, (a, b, piece) in enumerate(edits[args.warmup: args.warmup + args.burst]):
            i = args.warmup + k
            while (wait := t_start + k * args.burst_ms / 1e3 / args.burst - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            change = change_of(i, a, b, piece)
            sent[i + 2] = time.perf_counter()
            client.text_document_did_change(change)
            text = text[:a] + piece + text[b:]  # no local doc.edit here: nothing but sending in the burst
        span_ms = (time.perf_counter() - t_start) * 1e3
        rows, last = [], None
        for _ in range(args.burst):
            t1, res = await results.get()
            rows.append(((t1 - sent[res["version"]]) * 1e3, res.get("coalesced", 1), res["ms"]))
            last = res
        fresh = model.document(text, chunked=True)  # as the server's documents (past the window: chunks)
        assert last["version"] == max(sent) and last["label"] == fresh.label and last["chars"] == len(text)
        assert np.abs(np.asarray(last["logits"]) - fresh.logits).max() < 1e-4, (last["logits"], fresh.logits)
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return np.array(rows), span_ms

    rows = []
    for i, (a, b, piece) in enumerate(edits):
        change = t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            content_changes=[t.TextDocumentContentChangePartial(
                range=t.Range(start=lsp_position(text, a), end=lsp_position(text, b)), text=piece)])
        if i % 2:  # alternate which goes first
            rtt, res = await remote(change)
            local_ms = in_process(a, b, piece)
        else:
            local_ms = in_process(a, b, piece)
            rtt, res = await remote(change)
        text = text[:a] + piece + text[b:]
        assert res["version"] == i + 2 and res["label"] == local.label
        assert abs(res["logits"][0] - float(local.logits[0])) < 1e-4
        if i >= args.warmup:
            rows.append((rtt, local_ms, res["ms"], res["server_ms"], res["tokens"]))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return np.array(rows)


def summarize_burst(rows: np.ndarray, span_ms: float) -> dict:
    rtt, coalesced, server = rows.T
    q = lambda x, p: round(float(np.percentile(x, p)), 3)  # noqa: E731
    return {"burst": len(rows), "sent_within_ms": round(span_ms, 1),
            "round_trip_ms": {"p50": q(rtt, 50), "p99": q(rtt, 99), "max": q(rtt, 100)},
            "results_coalesced": int((coalesced > 1).sum()), "engine_edits": int(round(float((1 / coalesced).sum()))),
            "server_doc_edit_ms_median": q(server, 50)}


def summarize(rows: np.ndarray) -> dict:
    rtt, local, server, server_total, tokens = rows.T
    q = lambda x, p: round(float(np.percentile(x, p)), 3)  # noqa: E731
    return {
        "edits": len(rows), "tokens_median": int(np.median(tokens)),
        "round_trip_ms": {"median": q(rtt, 50), "p90": q(rtt, 90)},
        "local_doc_edit_ms": {"median": q(local, 50), "p90": q(local, 90)},
        "server_doc_edit_ms": {"median": q(server, 50), "p90": q(server, 90)},
        "server_queue_to_result_ms": {"median": q(server_total, 50), "p90": q(server_total, 90)},
        "overhead_vs_server_doc_edit_ms": {"median": q(rtt - server, 50), "p90": q(rtt - server, 90),
                                           "min": q(rtt - server, 0)},
        "round_trip_minus_local_median_ms": round(float(np.median(rtt) - np.median(local)), 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=None, help="default: the bundled model")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--edits", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="ORT threads, for the server and the local model alike")
    p.add_argument("--repeats", type=int, default=1, help="runs, each with a fresh server")
    p.add_argument("--burst", type=int, default=0, help="send this many keystrokes without waiting (see above)")
    p.add_argument("--burst-ms", type=float, default=100.0, help="... within this many milliseconds")
    p.add_argument("--out", default=None, help="write the summary as JSON here")
    args = p.parse_args()

    from vqinc.runtime.model_dir import Model

    model = Model.load(args.model_dir, threads=args.threads)
    name, text = source_text(model, args.tokens)
    edits = keystrokes(text, (args.burst or args.edits) + args.warmup)
    import onnxruntime as ort

    runs = []
    for _ in range(args.repeats):  # a fresh server each time; the machine's load is recorded per run
        got = asyncio.run(measure(args, model, text, edits))
        summary = summarize_burst(*got) if args.burst else summarize(got)
        runs.append({"load_average": [round(x, 2) for x in os.getloadavg()], **summary})
    out = {"source": name, "model": model.root.name, "fingerprint": model.manifest.fingerprint,
           "threads": args.threads, "onnxruntime": ort.__version__, "machine": platform.machine(),
           "cpus": os.cpu_count(), "runs": runs}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
