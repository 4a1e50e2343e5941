"""Fuzz of `vqinc serve`'s two wire protocols (hypothesis, few examples: seconds, not minutes).

WebSocket: any sequence of frames (random bytes, random JSON values, messages with wrong types,
missing fields, huge numbers, lone surrogates, nested junk, valid messages interleaved) gets exactly
one answer a frame, each an error or a valid reply; the connection stays open, another client's
connection is untouched, and once the fuzzing client goes away its documents are closed and a fresh
client's open / edit / stats work.

LSP framing: random header blocks (no Content-Length, negative, non-numeric or duplicate lengths,
garbage header lines) and bodies that are not JSON or not JSON-RPC, then a valid initialize, didOpen
and request: the request is answered, every bad frame is reported with a JSON-RPC error, and a
truncated or oversize tail ends the stream without a traceback. In process (`_read_messages` on a
StreamReader) for many examples, and once in a `vqinc serve` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import assert_matches_fresh, serve_cmd, web_server
from websockets.asyncio.client import connect

from vqinc.runtime.serve.lsp import _read_messages, build_server, max_message_bytes
from vqinc.runtime.serve.manager import DocumentManager, ServeLimits

MAX_CHARS = 2000
SCALE = float(os.environ.get("VQINC_FUZZ_SCALE", "1"))
"""Multiplies every test's number of examples (e.g. 20 for a longer hunt)."""
FUZZ = settings(max_examples=int(50 * SCALE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])

SURROGATES = ["\ud800", "\udfff", "\ud83d", "\ude42"]
junk_text = st.one_of(st.text(max_size=12), st.sampled_from(SURROGATES + ["", "x" * 201, "🙂", "\x00", "a\ud800b"]))
huge = st.sampled_from([10**30, -10**30, 2**63, -1, 1.5, float("inf"), float("-inf"), float("nan"), 1e308, True])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), huge, junk_text)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(junk_text, c, max_size=4),
                           max_leaves=12)


# -- WebSocket -------------------------------------------------------------------------------------
WS_IDS = ["a", "b", "c", "🙂", "\ud800"]
WS_TYPES = ["open", "edit", "close", "stats"]


@st.composite
def ws_message(draw) -> dict:
    """A protocol message, valid or with any field wrong, missing or extra."""
    msg = {"type": draw(st.sampled_from(WS_TYPES) | json_values),
           "id": draw(st.sampled_from(WS_IDS) | json_values)}
    for field, good in (("text", st.sampled_from(["", "fine film", " drags.", "\r\n", "日本", "x" * (MAX_CHARS + 1)])),
                        ("start", st.integers(0, 12)), ("end", st.integers(0, 14)), ("seq", st.integers(0, 99))):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            msg[field] = draw(good)
        elif choice == 2:
            msg[field] = draw(json_values)
    if draw(st.booleans()):
        msg.update(draw(st.dictionaries(junk_text, json_values, max_size=2)))
    return msg


ws_frame = st.one_of(
    st.builds(json.dumps, ws_message()),                       # messages, good and bad
    st.builds(json.dumps, json_values),                        # any JSON value
    st.binary(max_size=64),                                    # binary frames
    st.text(max_size=40),                                      # text that is mostly not JSON
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),     # deep nesting
    st.integers(1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(['{"type": "open", "id": [1], "seq": true}', '{"type": "stats", "id": {}, "seq": []}',  # found
                     "1" + "0" * 5000, '{"type": "open", "id": "a", "seq": 1' + "0" * 5000 + "}",
                     '{"type": "edit", "id": "a", "start": 1e999, "end": NaN, "text": ""}', "NaN", "-Infinity",
                     '{"type": "open", "id": "a", "text": "\\ud800"}', '{"type": "open", "id": "\\udfff"}',
                     '{"type": "open", "id": "a", "id": "b"}', "{}", "null", '""', "\ufeff{}"]),
)

REPLY_TYPES = {"result", "error", "closed", "stats"}
ERROR_CODES = {"bad_request", "limit", "not_open", "too_long", "internal"}


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


