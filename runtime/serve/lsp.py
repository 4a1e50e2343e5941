"""LSP front-end of `vqinc serve` (pygls): text synchronisation in, the model's output out.

Messages (besides initialize / shutdown / exit):

- client → server: `textDocument/didOpen`, `textDocument/didChange` (incremental ranges or whole
  text), `textDocument/didClose`;
- server → client, after every didOpen / didChange: the notification `vqinc/result`
  `{uri, version, label, probs: {label: p}, logits, tokens, chars, ms, engine_ms, server_ms, macs,
  full_macs, savings, batch}`, or `{uri, version, error, code}`;
- `textDocument/hover`: the latest label, probabilities and cost, as Markdown;
- the request `vqinc/stats` `{textDocument: {uri}}` → `{uri, version, last: the latest edit's
  EditStats, summary: {edits, ms_median, ms_p90, savings_median}, recent: [{ms, savings}, ...]}`.

Positions are converted with a `LineIndex` per document (UTF-16 unless the client negotiated UTF-8 or
UTF-32 through `general.positionEncodings`). pygls' own copy of each document is not kept: its
workspace re-splits the whole text on every change, which is the O(n)-per-keystroke cost this server
avoids. Malformed JSON, a message that is not JSON-RPC, a request with invalid params or an unknown
request method is answered with a JSON-RPC error; a bad notification with a `window/showMessage`
error; nothing a client sends stops the server. The protocol never touches the file system: a
document is the text the client sends, whatever its URI names.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from dataclasses import dataclass

from lsprotocol import types
from pygls.exceptions import FeatureRequestError, JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from vqinc.runtime.serve.lines import LineIndex
from vqinc.runtime.serve.manager import DocumentManager, Drainer, Result, ServeError, call_in_loop, worst_json_bytes
from vqinc.runtime.text.tokens import diff_texts

log = logging.getLogger("vqinc.serve.lsp")

RESULT = "vqinc/result"
STATS = "vqinc/stats"

# JSON-RPC error codes (https://www.jsonrpc.org/specification#error_object)
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


@dataclass
class _Malformed:
    """A JSON-RPC message whose params did not match the LSP types: answered, never dispatched."""

    id: object
    method: str
    error: str
    jsonrpc: str = "2.0"


def plain_converter():
    """pygls' converter, except that params and results of methods lsprotocol does not know stay plain
    JSON (pygls turns every such dict into a freshly made namedtuple class: ~0.2 ms a message)."""
    from lsprotocol import converters
    from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage

    conv = converters.get_converter()
    for cls in (JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage):
        conv.register_structure_hook(cls, lambda obj, cls: cls(**obj))
    return conv


class VqincProtocol(LanguageServerProtocol):
    """pygls' protocol without its workspace copy of documents, with the text-sync notifications handed
    straight to the server, and with every malformed message answered."""

    _server: VqincLanguageServer

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        self._server.did_open(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        self._server.did_change(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        self._server.did_close(params)

    def structure_message(self, data):
        try:
            return super().structure_message(data)
        except JsonRpcException as e:
            if isinstance(data, dict) and isinstance(data.get("method"), str):
                cause = e.__cause__ or e
                return _Malformed(data.get("id"), data["method"], f"invalid params for {data['method']}: "
                                  f"{_short(cause)}")
            raise

    def handle_message(self, message):
        """pygls' dispatch, by attributes instead of `isinstance` against typing Protocols (~60 us a
        message), after answering what is not a well-formed JSON-RPC 2.0 message."""
        if isinstance(message, _Malformed):
            if message.id is not None:
                self.send_error(message.id, INVALID_PARAMS, message.error)
            else:
                self.show_error(message.error)
            return
        if getattr(message, "jsonrpc", None) != "2.0":  # JSON, but not a JSON-RPC 2.0 message object
            self.send_error(_id_of(message), INVALID_REQUEST, "not a JSON-RPC 2.0 message object")
            return
        if not isinstance(getattr(message, "id", None), (str, int, float, type(None))):  # pygls hashes it
            self.send_error(None, INVALID_REQUEST, "a JSON-RPC id is a string, a number or null")
            return
        method = getattr(message, "method", None)
        if self._shutdown and method != types.EXIT:
            return
        ctx = contextvars.copy_context()
        if method is not None and hasattr(message, "id"):
            ctx.run(self._handle_request, message.id, method, message.params)
        elif method is not None:
            ctx.run(self._handle_notification, method, message.params)
        elif hasattr(message, "result"):
            ctx.run(self._handle_response, message.id, message.result)
        else:
            ctx.run(self._handle_response, message.id, None, getattr(message, "error", None))

    def send_error(self, msg_id, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})

    def notify_plain(self, method: str, params: dict) -> None:
        """A notification whose params are plain JSON (no attrs round trip through cattrs)."""
        self._send_data({"jsonrpc": "2.0", "method": method, "params": params})

    def show_error(self, message: str) -> None:
        self.notify(types.WINDOW_SHOW_MESSAGE, types.ShowMessageParams(type=types.MessageType.Error,
                                                                       message=f"vqinc: {message}"))


def _id_of(message) -> object:
    return message.get("id") if isinstance(message, dict) else None


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]


@dataclass
class _LspDoc:
    lines: LineIndex
    version: int
    last: dict | None = None


class VqincLanguageServer(LanguageServer):
    """One LSP connection over a shared `DocumentManager`."""

    def __init__(self, manager: DocumentManager):
        super().__init__("vqinc", "0.1.0", protocol_cls=VqincProtocol, converter_factory=plain_converter,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.manager = manager
        self.drainer = Drainer(manager)
        self.docs: dict[str, _LspDoc] = {}
        self.pending: dict = {}
        """uri -> the future of its latest change whose result is not published yet"""
        self.loop: asyncio.AbstractEventLoop | None = None

    def report_server_error(self, error, source):
        if source is FeatureRequestError:  # the response to the request carries the error already
            return
        self.protocol.show_error(f"error in server: {_short(error)}")

    @property
    def encoding(self) -> str:
        caps = getattr(self.protocol, "server_capabilities", None)
        enc = getattr(caps, "position_encoding", None) if caps is not None else None
        return str(getattr(enc, "value", enc) or "utf-16")

    # -- results ---------------------------------------------------------------------------------
    def _publish_later(self, uri: str, future) -> None:
        """Send the future's result from the loop thread (the manager's worker completes it)."""
        loop = self.loop
        self.pending[uri] = future
        future.add_done_callback(lambda f: call_in_loop(loop, self._publish, uri, f))
        self.drainer.kick(loop)

    def _publish(self, uri: str, future) -> None:
        if self.pending.get(uri) is future:
            del self.pending[uri]
        try:
            res: Result = future.result()
        except Exception as e:  # the worker never fails a job without a reason; report it anyway
            self.protocol.notify_plain(RESULT, {"uri": uri, "version": None, "error": _short(e), "code": "internal"})
            return
        body = {"uri": uri, "version": res.tag, **res.to_json(self.manager.labels)}
        doc = self.docs.get(uri)
        if doc is not None and res.error is None:
            doc.last = body
        self.protocol.notify_plain(RESULT, body)

    def _error(self, uri: str, version, e: ServeError, show: bool = True) -> None:
        """Report a refusal, after the result of any earlier change of `uri` still being computed."""
        def send(*_) -> None:
            self.protocol.notify_plain(RESULT, {"uri": uri, "version": version, "error": str(e), "code": e.code})
            if show:
                self.protocol.show_error(str(e))

        last = self.pending.get(uri)
        if last is None:
            send()
        else:  # done-callbacks run in the order they were added: after `_publish` of that result
            loop = self.loop
            last.add_done_callback(lambda f: call_in_loop(loop, send))

    # -- handlers --------------------------------------------------------------------------------
    def did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        td = params.text_document
        try:
            fut = self.manager.open(("lsp", td.uri), td.text, tag=td.version)
        except ServeError as e:  # the editor has it open all the same: forget any older version of it
            self.docs.pop(td.uri, None)
            if self.manager.is_open(("lsp", td.uri)):
                self.manager.close(("lsp", td.uri))
                self.drainer.kick(self.loop)
            self._error(td.uri, td.version, e)
            return
        self.docs[td.uri] = _LspDoc(LineIndex(td.text), td.version)
        self._publish_later(td.uri, fut)

    def did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        uri, version = params.text_document.uri, params.text_document.version
        doc = self.docs.get(uri)
        if doc is None:
            self._error(uri, version, ServeError(f"{uri} is not open (open it first, or it was closed "
                                                 f"after an error)"), show=False)
            return
        fut, enc = None, self.encoding
        try:
            for change in params.content_changes:
                if isinstance(change, types.TextDocumentContentChangePartial):
                    r = change.range
                    a = doc.lines.offset(r.start.line, r.start.character, enc)
                    b = doc.lines.offset(r.end.line, r.end.character, enc)
                    start, end = min(a, b), max(a, b)
                    text = change.text
                else:  # a whole-document change: send the engine the one splice that differs
                    start, end, text = diff_texts(doc.lines.text, change.text)
                fut = self.manager.edit(("lsp", uri), start, end, text, tag=version)
                doc.lines.edit(start, end, text)
        except ServeError as e:
            # The editor holds the change whatever we say: a document we cannot follow is dropped.
            self.docs.pop(uri, None)
            if self.manager.is_open(("lsp", uri)):
                self.manager.close(("lsp", uri))
                self.drainer.kick(self.loop)
            self._error(uri, version, type(e)(f"{e}; the document is no longer analysed (reopen it)"))
            return
        doc.version = version
        if fut is not None:
            self._publish_later(uri, fut)

    def did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        uri = params.text_document.uri
        self.docs.pop(uri, None)
        if self.manager.is_open(("lsp", uri)):
            self.manager.close(("lsp", uri))
            self.drainer.kick(self.loop)

    def hover(self, params: types.HoverParams) -> types.Hover | None:
        doc = self.docs.get(params.text_document.uri)
        if doc is None or doc.last is None:
            return None
        r = doc.last
        probs = " · ".join(f"{k} {v:.3f}" for k, v in r["probs"].items())
        text = (f"**vqinc: {r['label']}** ({probs})  \n{r['tokens']} tokens · last edit {r['ms']:.2f} ms · "
                f"{r['savings']:.1f}x fewer multiply-accumulates than a full recompute")
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=text))

    def stats(self, params) -> dict:
        uri = _param_uri(params)
        try:
            return {"uri": uri, "version": self.docs[uri].version if uri in self.docs else None,
                    **self.manager.stats(("lsp", uri))}
        except ServeError as e:
            raise _InvalidParams(str(e)) from e

    def close_all(self) -> None:
        self.manager.close_all([("lsp", uri) for uri in list(self.docs)])
        self.docs.clear()


class _InvalidParams(JsonRpcException):
    CODE = INVALID_PARAMS


def _plain(obj):
    """pygls hands custom params over as namedtuples (`Object`): back to dicts and lists."""
    if hasattr(obj, "_asdict"):
        return {k: _plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _param_uri(params) -> str:
    params = _plain(params)
    td = params.get("textDocument") if isinstance(params, dict) else None
    uri = td.get("uri") if isinstance(td, dict) else (params.get("uri") if isinstance(params, dict) else None)
    if not isinstance(uri, str):
        raise _InvalidParams(f"{STATS} takes {{\"textDocument\": {{\"uri\": ...}}}}, got {json.dumps(params)[:200]}")
    return uri


class _OneLineClientErrors(logging.Filter):
    """pygls logs a whole traceback for every client message it cannot structure (bad params, a method
    that is not a string, a response whose error is not an object), and for every request a handler
    refuses (`vqinc/stats` of a document that is not open). The client is answered with a JSON-RPC
    error for each (`VqincProtocol.structure_message`, `_read_messages`, the handlers); the log keeps
    one warning line, so that junk from a client never fills stderr with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Unable to deserialize message"):
            lines = [ln.strip(" |") for ln in record.getMessage().splitlines() if ln.strip(" |+-")]
            record.msg = "a client message did not deserialize (answered with an error): %s"
            record.args = (lines[-1][:300] if len(lines) > 1 else "?",)
        elif msg.startswith("Exception occurred for message") and record.exc_info \
                and isinstance(record.exc_info[1], JsonRpcException):
            record.msg, record.args = "request %s answered with an error: %s", (
                record.args[0] if isinstance(record.args, tuple) and record.args else "?",
                _short(record.exc_info[1]))
            record.exc_info = record.exc_text = None
        else:
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_client_errors_filter = _OneLineClientErrors()


