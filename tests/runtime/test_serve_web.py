"""`vqinc serve --http` with real clients (the `websockets` client, http.client): the JSON protocol's
results equal fresh documents, every malformed frame is answered and the connection goes on, limits
are clear, a connection's documents close when it goes away, only the page and /healthz are served,
other sites' pages cannot connect, and 64 documents edited concurrently over 127.0.0.1 all end equal
to fresh documents. Last, one subprocess serving LSP and HTTP on one manager, watched by an audit hook:
paths named in URIs, ids and URLs are never opened."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import subprocess
import sys
import time

import pytest
from lsprotocol import types as t
from serve_support import TIMEOUT, LspSession, assert_matches_fresh, web_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from vqinc.runtime.serve.manager import DocumentManager, ServeLimits


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


class Client:
    """One WebSocket connection speaking the JSON protocol."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, port: int, **kw):
        async with connect(f"ws://127.0.0.1:{port}/ws", **kw) as ws:
            c = cls(ws)
            c.hello = await c.recv()
            yield c

    async def send(self, **msg) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))

    async def ask(self, **msg) -> dict:
        await self.send(**msg)
        return await self.recv()


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.putrequest("GET", path, skip_accept_encoding=True)  # the path goes out exactly as written
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_ws_results_equal_fresh_documents(model):
    async def run(port: int) -> None:
        async with Client.connect(port) as c:
            assert c.hello == {"type": "hello", "labels": list(model.labels), "model": "tiny", "max_documents": 128,
                               "max_documents_per_client": 16, "max_chars": 200_000,
                               "max_tokens": model.max_positions - 1}
            text = "An utterly charming film 🙂, though 日本 drags."
            res = await c.ask(type="open", id="d", text=text, seq=0)
            assert res["type"] == "result" and res["id"] == "d" and res["seq"] == 0
            assert_matches_fresh(model, res, text)
            edits = [(0, 2, "A"), (len(text) - 1, len(text) - 1, " 𝔘🙂"), (25, 26, ""), (5, 5, "\r\n"), (0, 0, "")]
            for seq, (a, b, piece) in enumerate(edits, 1):  # offsets in code points: 🙂 and 𝔘 count one
                res = await c.ask(type="edit", id="d", start=a, end=b, text=piece, seq=seq)
                text = text[:a] + piece + text[b:]
                assert res["type"] == "result" and res["seq"] == seq
                assert_matches_fresh(model, res, text)
                assert res["ms"] > 0 and res["savings"] >= 1 and res["macs"] <= res["full_macs"]
            stats = await c.ask(type="stats", id="d")
            assert stats["summary"]["edits"] == len(edits) + 1 and len(stats["recent"]) == len(edits) + 1
            # Pipelined: ten keystrokes and a refused edit sent without waiting; the answers come back in
            # request order (the refusal, known at once, waits for the results before it).
            for seq in range(10, 20):
                await c.send(type="edit", id="d", start=len(text), end=len(text), text="z", seq=seq)
                text += "z"
            await c.send(type="edit", id="d", start=0, end=len(text) + 5, text="", seq=20)
            replies = [await c.recv() for _ in range(11)]
            assert [r["seq"] for r in replies] == list(range(10, 21))
            assert replies[-1]["code"] == "bad_request" and replies[-2]["type"] == "result"
            assert_matches_fresh(model, replies[-2], text)
            assert await c.ask(type="close", id="d") == {"type": "closed", "id": "d"}

    with web_server(model, threaded=False) as (front, _):
        asyncio.run(run(front.port))


