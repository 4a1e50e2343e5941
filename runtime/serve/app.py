"""Wiring of `vqinc serve`: load the model, start the manager, run the front-ends asked for.

- no `--http`: LSP on stdin/stdout;
- `--http PORT`: the page and WebSocket on 127.0.0.1:PORT (`--host` to change; port 0 picks a free
  one), and LSP on stdio as well with `--stdio`.

With LSP on stdio, stdout carries nothing but LSP: anything else printed goes to stderr.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import dataclass, field

from vqinc.runtime.serve.manager import ServeLimits

SERVE_HINT = "pip install 'vqinc[serve]' (or: pip install pygls websockets)"


class ServeSetupError(Exception):
    """A problem the user fixes (a missing extra, a port in use): one line, exit code 2."""


@dataclass(frozen=True)
class ServeOptions:
    """`vqinc serve` flags."""

    model_dir: str | None = None
    http: int | None = None
    host: str = "127.0.0.1"
    stdio: bool = False
    limits: ServeLimits = field(default_factory=ServeLimits)
    threads: int | None = None


def check_extra(http: bool, lsp: bool) -> None:
    import importlib.util

    need = (["pygls", "lsprotocol"] if lsp else []) + (["websockets"] if http else [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise ServeSetupError(f"vqinc serve needs the serve extra ({', '.join(missing)} missing): {SERVE_HINT}")


def serve(opts: ServeOptions) -> int:
    lsp = opts.http is None or opts.stdio
    check_extra(opts.http is not None, lsp)
    for name in ("max_documents", "max_documents_per_client", "memory_mb", "max_chars"):
        if getattr(opts.limits, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts.limits, name)}")
    if opts.http is not None and not 0 <= opts.http <= 65535:
        raise ValueError(f"--http port must be in 0..65535, got {opts.http}")

    from vqinc.runtime.model_dir import Model
    from vqinc.runtime.serve.manager import DocumentManager

    real_stdout = sys.stdout
    if lsp:
        sys.stdout = sys.stderr  # stdout is the LSP channel from here on
    model = Model.load(opts.model_dir, threads=opts.threads)
    if lsp and _stdin_closed():
        print("vqinc serve: stdin is closed (at end of file): nothing to serve over LSP", file=sys.stderr)
        return 0
    # One front-end runs the model on its own event loop; two share a worker thread.
    manager = DocumentManager(model, opts.limits, threaded=opts.http is not None and lsp)
    try:
        if opts.http is None:
            _run_lsp(manager, real_stdout)
        elif not lsp:
            asyncio.run(_web_main(manager, model, opts, None))
        else:
            _start_web_thread(manager, model, opts)
            _run_lsp(manager, real_stdout)
    except KeyboardInterrupt:
        pass
    finally:
        manager.shutdown()
    return 0


def _stdin_closed() -> bool:
    """stdin is /dev/null or an empty regular file: LSP would read EOF at once."""
    import os
    import stat

    try:
        st = os.fstat(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    return stat.S_ISCHR(st.st_mode) and os.path.samestat(st, os.stat(os.devnull))


def _run_lsp(manager, stdout) -> None:
    from vqinc.runtime.serve.lsp import build_server, run_stdio

    run_stdio(build_server(manager), sys.stdin.buffer, stdout.buffer)


async def _web_main(manager, model, opts: ServeOptions, ready) -> None:
    from vqinc.runtime.serve.web import WebFrontend, serve_web

    front = WebFrontend(manager, model_name=model.root.name, max_tokens=model.max_tokens)

    def announce(port: int) -> None:
        host = f"[{opts.host}]" if ":" in opts.host else opts.host
        print(f"vqinc serve: http://{host}:{port}/ (model {model.root.name}, labels {', '.join(model.labels)})",
              file=sys.stderr, flush=True)
        if ready is not None:
            ready(port)

    try:
        await serve_web(front, opts.host, opts.http, ready=announce)
    except OSError as e:
        raise ServeSetupError(f"vqinc serve: cannot listen on {opts.host}:{opts.http}: {e.strerror or e}") from e


def _start_web_thread(manager, model, opts: ServeOptions) -> None:
    """The web front-end on its own event loop thread; returns once it listens (or raises why not)."""
    bound = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_web_main(manager, model, opts, lambda port: bound.set()))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failure.append(e)
            bound.set()

    threading.Thread(target=run, name="vqinc-serve-web", daemon=True).start()
    bound.wait()
    if failure:
        raise failure[0]