def build_server(manager: DocumentManager) -> VqincLanguageServer:
    pygls_log = logging.getLogger("pygls.protocol.json_rpc")
    if _client_errors_filter not in pygls_log.filters:
        pygls_log.addFilter(_client_errors_filter)
    ls = VqincLanguageServer(manager)
    ls.feature(types.TEXT_DOCUMENT_HOVER)(lambda p: ls.hover(p))
    ls.feature(STATS)(lambda p: ls.stats(p))
    return ls


# -- stdio -----------------------------------------------------------------------------------------
MAX_HEADER_LINE = 8192
"""Bytes of one header line worth reading (LSP has two short headers); longer lines are skipped."""


def max_message_bytes(max_chars: int) -> int:
    """The largest LSP message worth reading: a document at the size limit in its worst JSON encoding
    (every code point escaped, astral ones as a surrogate pair: 12 bytes, \\uXXXX\\uXXXX), plus room
    for the rest of the message."""
    return worst_json_bytes(max_chars) + (1 << 20)


async def _read_messages(reader, ls: VqincLanguageServer) -> None:
    """Read `Content-Length`-framed JSON-RPC messages until EOF; never raise on bad input. A message
    over `max_message_bytes` is answered with an error and skipped without being held in memory."""
    proto = ls.protocol
    limit = max_message_bytes(ls.manager.limits.max_chars)
    while True:
        length, bad_header = None, False
        while True:  # headers up to the blank line
            try:
                line = await reader.readline()
            except ValueError:  # a line over the reader's limit: dropped (what follows of it, too)
                continue
            if not line:
                return
            if len(line) > MAX_HEADER_LINE:  # no header of ours is this long: skipped, as unknown ones are
                continue
            if not line.strip():
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    bad_header = True
        if bad_header or length is None or length < 0:
            proto.send_error(None, PARSE_ERROR, "a message needs a valid Content-Length header")
            continue
        if length > limit:
            left = length
            while left > 0:  # skip the body in chunks without holding it
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
            proto.send_error(None, INVALID_REQUEST, f"a message of {length} bytes is over this server's limit of "
                             f"{limit} (set by --max-chars)")
            continue
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return
        try:
            message = json.loads(body, object_hook=proto.structure_message)
        except (ValueError, RecursionError) as e:
            proto.send_error(None, PARSE_ERROR, f"malformed JSON: {_short(e)}")
            continue
        except JsonRpcException as e:
            proto.send_error(None, INVALID_REQUEST, f"malformed message: {_short(e)}")
            continue
        try:
            proto.handle_message(message)
        except Exception as e:  # a handler bug must not take the server down
            log.exception("handling a message failed")
            proto.send_error(_id_of(getattr(message, "__dict__", None)), INVALID_REQUEST, _short(e))