def test_ws_malformed_frames_are_answered_and_the_connection_goes_on(model):
    async def run(port: int) -> None:
        async with Client.connect(port) as c:
            async def error(raw) -> dict:
                await c.ws.send(raw)
                msg = await c.recv()
                assert msg["type"] == "error", (raw, msg)
                return msg

            assert "malformed JSON" in (await error("{not json"))["error"]
            assert "JSON object, got list" in (await error("[1, 2]"))["error"]
            assert "binary frames" in (await error(b"\x00\x01"))["error"]
            assert "unknown message type" in (await error(json.dumps({"type": "rm -rf", "id": "d"})))["error"]
            assert "id must be" in (await error(json.dumps({"type": "open"})))["error"]
            assert "id must be" in (await error(json.dumps({"type": "open", "id": "x" * 201})))["error"]
            assert "seq must be" in (await error(json.dumps({"type": "open", "id": "d", "seq": True})))["error"]
            msg = await error(json.dumps({"type": "edit", "id": "nope", "start": 0, "end": 0, "text": "x", "seq": 3}))
            assert msg["code"] == "not_open" and msg["seq"] == 3 and msg["id"] == "nope"
            assert "text must be a string" in (await error(json.dumps({"type": "open", "id": "d", "text": 5})))["error"]
            await c.ask(type="open", id="d", text="fine")
            bad = [{"start": "0", "end": 0}, {"start": 0, "end": 99}, {"start": 3, "end": 1}, {"start": None}]
            for b in bad:
                msg = await error(json.dumps({"type": "edit", "id": "d", "text": "x", **b}))
                assert msg["code"] == "bad_request"
            res = await c.ask(type="edit", id="d", start=4, end=4, text="!")
            assert_matches_fresh(model, res, "fine!")
            assert (await c.ask(type="close", id="zzz"))["code"] == "not_open"
            # A frame over the size limit: the library closes the connection with 1009 (message too big).
            await c.ws.send("x" * 9000)  # max_chars 100: frames up to 12 * 100 + 2 + 2400 + 4096 bytes
            with pytest.raises(ConnectionClosed) as closed:
                await c.recv()
            assert closed.value.rcvd.code == 1009
        async with Client.connect(port) as c:  # the server goes on
            assert_matches_fresh(model, await c.ask(type="open", id="d", text="again"), "again")

    with web_server(model, ServeLimits(max_chars=100)) as (front, _):
        asyncio.run(run(front.port))


def test_ws_limits_across_connections(model):
    async def run(port: int) -> None:
        async with Client.connect(port) as a, Client.connect(port) as b:
            assert a.hello["max_documents"] == 2 and a.hello["max_chars"] == 40
            await a.ask(type="open", id="1", text="one")
            await b.ask(type="open", id="1", text="two")  # ids are per connection
            msg = await b.ask(type="open", id="2", text="three")
            assert msg["code"] == "limit" and "2 documents are open" in msg["error"]
            msg = await a.ask(type="edit", id="1", start=3, end=3, text="x" * 38)
            assert msg["code"] == "limit" and "41 characters" in msg["error"] and "limit of 40" in msg["error"]
            assert_matches_fresh(model, await a.ask(type="edit", id="1", start=3, end=3, text="!"), "one!")
            msg = await a.ask(type="open", id="1", text="y" * 41)
            assert msg["code"] == "limit"

    with web_server(model, ServeLimits(max_documents=2, max_chars=40)) as (front, _):
        asyncio.run(run(front.port))


def test_disconnect_closes_the_connections_documents(model):
    async def run(port: int, mgr: DocumentManager) -> None:
        async with Client.connect(port) as keep:
            await keep.ask(type="open", id="k", text="kept")
            async with Client.connect(port) as c:
                for i in range(3):
                    await c.ask(type="open", id=str(i), text=f"doc {i}")
                assert mgr.num_open == 4
            deadline = time.monotonic() + TIMEOUT
            while mgr.num_open != 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert mgr.num_open == 1 and mgr.is_open(("ws", _conn_of(mgr, "k"), "k"))

    with web_server(model) as (front, mgr):
        asyncio.run(run(front.port, mgr))


def _conn_of(mgr: DocumentManager, doc_id: str) -> int:
    return next(k[1] for k in mgr._docs if k[2] == doc_id)


