"""`vqinc serve` against careless or hostile clients: errors name the real cause (a lone surrogate is
not "too long"; an oversize LSP message reports its real size; an edit without `text` is refused, not
a silent delete), and the server's resources stay bounded."""

from __future__ import annotations

import asyncio
import json

import pytest
from serve_support import RawLsp, assert_matches_fresh, web_server
from websockets.asyncio.client import connect

from vqinc.runtime.serve.lsp import max_message_bytes


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

