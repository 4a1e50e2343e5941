"""`vqinc serve` against careless or hostile clients: errors name the real cause (a lone surrogate is
not "too long"; an oversize LSP message reports its real size; an edit without `text` is refused, not
a silent delete), and the server's resources stay bounded."""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
from serve_support import RawLsp, assert_matches_fresh, web_server
from websockets.asyncio.client import connect

from vqinc.runtime.serve.lsp import max_message_bytes
from vqinc.runtime.serve.manager import DocumentManager, LimitError, ServeLimits, worst_document_bytes
from vqinc.runtime.serve.web import MAX_UNANSWERED


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


async def _recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 60))


def test_ws_lone_surrogate_and_missing_text_are_named(model):
    async def run(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await _recv(ws)
            await ws.send('{"type": "open", "id": "s", "text": "ab\\ud800c"}')
            err = await _recv(ws)
            assert err["code"] == "bad_request" and "lone surrogate '\\ud800' at index 2" in err["error"]
            await ws.send(json.dumps({"type": "open", "id": "d", "text": "fine text"}))
            assert (await _recv(ws))["type"] == "result"
            await ws.send('{"type": "edit", "id": "d", "start": 0, "end": 1, "text": "\\udfff"}')
            err = await _recv(ws)
            assert err["code"] == "bad_request" and "lone surrogate" in err["error"]
            await ws.send(json.dumps({"type": "edit", "id": "d", "start": 0, "end": 5, "seq": 4}))
            err = await _recv(ws)
            assert err["code"] == "bad_request" and err["seq"] == 4 and 'an edit needs "text"' in err["error"]
            await ws.send(json.dumps({"type": "edit", "id": "d", "start": 9, "end": 9, "text": "!"}))
            assert_matches_fresh(model, await _recv(ws), "fine text!")  # nothing was deleted

    with web_server(model, threaded=False) as (front, _):
        asyncio.run(run(front.port))


def test_lsp_oversize_message_reports_its_size(exported, tmp_path):
    async def run() -> None:
        async with RawLsp(str(exported["llama-none"].model_dir), "--threads", "1", "--max-chars", "100",
                          stderr=tmp_path / "err") as c:
            size = max_message_bytes(100) + 10
            c.send_body(b"[" + b" " * (size - 2) + b"]")
            err = (await c.recv_until(lambda m: "error" in m))["error"]
            assert f"a message of {size} bytes is over this server's limit of {max_message_bytes(100)}" \
                in err["message"]
            c.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": "file:///s", "languageId": "plaintext", "version": 1, "text": "x\ud800"}}})
            res = await c.recv_until(lambda m: m.get("method") == "vqinc/result")
            assert res["params"]["code"] == "bad_request" and "lone surrogate" in res["params"]["error"]

    asyncio.run(run())



def test_lsp_huge_header_line_is_skipped_and_the_server_goes_on(exported, tmp_path):
    async def run() -> None:
        async with RawLsp(str(exported["llama-none"].model_dir), "--threads", "1", stderr=tmp_path / "err") as c:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                               "params": {"capabilities": {}}}).encode()
            c.send_bytes(b"X-Junk: " + b"a" * (1 << 20) + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            res = await c.recv_until(lambda m: m.get("id") == 1)  # the unknown header is skipped
            assert "capabilities" in res["result"]
            c.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": "file:///a", "languageId": "plaintext", "version": 1, "text": "still serving"}}})
            res = await c.recv_until(lambda m: m.get("method") == "vqinc/result")
            assert_matches_fresh(loaded_model(exported), res["params"], "still serving")

    asyncio.run(run())


def loaded_model(exported):
    from vqinc.runtime.model_dir import Model

    return Model.load(exported["llama-none"].model_dir, threads=1, warm_up=False)


def test_serve_with_stdin_at_eof_exits_cleanly(exported, tmp_path):
    from serve_support import serve_cmd

    for stdin in (subprocess.DEVNULL, open(tmp_path / "empty", "w+b")):  # noqa: SIM115 - closed below
        p = subprocess.run(serve_cmd(str(exported["llama-none"].model_dir), "--threads", "1"), stdin=stdin,
                           capture_output=True, timeout=120)
        if stdin is not subprocess.DEVNULL:
            stdin.close()
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr.decode()[-2000:]
        assert b"stdin is closed" in p.stderr and p.stdout == b""


def test_documents_per_client_and_memory_budget(model):
    mgr = DocumentManager(model, ServeLimits(max_documents_per_client=2), threaded=False)
    mgr.open(("ws", 1, "a"), "one")
    mgr.open(("ws", 1, "b"), "two")
    mgr.open(("ws", 1, "a"), "one again")  # re-opening replaces: no new document
    with pytest.raises(LimitError, match="this connection has 2 documents open"):
        mgr.open(("ws", 1, "c"), "three")
    mgr.open(("ws", 2, "c"), "another connection")
    mgr.close(("ws", 1, "b"))
    mgr.open(("ws", 1, "c"), "room again")
    mgr.shutdown()

    per_doc = worst_document_bytes(model, ServeLimits().max_chars)
    mb = 3 * per_doc // (1 << 20) + 1  # room for three documents at their worst
    mgr = DocumentManager(model, ServeLimits(memory_mb=mb), threaded=False)
    assert mgr.max_documents == mb * (1 << 20) // per_doc >= 3
    for i in range(mgr.max_documents):
        mgr.open(("lsp", f"u{i}"), "text")
    with pytest.raises(LimitError, match=f"memory budget {mb} MB"):
        mgr.open(("lsp", "one too many"), "text")
    mgr.shutdown()


def test_worst_document_bytes_bounds_a_full_window(model):
    bound = worst_document_bytes(model, 5000)
    mgr_text = "film " * 5000
    doc = model.document("")
    n = 0
    while True:  # grow to the window's last token
        try:
            doc.edit(len(doc.text), len(doc.text), mgr_text[n:n + 40])
        except ValueError:
            break
        n += 40
    peak = doc.nbytes()
    # replace everything (new tokens at both ends): old and new slots live together during the edit
    k = len(doc.text) // 5
    while True:
        try:
            doc.edit(0, len(doc.text), "Q" + "mlif " * k + "Z")
            break
        except ValueError:  # over the window: fewer words
            k = k * 4 // 5
    peak = max(peak, doc.nbytes())
    assert len(doc.token_ids) > model.max_positions // 2 and peak <= bound


def test_ws_unread_answers_are_bounded_and_none_is_lost(model):
    async def run(front) -> None:
        async with connect(f"ws://127.0.0.1:{front.port}/ws", max_queue=1) as ws:
            await _recv(ws)
            await ws.send(json.dumps({"type": "open", "id": "d", "text": "x"}))
            await _recv(ws)
            for _ in range(100):  # a long history: each stats answer is a few kB
                await ws.send(json.dumps({"type": "edit", "id": "d", "start": 0, "end": 1, "text": "y"}))
                await _recv(ws)
            frame = json.dumps({"type": "stats", "id": "d", "pad": "p" * 10_000})
            for _ in range(2_000):  # 20 MB of requests, none of the answers read meanwhile
                await asyncio.wait_for(ws.send(frame), 60)
            (session,) = front.sessions
            # the server held back (stopped reading) at its bound, and never went past it
            assert session.peak_unanswered == MAX_UNANSWERED
            # the answers were kept, not dropped: all of them arrive, in order
            got = [await _recv(ws) for _ in range(2_000)]
            assert all(g["type"] == "stats" and g["summary"]["edits"] == 101 for g in got)

    with web_server(model, threaded=False) as (front, _):
        asyncio.run(run(front))
