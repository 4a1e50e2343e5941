"""`vqinc serve` over LSP with a real client (pygls' LanguageClient) on a subprocess's stdio: random
didChange sequences with emoji, astral characters, CRLF and bare CR in UTF-16 (and negotiated UTF-8 /
UTF-32) positions, several changes per message and whole-text changes; after every change the published
result equals `model.document(final_text)`. Then hover, the stats request, the limits, and malformed
input of every kind answered with an error while the server keeps serving."""

from __future__ import annotations

import asyncio
import random

import pytest
from lsprotocol import types as t
from serve_support import LspSession, RawLsp, assert_matches_fresh, lsp_position

from vqinc.runtime.format.stages import INCREMENTAL_ROWS
from vqinc.runtime.serve.lsp import max_message_bytes

PIECES = ["a", " film", " charming", " ", "\n", "\r\n", "\r", "é", "日本", "🙂", "𝔘", "x", ".", "  "]
START = "An utterly charming film 🙂\r\nsecond line\rthird 𝔘 line\nend"


def _offsets(text: str) -> list[int]:
    """Offsets an editor can name (not between the \\r and \\n of one line break)."""
    return [i for i in range(len(text) + 1) if not (0 < i < len(text) and text[i - 1] == "\r" and text[i] == "\n")]


def _random_splice(rng: random.Random, text: str) -> tuple[int, int, str]:
    offs = _offsets(text)
    a = rng.choice(offs)
    b = rng.choice([o for o in offs if o >= a][:12])
    piece = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))
    if len(text) > 110:  # stay well inside the tiny model's window
        piece = ""
        b = rng.choice([o for o in offs if o >= a][:25])
    return a, b, piece


@pytest.fixture(scope="module")
def tiny(exported, loaded):
    return str(exported["llama-none"].model_dir), loaded["llama-none"]


def test_lsp_changes_equal_fresh_documents(tiny, tmp_path):
    model_dir, model = tiny

    async def run() -> None:
        async with LspSession(model_dir, "--threads", "1", stderr=tmp_path / "err") as s:
            assert s.encoding == "utf-16"
            assert s.capabilities.text_document_sync.change == t.TextDocumentSyncKind.Incremental
            assert s.capabilities.hover_provider
            rng = random.Random(0)
            texts = {"file:///a.txt": START, "untitled:b": "The proposal adds a keyword.\r\n"}
            versions = dict.fromkeys(texts, 1)
            edits = dict.fromkeys(texts, 1)  # model calls per document (the open is the first)
            for uri, text in texts.items():
                s.open(uri, text)
                res = await s.result()
                assert res["uri"] == uri and res["version"] == 1
                assert_matches_fresh(model, res, text)
            for step in range(60):
                uri = rng.choice(sorted(texts))
                versions[uri] += 1
                edits[uri] += 1  # two changes in one message are composed into one model call
                v, text = versions[uri], texts[uri]
                if step % 15 == 7:  # two changes in one message: the second in the first's coordinates
                    a, b, p = _random_splice(rng, text)
                    mid = text[:a] + p + text[b:]
                    c, d, q = _random_splice(rng, mid)
                    rng1 = t.Range(start=lsp_position(text, a), end=lsp_position(text, b))
                    rng2 = t.Range(start=lsp_position(mid, c), end=lsp_position(mid, d))
                    s.change(uri, v, [t.TextDocumentContentChangePartial(range=rng1, text=p),
                                      t.TextDocumentContentChangePartial(range=rng2, text=q)])
                    new = mid[:c] + q + mid[d:]
                elif step % 15 == 11:  # a whole-text change (full sync)
                    new = text.replace("a", "A", 1) + "🙂"
                    s.change(uri, v, [t.TextDocumentContentChangeWholeDocument(text=new)])
                else:
                    new = s.splice(uri, v, text, *_random_splice(rng, text))
                texts[uri] = new
                res = await s.result()
                assert (res["uri"], res["version"]) == (uri, v)
                assert res.get("coalesced", 1) == (2 if step % 15 == 7 else 1)
                assert_matches_fresh(model, res, new)

            uri = "file:///a.txt"
            hover = await s.hover(uri)
            assert f"**vqinc: {model.document(texts[uri]).label}**" in hover.contents.value
            stats = await s.stats(uri)
            assert stats["version"] == versions[uri] and stats["summary"]["edits"] == edits[uri]
            assert stats["last"]["num_tokens"] == len(model.document(texts[uri]).token_ids)
            assert set(stats["last"]["rows"]) == set(INCREMENTAL_ROWS)

            s.close(uri)
            s.change(uri, versions[uri] + 1, [t.TextDocumentContentChangeWholeDocument(text="x")])
            res = await s.result()
            assert res["code"] == "bad_request" and "is not open" in res["error"]
            assert await s.hover(uri) is None

    asyncio.run(run())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-32"])