@pytest.fixture(scope="module")
def ws_server(model):
    with web_server(model, ServeLimits(max_chars=MAX_CHARS)) as (front, mgr):
        yield front, mgr


async def _recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _until(pred, what: str) -> None:
    for _ in range(3000):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@FUZZ
@given(frames=st.lists(ws_frame, min_size=1, max_size=12))
def test_ws_any_frames_get_answers_and_the_server_goes_on(ws_server, model, frames):
    front, mgr = ws_server
    url = f"ws://127.0.0.1:{front.port}/ws"

    async def run() -> None:
        base_docs, base_conns = mgr.num_open, front.connections
        async with connect(url) as other:  # a bystander with a document of its own
            await _recv(other)
            await other.send(json.dumps({"type": "open", "id": "a", "text": "fine film"}))
            assert (await _recv(other))["type"] == "result"
            async with connect(url) as ws:
                assert (await _recv(ws))["type"] == "hello"
                for f in frames:
                    await ws.send(f)
                replies = [await _recv(ws) for _ in frames]  # exactly one answer a frame
                for r in replies:
                    assert isinstance(r, dict) and r.get("type") in REPLY_TYPES, r
                    if r["type"] == "error":
                        assert r["code"] in ERROR_CODES and isinstance(r["error"], str), r
                        assert r["code"] != "internal", (frames, r)
                    elif r["type"] == "result":
                        assert set(r["probs"]) == set(model.labels) and r["chars"] <= MAX_CHARS, r
                # the connection still serves
                await ws.send(json.dumps({"type": "open", "id": "zz", "text": "still here", "seq": "s"}))
                res = await _recv(ws)
                while res.get("id") != "zz":
                    res = await _recv(ws)
                assert res["seq"] == "s"
                assert_matches_fresh(model, res, "still here")
            # the fuzzing client's documents close once it is gone; the bystander's stays
            await _until(lambda: mgr.num_open == base_docs + 1 and front.connections == base_conns + 1,
                         "the fuzzing connection's documents to close")
            await other.send(json.dumps({"type": "edit", "id": "a", "start": 9, "end": 9, "text": "!"}))
            assert_matches_fresh(model, await _recv(other), "fine film!")
        async with connect(url) as ws:  # a fresh client: open, edit, stats
            await _recv(ws)
            await ws.send(json.dumps({"type": "open", "id": "n", "text": "new one"}))
            assert_matches_fresh(model, await _recv(ws), "new one")
            await ws.send(json.dumps({"type": "edit", "id": "n", "start": 0, "end": 3, "text": "old"}))
            assert_matches_fresh(model, await _recv(ws), "old one")
            await ws.send(json.dumps({"type": "stats", "id": "n"}))
            stats = await _recv(ws)
            assert stats["type"] == "stats" and stats["summary"]["edits"] == 2
        await _until(lambda: mgr.num_open == base_docs and front.connections == base_conns,
                     "every document to close")

    asyncio.run(run())


# -- LSP framing -----------------------------------------------------------------------------------
LSP_METHODS = ["initialize", "initialized", "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose",
               "textDocument/hover", "vqinc/stats", "$/cancelRequest", "$/setTrace", "no/such", "", "workspace/x"]


@st.composite
def rpc_body(draw) -> bytes:
    """A JSON body: any value, or a JSON-RPC-looking object with fields wrong or missing."""
    if draw(st.integers(0, 3)) == 0:
        return json.dumps(draw(json_values)).encode()
    msg = {}
    if draw(st.integers(0, 3)):
        msg["jsonrpc"] = draw(st.just("2.0") | json_values)
    if draw(st.integers(0, 3)):
        msg["method"] = draw(st.sampled_from(LSP_METHODS) | json_values)
    if draw(st.booleans()):  # never a string id: those are the valid requests' own
        msg["id"] = draw(st.integers(-5, 10**20) | st.none() | st.lists(scalars, max_size=2) | huge)
    for field in ("params", "result", "error"):
        if draw(st.integers(0, 3)) == 0:
            msg[field] = draw(json_values)
    if msg.get("method") == "textDocument/didOpen" and draw(st.booleans()):  # near-valid opens
        msg["params"] = {"textDocument": {"uri": draw(junk_text | json_values), "languageId": "plaintext",
                                          "version": draw(scalars), "text": draw(junk_text | json_values)}}
    return json.dumps(msg).encode()


