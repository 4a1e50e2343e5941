"""HTTP + WebSocket front-end of `vqinc serve --http PORT` (the `websockets` library).

Routes: `GET /` the live page (package data, read once at start-up), `GET /healthz` a JSON status,
`/ws` the WebSocket. Nothing else is served: no path ever reaches the file system. HEAD is answered
as GET without the body, any other method with 405. The `Host` header must name this server (an IP
literal, localhost or the --host name, and the port): a page of another site whose name was made to
resolve to 127.0.0.1 (DNS rebinding) gets 421, not the page or /healthz.

The WebSocket protocol is JSON, one object per text frame. Offsets count Unicode code points (Python
string indices; a browser converts from UTF-16, see static/index.html).

client → server:
    {"type": "open",  "id": "d1", "text": "..."}
    {"type": "edit",  "id": "d1", "start": 3, "end": 5, "text": "xy", "seq": 7}   (seq: optional, echoed)
    {"type": "close", "id": "d1"}
    {"type": "stats", "id": "d1"}
server → client:
    {"type": "hello", "labels": [...], "max_documents": .., "max_chars": .., "max_tokens": .., "model": ".."}
    {"type": "result", "id": "d1", "seq": 7, "label": "fresh", "probs": {"rotten": 0.3, "fresh": 0.7},
     "logits": [...], "tokens": 12, "chars": 40, "ms": 3.1, "engine_ms": 2.9, "server_ms": 3.4,
     "macs": .., "full_macs": .., "savings": 12.5, "batch": 1}
        (edits of one document queued while the model ran are one engine edit: each is answered, in
        order, with the state after the last and "coalesced": N, the number merged; absent when 1)
    {"type": "closed", "id": "d1"}
    {"type": "stats", "id": "d1", "last": {...}, "summary": {...}, "recent": [...]}
    {"type": "error", "id": "d1" | null, "seq": 7 | null, "code": "bad_request" | "limit" | "not_open"
     | "too_long" | "internal", "error": "what was wrong"}

A malformed frame gets an error and the connection stays open; a frame over the size limit closes the
connection with code 1009 (the library's answer). The documents a connection opened are closed when
it goes away. Browsers may connect only from this server's own pages (the Origin header is checked:
another site open in the same browser cannot drive it); clients that send no Origin are accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import itertools
import json
import logging
from collections.abc import Callable
from importlib import resources

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vqinc.runtime.serve.manager import DocumentManager, Drainer, Result, ServeError, call_in_loop, worst_json_bytes

log = logging.getLogger("vqinc.serve.web")
MAX_ID = 200
MAX_CONNECTIONS = 64
"""WebSocket connections at once (each holds at most MAX_QUEUE frames read ahead, MAX_UNANSWERED answers)."""
MAX_UNANSWERED = 64
"""Answers one connection may leave unread before the server stops reading its requests."""
MAX_QUEUE = 4
"""Incoming frames the library buffers per connection before it stops reading the socket."""
_conn_ids = itertools.count()


def page_bytes() -> bytes:
    return resources.files("vqinc.runtime.serve").joinpath("static/index.html").read_bytes()


def _response(conn: ServerConnection, status: int, body: bytes, content_type: str) -> Response:
    base = conn.respond(status, "")
    headers = Headers([(k, v) for k, v in base.headers.raw_items() if k.lower() not in ("content-type",
                                                                                           "content-length")])
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    return dataclasses.replace(base, headers=headers, body=body)


class WebFrontend:
    """The HTTP routes and one WebSocket session per connection, over a shared manager."""

    def __init__(self, manager: DocumentManager, model_name: str = "", max_tokens: int = 0):
        self.manager = manager
        self.drainer = Drainer(manager)
        self.page = page_bytes()
        self.hello = {"type": "hello", "labels": list(manager.labels), "model": model_name,
                      "max_documents": manager.max_documents,
                      "max_documents_per_client": manager.max_documents_per_client,
                      "max_chars": manager.limits.max_chars,
                      "max_tokens": max_tokens}
        self.host, self.port = "127.0.0.1", 0
        self.connections = 0
        self.sessions: set[_Session] = set()
        """The live WebSocket sessions (for /healthz and tests)."""

    # -- HTTP ------------------------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        hosts = request.headers.get_all("Host")
        host = hosts[0] if len(hosts) == 1 else None  # none or several: 400
        if not self._own_host(host):  # DNS rebinding: another site's name resolved to this address
            return _response(conn, 421 if host else 400, f"host {host!r} is not this server's address "
                             f"(use http://127.0.0.1:{self.port}/)\n".encode(), "text/plain; charset=utf-8")
        if request.method not in ("GET", "HEAD"):
            resp = _response(conn, 405, f"method {request.method} is not allowed: GET or HEAD\n".encode(),
                             "text/plain; charset=utf-8")
            resp.headers["Allow"] = "GET, HEAD"
            return resp
        if request.method == "HEAD":
            if path == "/ws":
                return _response(conn, 405, b"", "text/plain; charset=utf-8")
            resp = self._route(conn, path)
            return dataclasses.replace(resp, body=b"")  # Content-Length stays the GET body's
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self._own_origins():
                return _response(conn, 403, f"origin {origin} may not use this server\n".encode(),
                                 "text/plain; charset=utf-8")
            return None  # go on with the WebSocket handshake
        return self._route(conn, path)

    def _route(self, conn: ServerConnection, path: str) -> Response:
        if path in ("/", "/index.html"):
            return _response(conn, 200, self.page, "text/html; charset=utf-8")
        if path == "/healthz":
            body = json.dumps({"ok": True, "documents": self.manager.num_open, "connections": self.connections,
                               "labels": list(self.manager.labels)}).encode()
            return _response(conn, 200, body, "application/json")
        return _response(conn, 404, b"not found\n", "text/plain; charset=utf-8")

    def _own_host(self, host: str | None) -> bool:
        """`Host` names this server: an IP literal, localhost or the --host name, with the served port. A
        rebinding attack needs a domain name of its own, so it never passes."""
        if not host:
            return False
        name, sep, port = host.strip().lower().rpartition(":")
        if not sep or port != str(self.port) or (name.startswith("[") != name.endswith("]")):
            return False
        name = name.strip("[]")
        if name in ("localhost", self.host.lower().strip("[]")):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _own_origins(self) -> set[str]:
        hosts = {"127.0.0.1", "localhost", "[::1]", self.host if ":" not in self.host else f"[{self.host}]"}
        return {f"http://{h}:{self.port}" for h in hosts}

    # -- WebSocket -------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        if self.connections >= MAX_CONNECTIONS:
            await ws.close(1013, f"this server takes {MAX_CONNECTIONS} connections at most; try again later")
            return
        out: asyncio.Queue = asyncio.Queue()
        room = asyncio.Event()
        room.set()

        def put(msg: dict) -> None:
            out.put_nowait(json.dumps(msg))

        session = _Session(next(_conn_ids), asyncio.get_running_loop(), put)
        self.connections += 1
        self.sessions.add(session)

        async def sender() -> None:
            while True:
                await ws.send(await out.get())  # waits while the client does not read (TCP backpressure)
                session.unanswered -= 1
                if session.unanswered < MAX_UNANSWERED:
                    room.set()

        send_task = asyncio.create_task(sender())
        session.unanswered += 1
        session.put(self.hello)
        try:
            async for frame in ws:
                session.unanswered += 1  # every frame gets exactly one answer
                session.peak_unanswered = max(session.peak_unanswered, session.unanswered)
                self._dispatch(session, frame)
                if session.unanswered >= MAX_UNANSWERED:  # a client that does not read its answers: stop
                    room.clear()                           # reading its requests until it does
                    await room.wait()
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self.sessions.discard(session)
            self.manager.close_all(list(session.keys))
            self.drainer.kick(session.loop)
            send_task.cancel()

    def _dispatch(self, session: _Session, frame) -> None:
        doc_id = seq = None
        try:
            if not isinstance(frame, str):
                raise ServeError("binary frames are not part of the protocol: send JSON text")
            try:
                msg = json.loads(frame)
            except (ValueError, RecursionError) as e:
                raise ServeError(f"malformed JSON: {str(e)[:200]}") from None
            if not isinstance(msg, dict):
                raise ServeError(f"a message is a JSON object, got {type(msg).__name__}")
            kind, doc_id, seq = msg.get("type"), msg.get("id"), msg.get("seq")
            if not isinstance(seq, (int, str, type(None))) or isinstance(seq, bool):
                seq = None
                raise ServeError("seq must be an integer or a string")
            if not isinstance(doc_id, str) or not 0 < len(doc_id) <= MAX_ID:
                bad, doc_id = doc_id, None
                raise ServeError(f"id must be a non-empty string of at most {MAX_ID} characters, got "
                                 f"{json.dumps(bad)[:60]}")
            key = ("ws", session.conn, doc_id)
            if kind == "open":
                fut = self.manager.open(key, msg.get("text", ""), tag=seq)
                session.keys.add(key)
            elif kind == "edit":
                if "text" not in msg:  # never a silent delete: an edit names what replaces the span
                    raise ServeError('an edit needs "text" (the replacement; "" to delete)')
                fut = self.manager.edit(key, msg.get("start"), msg.get("end"), msg["text"], tag=seq)
            elif kind == "close":
                fut = self.manager.close(key)
                session.keys.discard(key)
            elif kind == "stats":
                session.after(doc_id, {"type": "stats", "id": doc_id, **self.manager.stats(key)})
                return
            else:
                raise ServeError(f"unknown message type {json.dumps(kind)[:60]}; the types are open, edit, "
                                 f"close, stats")
        except ServeError as e:
            if not isinstance(doc_id, str):  # a bad seq is found before the id is checked: any JSON value
                doc_id = None
            session.after(doc_id, {"type": "error", "id": doc_id, "seq": seq, "code": e.code, "error": str(e)})
            return
        session.pending[doc_id] = fut
        fut.add_done_callback(lambda f: call_in_loop(session.loop, self._reply, f, doc_id, session))
        self.drainer.kick(session.loop)

    def _reply(self, fut, doc_id: str, session: _Session) -> None:
        if session.pending.get(doc_id) is fut:
            del session.pending[doc_id]
        try:
            res: Result = fut.result()
        except Exception as e:
            session.put({"type": "error", "id": doc_id, "seq": None, "code": "internal", "error": str(e)[:300]})
            return
        if res.closed:
            session.put({"type": "closed", "id": doc_id})
        elif res.error:
            session.put({"type": "error", "id": doc_id, "seq": res.tag, "code": res.code, "error": res.error,
                         "chars": res.num_chars})
        else:
            session.put({"type": "result", "id": doc_id, "seq": res.tag, **res.to_json(self.manager.labels)})


@dataclasses.dataclass(eq=False)
class _Session:
    """One WebSocket connection: its documents, and the last unanswered request of each (so that an
    answer given at once, such as a refused edit, never overtakes the answers to earlier requests)."""

    conn: int
    loop: asyncio.AbstractEventLoop
    put: Callable[[dict], None]
    keys: set = dataclasses.field(default_factory=set)
    pending: dict = dataclasses.field(default_factory=dict)
    unanswered: int = 0
    """Requests read whose answer is not sent yet (bounded: `MAX_UNANSWERED`)."""
    peak_unanswered: int = 0

    def after(self, doc_id: str | None, msg: dict) -> None:
        last = self.pending.get(doc_id) if doc_id is not None else None
        if last is None:
            self.put(msg)
        else:  # done-callbacks run in the order they were added: after the earlier answer's
            last.add_done_callback(lambda f: call_in_loop(self.loop, self.put, msg))


async def serve_web(front: WebFrontend, host: str, port: int, ready: Callable[[int], None] | None = None,
                    stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever); `ready(port)` is called once the socket is bound."""
    # The largest frame a client may need: an open of a document at the size limit, in the largest JSON
    # encoding (12 bytes a code point), plus the message's other fields.
    max_frame = worst_json_bytes(front.manager.limits.max_chars) + MAX_ID * 12 + 4096
    async with serve(front.handle, host, port, process_request=front.process_request, max_size=max_frame,
                     max_queue=MAX_QUEUE, logger=log) as server:
        front.host, front.port = host, server.sockets[0].getsockname()[1]
        if ready is not None:
            ready(front.port)
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()