def test_negotiated_position_encodings(tiny, tmp_path, encoding):
    model_dir, model = tiny

    async def run() -> None:
        async with LspSession(model_dir, "--threads", "1", stderr=tmp_path / "err",
                              encodings=["made-up", encoding, "utf-16"]) as s:
            assert s.encoding == encoding
            rng, text, uri = random.Random(1), START, "file:///enc.txt"
            s.open(uri, text)
            await s.result()
            for v in range(2, 14):
                text = s.splice(uri, v, text, *_random_splice(rng, text))
                assert_matches_fresh(model, await s.result(), text)

    asyncio.run(run())


def test_limits_over_lsp(tiny, tmp_path):
    model_dir, model = tiny

    async def run() -> None:
        async with LspSession(model_dir, "--threads", "1", "--max-documents", "2", "--max-chars", "60",
                              stderr=tmp_path / "err") as s:
            s.open("file:///a", "first")
            s.open("file:///b", "second")
            assert_matches_fresh(model, await s.result(), "first")
            assert_matches_fresh(model, await s.result(), "second")
            s.open("file:///c", "third")
            res = await s.result()
            assert res["uri"] == "file:///c" and res["code"] == "limit"
            assert "2 documents are open" in res["error"] and "--max-documents 2" in res["error"]
            assert "--max-documents 2" in (await s.message()).message  # shown to the user as well
            s.close("file:///a")
            s.open("file:///c", "third")
            assert_matches_fresh(model, await s.result(), "third")

            s.open("file:///b", "y" * 61)  # re-open, too large: refused, and the old copy is dropped
            res = await s.result()
            assert res["code"] == "limit" and "61 characters is over this server's limit of 60" in res["error"]
            await s.message()
            s.open("file:///d", "fits again")  # b's slot is free again
            assert_matches_fresh(model, await s.result(), "fits again")

            s.change("file:///c", 2, [t.TextDocumentContentChangePartial(
                range=t.Range(start=t.Position(line=0, character=5), end=t.Position(line=0, character=5)),
                text="z" * 60)])
            res = await s.result()
            assert res["code"] == "limit" and "no longer analysed" in res["error"]
            await s.message()
            s.change("file:///c", 3, [t.TextDocumentContentChangeWholeDocument(text="short")])
            assert "is not open" in (await s.result())["error"]

    asyncio.run(run())


