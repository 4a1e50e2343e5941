"""Real clients for `vqinc serve` tests: pygls' LanguageClient over a subprocess's stdio, a raw
`Content-Length` framer for malformed input, and the reference conversion of code-point offsets to LSP
positions (spelled out here, independent of the server's `LineIndex`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import threading
from pathlib import Path

import numpy as np
from lsprotocol import types as t
from pygls.io_ import run_async
from pygls.lsp.client import LanguageClient

from vqinc.runtime.serve.manager import DocumentManager, ServeLimits
from vqinc.runtime.serve.web import WebFrontend, serve_web

TIMEOUT = 60.0


def plain(obj):
    """pygls hands custom params over as namedtuples: back to dicts and lists."""
    if hasattr(obj, "_asdict"):
        return {k: plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def lsp_position(text: str, offset: int, encoding: str = "utf-16") -> t.Position:
    """The LSP position of a code-point offset: lines end at \\n, \\r\\n or \\r only."""
    head = text[:offset]
    lines = re.split(r"\r\n|\r|\n", head)
    col = lines[-1]
    units = {"utf-16": len(col.encode("utf-16-le")) // 2, "utf-8": len(col.encode()), "utf-32": len(col)}[encoding]
    return t.Position(line=len(lines) - 1, character=units)


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqinc.runtime.cli", "serve", *args]


def assert_matches_fresh(model, res: dict, text: str) -> None:
    """A published result equals `model.document(text)`: label, probabilities and logits within 1e-4."""
    assert "error" not in res, res
    ref = model.document(text)
    assert res["label"] == ref.label
    np.testing.assert_allclose(res["logits"], ref.logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose([res["probs"][k] for k in model.labels], ref.probs, atol=1e-4, rtol=0)
    assert res["tokens"] == len(ref.token_ids) and res["chars"] == len(text)


class LspSession:
    """`vqinc serve ...` in a subprocess, driven by pygls' LanguageClient over stdio."""

    def __init__(self, *args: str, stderr: Path, encodings: list[str] | None = None, cmd: list[str] | None = None):
        self.cmd, self.stderr_path, self.encodings = cmd or serve_cmd(*args), stderr, encodings
        self.client = LanguageClient("vqinc-tests", "0")
        self.results: asyncio.Queue = asyncio.Queue()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.client.feature("vqinc/result")(lambda p: self.results.put_nowait(plain(p)))
        self.client.feature(t.WINDOW_SHOW_MESSAGE)(lambda p: self.messages.put_nowait(p))
        self.encoding = "utf-16"

    async def __aenter__(self) -> LspSession:
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in __aexit__
        proc = await asyncio.create_subprocess_exec(*self.cmd, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=self._err)
        self.proc = proc
        self.client._server = proc
        self.client.protocol.set_writer(proc.stdin)
        self.client._async_tasks.append(asyncio.create_task(
            run_async(stop_event=self.client._stop_event, reader=proc.stdout, protocol=self.client.protocol)))
        general = t.GeneralClientCapabilities(position_encodings=self.encodings) if self.encodings else None
        init = await asyncio.wait_for(self.client.initialize_async(t.InitializeParams(
            capabilities=t.ClientCapabilities(general=general), process_id=None)), TIMEOUT)
        self.encoding = str(init.capabilities.position_encoding.value
                            if hasattr(init.capabilities.position_encoding, "value")
                            else init.capabilities.position_encoding)
        self.capabilities = init.capabilities
        self.client.initialized(t.InitializedParams())
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            if self.proc.returncode is None:
                await asyncio.wait_for(self.client.shutdown_async(None), TIMEOUT)
                self.client.exit(None)
                await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self.client._stop_event.set()
            for task in self.client._async_tasks:
                task.cancel()
            self._err.close()

    def stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    # -- messages --------------------------------------------------------------------------------
    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.client.text_document_did_open(t.DidOpenTextDocumentParams(
            text_document=t.TextDocumentItem(uri=uri, language_id="plaintext", version=version, text=text)))

    def change(self, uri: str, version: int, changes: list) -> None:
        self.client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version), content_changes=changes))

    def splice(self, uri: str, version: int, text: str, start: int, end: int, piece: str) -> str:
        """Send the change replacing code points [start, end) of `text` as an LSP range; return the new text."""
        rng = t.Range(start=lsp_position(text, start, self.encoding), end=lsp_position(text, end, self.encoding))
        self.change(uri, version, [t.TextDocumentContentChangePartial(range=rng, text=piece)])
        return text[:start] + piece + text[end:]

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(t.DidCloseTextDocumentParams(
            text_document=t.TextDocumentIdentifier(uri=uri)))

    async def result(self) -> dict:
        return await asyncio.wait_for(self.results.get(), TIMEOUT)

    async def message(self):
        return await asyncio.wait_for(self.messages.get(), TIMEOUT)

    async def stats(self, uri: str) -> dict:
        res = await asyncio.wait_for(
            self.client.protocol.send_request_async("vqinc/stats", {"textDocument": {"uri": uri}}), TIMEOUT)
        return plain(res)

    async def hover(self, uri: str):
        return await asyncio.wait_for(self.client.text_document_hover_async(t.HoverParams(
            text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line=0, character=0))), TIMEOUT)


class RawLsp:
    """`vqinc serve` over stdio with hand-made frames, for input no LSP library would send."""

    def __init__(self, *args: str, stderr: Path):
        self.args, self.stderr_path = args, stderr

    async def __aenter__(self) -> RawLsp:
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in __aexit__
        self.proc = await asyncio.create_subprocess_exec(*serve_cmd(*self.args), stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE, stderr=self._err)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.close()  # EOF: the server stops by itself
            try:
                await asyncio.wait_for(self.proc.wait(), TIMEOUT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._err.close()

    def send_bytes(self, data: bytes) -> None:
        self.proc.stdin.write(data)

    def send_body(self, body: bytes) -> None:
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def send(self, obj) -> None:
        self.send_body(json.dumps(obj).encode())

    async def recv(self) -> dict:
        async def read() -> dict:
            length = None
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise EOFError(f"server closed stdout; stderr:\n{self.stderr_path.read_text()[-3000:]}")
                if not line.strip():
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            return json.loads(await self.proc.stdout.readexactly(length))

        return await asyncio.wait_for(read(), TIMEOUT)

    async def recv_until(self, pred) -> dict:
        """The next message satisfying `pred` (server notifications such as logs may come first)."""
        while True:
            msg = await self.recv()
            if pred(msg):
                return msg


@contextlib.contextmanager
def web_server(model, limits: ServeLimits | None = None, threaded: bool = True):
    """The web front-end on a free port of 127.0.0.1, in a thread of this process (the model runs on a
    worker thread, or with `threaded=False` on the server's event loop, as `vqinc serve --http` does)."""
    mgr = DocumentManager(model, limits or ServeLimits(), threaded=threaded)
    front = WebFrontend(mgr, model_name="tiny", max_tokens=model.max_positions - 1)
    loop, stop, bound = asyncio.new_event_loop(), None, threading.Event()

    def run() -> None:
        nonlocal stop

        async def main() -> None:
            nonlocal stop
            stop = asyncio.Event()
            await serve_web(front, "127.0.0.1", 0, ready=lambda port: bound.set(), stop=stop)

        loop.run_until_complete(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert bound.wait(TIMEOUT)
    try:
        yield front, mgr
    finally:
        loop.call_soon_threadsafe(stop.set)
        th.join(TIMEOUT)
        mgr.shutdown()