garbage_line = st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\n", b"_")).filter(
    lambda b: b.strip() and b.split(b":")[0].strip().lower() != b"content-length")


@st.composite
def lsp_frame(draw) -> bytes:
    """One header block and, when its Content-Length is the body's real size, the body. A frame whose
    length the server cannot read has no body (its bytes would be read as headers)."""
    body = draw(rpc_body() | st.binary(max_size=40) | st.sampled_from(
        [b"{not json", b"[" * 3000 + b"]" * 3000, b"1" + b"0" * 5000, b"\xff\xfe", b"", b'{"jsonrpc": "2.0"}']))
    before = draw(st.lists(garbage_line, max_size=2))
    after = draw(st.lists(garbage_line, max_size=2))
    kind = draw(st.integers(0, 5))
    n = len(body)
    if kind <= 2:  # a length the server reads as the body's size
        value = draw(st.sampled_from([b"%d" % n, b"+%d" % n, b"0%d" % n, b"  %d\t" % n]))
        return b"".join(x + b"\r\n" for x in [*before, b"Content-Length: " + value, *after]) + b"\r\n" + body
    if kind == 3:  # no Content-Length at all
        return b"".join(x + b"\r\n" for x in [*before, *after]) + b"\r\n"
    value = draw(st.sampled_from([b"-1", b"-%d" % (n + 1), b"twelve", b"", b"1.5", b"0x10", b"1e3", b"\xe2\x88\x9e",
                                  b"\xff", b"-0x1", b"9" * 30 + b"x"]))
    sep = draw(st.sampled_from([b"\r\n", b"\n"]))
    return b"".join(x + sep for x in [*before, b"Content-Length: " + value, *after]) + sep


def _frame(obj) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _valid_requests(n: int, text: str) -> bytes:
    uri = f"file:///valid/{n}.txt"
    return b"".join(_frame(m) for m in [
        {"jsonrpc": "2.0", "id": f"init-{n}", "method": "initialize", "params": {"capabilities": {}}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "plaintext", "version": 1, "text": text}}},
        {"jsonrpc": "2.0", "id": f"stats-{n}", "method": "vqinc/stats", "params": {"textDocument": {"uri": uri}}},
        {"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}},
    ])