def test_malformed_messages_are_answered_and_the_server_goes_on(tiny, tmp_path):
    model_dir, model = tiny

    async def run() -> None:
        async with RawLsp(model_dir, "--threads", "1", "--max-chars", "1000", stderr=tmp_path / "err") as c:
            c.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
            assert "capabilities" in (await c.recv_until(lambda m: m.get("id") == 1))["result"]

            c.send_body(b"{not json")
            err = (await c.recv_until(lambda m: "error" in m))["error"]
            assert err["code"] == -32700 and "malformed JSON" in err["message"]
            for body in (b"[1, 2]", b'"text"', b"42", b'{"id": 3, "method": "initialize"}'):
                c.send_body(body)
                msg = await c.recv_until(lambda m: "error" in m)
                assert msg["error"]["code"] == -32600, (body, msg)
            c.send({"jsonrpc": "1.0", "id": 4, "method": "vqinc/stats", "params": {}})
            assert (await c.recv_until(lambda m: "error" in m))["error"]["code"] == -32600

            c.send_bytes(b"Content-Type: nothing-else\r\n\r\n")  # a frame without Content-Length
            assert (await c.recv_until(lambda m: "error" in m))["error"]["code"] == -32700
            c.send_bytes(b"Content-Length: twelve\r\n\r\n")
            assert (await c.recv_until(lambda m: "error" in m))["error"]["code"] == -32700

            # A frame over the size limit (6 bytes a character of --max-chars 1000, plus 1 MiB) is
            # skipped unread and answered.
            c.send_body(b"[" + b" " * (max_message_bytes(1000) + 10) + b"]")
            err = (await c.recv_until(lambda m: "error" in m))["error"]
            assert err["code"] == -32600 and "over this server's limit" in err["message"]

            c.send({"jsonrpc": "2.0", "id": 5, "method": "textDocument/hover",
                    "params": {"textDocument": {}, "position": {"line": -1}}})
            err = (await c.recv_until(lambda m: m.get("id") == 5))["error"]
            assert err["code"] == -32602 and "textDocument/hover" in err["message"]
            c.send({"jsonrpc": "2.0", "id": 6, "method": "no/such/method", "params": {}})
            assert (await c.recv_until(lambda m: m.get("id") == 6))["error"]["code"] == -32601
            c.send({"jsonrpc": "2.0", "id": 7, "method": "vqinc/stats", "params": {"nothing": 1}})
            err = (await c.recv_until(lambda m: m.get("id") == 7))["error"]
            assert err["code"] == -32602 and "textDocument" in err["message"]
            c.send({"jsonrpc": "2.0", "id": 8, "method": "vqinc/stats",
                    "params": {"textDocument": {"uri": "file:///never/opened"}}})
            err = (await c.recv_until(lambda m: m.get("id") == 8))["error"]
            assert err["code"] == -32602 and "is not open" in err["message"]

            # A notification with bad params has no id to answer: the client is shown an error.
            c.send({"jsonrpc": "2.0", "method": "textDocument/didChange",
                    "params": {"textDocument": {"uri": "file:///x", "version": 1}, "contentChanges": "nope"}})
            shown = await c.recv_until(lambda m: m.get("method") == "window/showMessage")
            assert shown["params"]["type"] == 1 and "invalid params for textDocument/didChange" in \
                shown["params"]["message"]
            # A range past the end of the text is clamped, as the spec says, not an error.
            c.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": "file:///ok", "languageId": "plaintext", "version": 1, "text": "fine 🙂"}}})
            c.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": "file:///ok", "version": 2}, "contentChanges": [
                    {"range": {"start": {"line": 0, "character": 99}, "end": {"line": 7, "character": 0}},
                     "text": "!"}]}})
            res = [await c.recv_until(lambda m: m.get("method") == "vqinc/result") for _ in range(2)]
            assert res[1]["params"]["version"] == 2
            assert_matches_fresh(model, res[1]["params"], "fine 🙂!")

            c.send({"jsonrpc": "2.0", "id": 9, "method": "shutdown"})
            assert (await c.recv_until(lambda m: m.get("id") == 9))["result"] is None
            c.send({"jsonrpc": "2.0", "method": "exit"})
            assert await asyncio.wait_for(c.proc.wait(), 30) == 0

    asyncio.run(run())


def test_bad_model_dir_is_one_line_exit_2(tmp_path):
    import subprocess

    from serve_support import serve_cmd

    r = subprocess.run(serve_cmd(str(tmp_path / "nope")), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert r.stderr.startswith("vqinc serve: error:") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_missing_extra_and_bad_flags_are_one_line_exit_2(monkeypatch, capsys):
    import importlib.util

    from vqinc.runtime.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pygls" else real(name, *a))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs the serve extra (pygls missing)" in err
    assert "pip install 'vqinc[serve]'" in err
    monkeypatch.undo()
    assert main(["serve", "--http", "0", "--max-documents", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "vqinc serve: error: --max-documents must be >= 1, got 0\n"