def test_http_serves_the_page_and_nothing_else(model):
    with web_server(model) as (front, _):
        status, headers, body = _get(front.port, "/")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"<textarea" in body and b"new WebSocket" in body
        status, headers, body = _get(front.port, "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True
        for path in ("/static/index.html", "/../pyproject.toml", "/..%2f..%2fpyproject.toml", "/etc/passwd",
                     "//etc/passwd", "/runtime/serve/web.py", "/index.html/../../README.md"):
            status, _, body = _get(front.port, path)
            assert (status, body) == (404, b"not found\n"), path
        assert _get(front.port, "/ws")[0] == 426  # a plain GET of the socket asks for an upgrade

        async def origins() -> None:
            with pytest.raises(InvalidStatus) as rejected:
                async with connect(f"ws://127.0.0.1:{front.port}/ws", origin="http://evil.example"):
                    pass
            assert rejected.value.response.status_code == 403
            async with connect(f"ws://127.0.0.1:{front.port}/ws", origin=f"http://localhost:{front.port}") as ws:
                assert json.loads(await ws.recv())["type"] == "hello"

        asyncio.run(origins())


@pytest.mark.parametrize("threaded", [True, False], ids=["worker-thread", "event-loop"])
def test_64_documents_edited_concurrently(model, threaded):
    """64 connections, one document each, 6 rounds of an edit on every document at once: no error, and
    every document's last result equals a fresh document of its final text."""
    n_docs, rounds = 64, 6

    async def one(port: int, i: int, start: asyncio.Barrier) -> tuple[str, dict]:
        async with Client.connect(port) as c:
            text = f"Review {i}: an utterly charming film."
            res = await c.ask(type="open", id="d", text=text, seq=0)
            assert res["type"] == "result", res
            await start.wait()  # every document open before the edits start
            for r in range(1, rounds + 1):
                a = (i * 7 + r * 3) % (len(text) + 1)
                piece = ["x", " film", "", "🙂"][(i + r) % 4]
                b = min(len(text), a + (r % 3))
                res = await c.ask(type="edit", id="d", start=a, end=b, text=piece, seq=r)
                assert res["type"] == "result" and res["seq"] == r, res
                text = text[:a] + piece + text[b:]
            return text, res

    async def run(port: int, mgr: DocumentManager) -> None:
        start = asyncio.Barrier(n_docs + 1)
        tasks = [asyncio.create_task(one(port, i, start)) for i in range(n_docs)]
        await asyncio.wait_for(start.wait(), TIMEOUT)
        assert mgr.num_open == n_docs
        for text, res in await asyncio.wait_for(asyncio.gather(*tasks), 120):
            assert_matches_fresh(model, res, text)

    with web_server(model, threaded=threaded) as (front, mgr):
        asyncio.run(run(front.port, mgr))
        assert sum(mgr.batches) >= n_docs * rounds


AUDITED = """
import sys
log = open(sys.argv[1], "w", buffering=1)
EVENTS = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "shutil.copyfile", "os.mkdir"}
def hook(event, args):
    if event in EVENTS and args and isinstance(args[0], (str, bytes)):
        log.write(f"{event} {args[0]!s}\\n")
sys.addaudithook(hook)
from vqinc.runtime.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_one_process_both_protocols_no_file_access(exported, model, tmp_path):
    """LSP on stdio and the WebSocket on one manager (one limit for both), in a subprocess whose audit
    hook logs every file it opens or lists: the secret file named by URIs, ids and URLs is never touched,
    and the LSP result is computed on the text sent, not on the file the URI names."""
    secret = tmp_path / "canary-7f3a.txt"
    secret.write_text("TOP SECRET: an awful, dreadful, boring film.")
    log = tmp_path / "audit.log"
    cmd = [sys.executable, "-c", AUDITED, str(log), "serve", str(exported["llama-none"].model_dir),
           "--threads", "1", "--http", "0", "--stdio", "--max-documents", "2"]

    async def run() -> None:
        async with LspSession(cmd=cmd, stderr=tmp_path / "err") as s:
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", s.stderr())
            assert m, s.stderr()
            port = int(m.group(1))
            uri = secret.as_uri()
            s.open(uri, "harmless")
            assert_matches_fresh(model, await s.result(), "harmless")
            s.change(uri, 2, [t.TextDocumentContentChangeWholeDocument(text="harmless text")])
            assert_matches_fresh(model, await s.result(), "harmless text")
            with pytest.raises(Exception, match="is not open"):
                await s.stats((tmp_path / "canary-7f3a-other.txt").as_uri())
            async with Client.connect(port) as c:
                res = await c.ask(type="open", id=str(secret), text="from the page")
                assert_matches_fresh(model, res, "from the page")
                msg = await c.ask(type="open", id="third", text="over the shared limit")
                assert msg["code"] == "limit" and "2 documents are open" in msg["error"]
            for path in (f"/{secret}", f"/..%2F..{secret}", f"/../../../..{secret}", "/canary-7f3a.txt"):
                assert _get(port, path)[0] == 404

    asyncio.run(run())
    opened = log.read_text()
    assert "manifest.json" in opened and "index.html" in opened  # the hook saw the start-up reads
    assert "canary-7f3a" not in opened


def test_port_in_use_is_one_line_exit_2(exported):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "vqinc.runtime.cli", "serve", str(exported["llama-none"].model_dir),
                            "--threads", "1", "--http", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"vqinc serve: cannot listen on 127.0.0.1:{port}:") and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