def _parse_frames(data: bytes) -> list[dict]:
    """The server's output, strictly: `Content-Length` frames of JSON-RPC 2.0 objects, nothing else."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, head[:200]
        (line,) = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        n = int(line.split(b":")[1])
        body, data = data[:n], data[n:]
        assert len(body) == n
        msg = json.loads(body)
        assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
        out.append(msg)
    return out


class _Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


tail = st.one_of(
    st.just(b""),
    st.binary(max_size=30).map(lambda b: b"Content-Length: 500\r\n\r\n" + b),        # a truncated body
    st.just(b"Content-Length: %d\r\n\r\n" % (10**15) + b"{}"),                       # oversize, never sent
    st.binary(max_size=40),                                                           # half a header
)


@pytest.fixture(scope="module")
def lsp_manager(model):
    mgr = DocumentManager(model, ServeLimits(max_chars=MAX_CHARS), threaded=False)
    yield mgr
    mgr.shutdown()


@FUZZ
@given(frames=st.lists(lsp_frame(), max_size=8), end=tail, chunk=st.integers(1, 4096))
def test_lsp_framing_fuzz_in_process(lsp_manager, model, frames, end, chunk):
    ls = build_server(lsp_manager)
    sink = _Sink()
    text = "still serving"

    async def run() -> None:
        ls.loop = asyncio.get_running_loop()
        ls.protocol.set_writer(sink)
        reader = asyncio.StreamReader(limit=8192)
        data = b"".join(frames) + _valid_requests(0, text) + end

        async def feed() -> None:  # as a pipe delivers it: in pieces
            for i in range(0, len(data), chunk):
                reader.feed_data(data[i:i + chunk])
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        await asyncio.wait_for(_read_messages(reader, ls), 30)  # returns at EOF, never raises
        await feeder
        await _until(lambda: not ls.pending, "the open's result")

    try:
        asyncio.run(run())
        msgs = _parse_frames(bytes(sink.data))
    finally:
        ls.close_all()
    by_id = {m["id"]: m for m in msgs if isinstance(m.get("id"), str)}
    assert "capabilities" in by_id["init-0"]["result"]
    stats = by_id["stats-0"]
    assert stats["result"]["uri"] == "file:///valid/0.txt" and stats["result"]["version"] == 1, stats
    (res,) = [m["params"] for m in msgs if m.get("method") == "vqinc/result"
              and m["params"]["uri"] == "file:///valid/0.txt"]
    assert_matches_fresh(model, res, text)
    # every bad frame was answered, or reported (a notification's bad params): nothing went unnoticed
    errors = [m for m in msgs if "error" in m or m.get("method") == "window/showMessage"]
    assert len(errors) >= sum(1 for f in frames if b"Content-Length: " not in f or not _frame_ok(f))


def _frame_ok(f: bytes) -> bool:
    """A frame with a readable Content-Length (the others must each get an error)."""
    for line in f.replace(b"\r\n", b"\n").split(b"\n"):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            try:
                return int(value.strip()) >= 0
            except ValueError:
                return False
    return False


def test_lsp_framing_fuzz_in_a_subprocess(exported, model, tmp_path):
    """The same frames into `vqinc serve` on stdio, one process for all examples: every valid request
    after a fuzzed stretch is answered, and a truncated last frame then EOF ends it cleanly."""
    err = open(tmp_path / "err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(serve_cmd(str(exported["llama-none"].model_dir), "--threads", "1", "--max-chars",
                                      str(MAX_CHARS)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    got: queue.Queue = queue.Queue()

    def read() -> None:
        f = proc.stdout
        while True:
            length = None
            while True:
                line = f.readline()
                if not line:
                    got.put(None)
                    return
                if not line.strip():
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            got.put(json.loads(f.read(length)))

    threading.Thread(target=read, daemon=True).start()

    def wait_for(pred) -> dict:
        deadline = time.monotonic() + 60
        while True:
            msg = got.get(timeout=max(0.1, deadline - time.monotonic()))
            assert msg is not None, (tmp_path / "err").read_text()[-3000:]
            assert msg.get("jsonrpc") == "2.0", msg
            if pred(msg):
                return msg

    n = 0

    @settings(max_examples=int(15 * SCALE), deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frames=st.lists(lsp_frame(), max_size=6))
    def one(frames):
        nonlocal n
        n += 1
        proc.stdin.write(b"".join(frames) + _valid_requests(n, "still serving"))
        proc.stdin.flush()
        res = wait_for(lambda m: m.get("id") == f"stats-{n}")
        assert res["result"]["uri"] == f"file:///valid/{n}.txt", res

    def frame(obj) -> None:
        proc.stdin.write(_frame(obj))
        proc.stdin.flush()

    try:
        # found by this fuzz: an id pygls cannot hash (a list, an object) raised inside its dispatch
        frame({"jsonrpc": "2.0", "id": [1], "result": None})
        assert wait_for(lambda m: "error" in m)["error"]["code"] == -32600
        frame({"jsonrpc": "2.0", "id": {"a": 1}, "method": "vqinc/stats", "params": {}})
        assert "id is a string" in wait_for(lambda m: "error" in m)["error"]["message"]
        # a refused request is answered, and logged in one line (no traceback: see the end)
        frame({"jsonrpc": "2.0", "id": 0, "method": "vqinc/stats", "params": {"textDocument": {"uri": "file:///n"}}})
        assert wait_for(lambda m: m.get("id") == 0)["error"]["code"] == -32602
        one()
        proc.stdin.write(b"Content-Length: 900\r\n\r\n{\"jsonrpc\": ")  # cut short, then EOF
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    stderr = (tmp_path / "err").read_text(errors="replace")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert max_message_bytes(MAX_CHARS) < 10**15
