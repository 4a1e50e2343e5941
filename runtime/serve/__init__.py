"""`vqinc serve`: the runtime behind an editor protocol (LSP over stdio) and a WebSocket/HTTP endpoint
with a live page, both over one `DocumentManager`.

`manager.py` and `lines.py` need only the runtime; `lsp.py` needs pygls and `web.py` needs websockets
(the `serve` extra). `import vqinc.runtime` imports none of this package.
"""
