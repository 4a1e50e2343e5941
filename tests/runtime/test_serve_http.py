"""HTTP of `vqinc serve --http` with a raw client (http.client): only GET and HEAD (405 with `Allow`
otherwise, also on /ws), HEAD answered with GET's headers and no body, and the `Host` header checked
against the served address so that a DNS-rebinding page (another site's name resolving to 127.0.0.1)
reads neither the page nor /healthz nor the WebSocket."""

from __future__ import annotations

import asyncio
import http.client

import pytest
from serve_support import TIMEOUT, web_server
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from vqinc.runtime.serve.web import page_bytes


@pytest.fixture(scope="module")
def port(loaded):
    with web_server(loaded["llama-none"]) as (front, _):
        yield front.port


def _request(port: int, method: str, path: str = "/", host: str | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
    if host is not None and host != "":
        conn.putheader("Host", host)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"])
@pytest.mark.parametrize("path", ["/", "/healthz", "/ws"])
def test_other_methods_get_405(port, method, path):
    status, headers, body = _request(port, method, path)
    assert status == 405 and headers["Allow"] == "GET, HEAD" and method.encode() in body


def test_head_is_get_without_the_body(port):
    status, headers, body = _request(port, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page_bytes())
    status, headers, body = _request(port, "HEAD", "/healthz")
    assert status == 200 and body == b"" and headers["Content-Type"] == "application/json"
    assert _request(port, "HEAD", "/nope")[0] == 404


@pytest.mark.parametrize("host", ["127.0.0.1:{p}", "localhost:{p}", "LOCALHOST:{p}", "[::1]:{p}"])
def test_own_host_names_are_served(port, host):
    status, _, body = _request(port, "GET", "/healthz", host=host.format(p=port))
    assert status == 200 and b'"ok": true' in body


@pytest.mark.parametrize("host,status", [("evil.example:{p}", 421), ("127.0.0.1.nip.io:{p}", 421),
                                         ("127.0.0.1:{q}", 421), ("127.0.0.1", 421), ("localhost", 421),
                                         ("[::1:{p}", 421), ("", 400)])
def test_foreign_hosts_are_refused(port, host, status):
    for path in ("/", "/healthz", "/ws"):
        got, _, body = _request(port, "GET", path, host=host.format(p=port, q=port + 1))
        assert got == status, (host, path, got, body)
        assert b"ok" not in body and b"<html" not in body.lower()


def test_websocket_with_a_second_host_header_is_refused(port):
    async def run() -> None:
        with pytest.raises(InvalidStatus) as e:  # the client sends its own Host too: two of them
            async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers={"Host": f"evil.example:{port}"}):
                pass
        assert e.value.response.status_code == 400
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:  # the server's own address still works
            assert '"hello"' in await asyncio.wait_for(ws.recv(), TIMEOUT)

    asyncio.run(run())