class _StdoutWriter:
    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def run_stdio(ls: VqincLanguageServer, stdin=None, stdout=None) -> None:
    """Serve LSP on stdin/stdout until EOF or `exit`; closes this connection's documents after."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls.loop = loop
        reader = asyncio.StreamReader(limit=MAX_HEADER_LINE)
        try:
            if not _pollable(stdin):
                raise ValueError("not a pipe, socket or terminal")
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
        except (ValueError, OSError):  # a regular file or /dev/null on stdin: read it in a thread instead
            from pygls.io_ import StdinAsyncReader

            reader = _FileReader(StdinAsyncReader(stdin, ls.thread_pool))
        ls.protocol.set_writer(_StdoutWriter(stdout))
        await _read_messages(reader, ls)

    try:
        asyncio.run(main())
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        ls.close_all()


def _pollable(stream) -> bool:
    """epoll takes pipes, sockets and terminals; a regular file or /dev/null it refuses (EPERM, raised
    later inside the event loop, where it cannot be caught)."""
    import os
    import stat

    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


class _FileReader:
    """pygls' thread-backed stdin reader with the StreamReader calls `_read_messages` uses."""

    def __init__(self, r):
        self.r = r

    async def readline(self) -> bytes:  # bounded: a longer line comes back in pieces
        return await self.r.loop.run_in_executor(self.r.executor, self.r.stdin.readline, MAX_HEADER_LINE + 1)

    async def read(self, n: int) -> bytes:
        return await self.r.readexactly(n)

    async def readexactly(self, n: int) -> bytes:
        data = await self.r.readexactly(n)
        if len(data) < n:
            raise asyncio.IncompleteReadError(data, n)
        return data
