"""Every stats and result object is plain JSON (int, float, str, list, dict) after real edits: through
the Python API (`json.dumps(dataclasses.asdict(doc.stats))`), the WebSocket `stats` message and the
LSP `vqinc/stats` request. The edits are chosen so the lazy path runs (the planner's dense-or-lazy
decision is made, which is where a NumPy bool used to leak into `EditStats.dense_layers`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from serve_support import LspSession, web_server
from websockets.asyncio.client import connect

from vqinc.runtime.serve.manager import DocumentManager

TEXT = "An utterly charming film, though its second half drags and the ending is rushed. " * 2
EDITS = [(3, 3, "x"), (0, 1, "a"), (10, 14, ""), (5, 5, " new words here"), (0, 0, "The ")]


def assert_plain(obj, where: str = "stats") -> None:
    """Only the types `json` writes, exactly (no NumPy scalar, no tuple, no subclass of int)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str, (where, k)
            assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert type(obj) in (int, float, str, bool, type(None)), (where, type(obj))


@pytest.fixture(scope="module")
def model(loaded):
    return loaded["llama-none"]


def test_edit_stats_are_plain_json_in_the_python_api(model):
    doc = model.document(TEXT)
    assert_plain(dataclasses.asdict(doc.stats), "build")
    lazy = 0
    for a, b, piece in EDITS:
        s = doc.edit(a, b, piece)
        d = dataclasses.asdict(s)
        assert_plain(d, f"edit {a, b, piece}")
        assert json.loads(json.dumps(d)) == d
        lazy += sum(s.rows["lazy"]) + s.dense_layers
    assert lazy > 0  # the planner's lazy-or-dense decision ran on these edits (either outcome counts)
    (s,) = model.edit_many([(doc, 0, 0, "A ")])
    assert_plain(dataclasses.asdict(s), "edit_many")
    assert_plain(dataclasses.asdict(doc.set_text(doc.text + "!")), "set_text")


def test_manager_stats_and_results_are_plain_json(model):
    mgr = DocumentManager(model, threaded=False)
    futs = [mgr.open("d", TEXT)] + [mgr.edit("d", a, b, p) for a, b, p in EDITS]
    mgr.run_pending()
    for f in futs[1:]:
        body = f.result().to_json(mgr.labels)
        assert_plain(body, "result")
        assert body["coalesced"] == len(EDITS)  # queued together: one engine edit
    stats = mgr.stats("d")
    assert_plain(stats)
    assert stats["summary"]["edits"] == 2  # model calls: the open, the coalesced burst
    mgr.shutdown()


def test_ws_stats_after_edits_is_answered(model):
    async def run(port: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            json.loads(await ws.recv())  # hello
            await ws.send(json.dumps({"type": "open", "id": "d", "text": TEXT}))
            assert json.loads(await ws.recv())["type"] == "result"
            for seq, (a, b, piece) in enumerate(EDITS):
                await ws.send(json.dumps({"type": "edit", "id": "d", "start": a, "end": b, "text": piece, "seq": seq}))
                assert json.loads(await ws.recv())["type"] == "result"
            await ws.send(json.dumps({"type": "stats", "id": "d"}))
            stats = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert stats["type"] == "stats" and stats["summary"]["edits"] == len(EDITS) + 1
            assert isinstance(stats["last"]["dense_layers"], int) and stats["last"]["num_tokens"] > 0
            # the connection is still open and its document still there
            await ws.send(json.dumps({"type": "edit", "id": "d", "start": 0, "end": 0, "text": "x"}))
            assert json.loads(await ws.recv())["type"] == "result"

    with web_server(model, threaded=False) as (front, _):
        asyncio.run(run(front.port))


def test_lsp_stats_after_edits_is_answered(exported, tmp_path):
    async def run() -> None:
        async with LspSession(str(exported["llama-none"].model_dir), "--threads", "1", stderr=tmp_path / "err") as s:
            uri, text = "file:///a.txt", TEXT
            s.open(uri, text)
            await s.result()
            for v, (a, b, piece) in enumerate(EDITS, 2):
                text = s.splice(uri, v, text, a, b, piece)
                assert "error" not in await s.result()
            stats = await s.stats(uri)
            assert stats["version"] == len(EDITS) + 1 and stats["summary"]["edits"] == len(EDITS) + 1
            assert isinstance(stats["last"]["dense_layers"], int)

    asyncio.run(run())
