"""The `vqinc` command line. Subcommands that need torch (train, export) import it lazily and say
which install fixes a missing dependency; run, replay, demo and info never touch torch."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

EXPORT_HINT = "pip install 'vqinc[export]' (or: pip install torch==2.13.0 transformers onnx onnxscript safetensors)"


def _need_export_extra(what: str) -> None:
    """Check (without importing anything) that the export extra is installed; name the fix if not."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "onnx", "onnxscript", "safetensors")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"vqinc {what} needs the export extra ({', '.join(missing)} missing): {EXPORT_HINT}")


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
    _need_export_extra("train")
    from vqinc.model.train import TrainConfig, train

    p = argparse.ArgumentParser(prog="vqinc train", description=TrainConfig.__doc__)
    _dataclass_args(p, TrainConfig)
    ns = p.parse_args(a.args)
    cfg = TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)})
    info = train(cfg)
    keys = ("dataset", "num_train", "num_test", "majority_baseline", "pretrain", "teacher", "student")
    print(json.dumps({k: info[k] for k in keys if k in info}, indent=2))
    if "student" in info:
        print(f"checkpoint: {Path(cfg.out) / 'checkpoint'}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    _need_export_extra("export")
    from vqinc.export.exporter import export_model

    t = time.perf_counter()
    man = export_model(a.checkpoint, a.out_dir, full_graph=not a.no_full)
    print(f"exported {man.num_layers} layers to {a.out_dir} in {time.perf_counter() - t:.1f} s "
          f"(fingerprint {man.fingerprint})")
    if a.verify:
        from vqinc.export.verify import verify

        report = verify(a.checkpoint, a.out_dir)
        print(report.table())
        return 0 if report.ok else 1
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from vqinc.runtime.info import describe

    print(describe(a.model_dir))
    return 0


def _load(model_dir: str | None, threads: int | None):
    from vqinc.runtime.model import Model

    return Model.load(model_dir, threads=threads)


def cmd_run(a: argparse.Namespace) -> int:
    model = _load(a.model_dir, a.threads)
    text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text(encoding="utf-8")
    doc = model.document(text[: a.max_chars] if a.max_chars else text)
    probs = {lab: round(float(p), 4) for lab, p in zip(model.labels, doc.probs, strict=True)}
    print(json.dumps({"label": doc.label, "probs": probs, "tokens": len(doc.token_ids),
                      "ms": round(doc.stats.wall_ms, 2)}))
    return 0


def _print_revision(r) -> None:
    cost = (f"{r.ms / r.num_edits:7.2f} ms/edit  ops saved {r.full_macs / max(r.macs, 1):6.1f}x"
            if r.num_edits else "no edit inside the window")
    print(f"{r.doc_id[:24]:<24} rev {r.revision[:10]:<10} {r.num_edits:4d} edits  {r.num_tokens:5d} tok  "
          f"{r.label:<16} p={r.prob:.3f}  {cost}")


def _replay(model, traces, a) -> int:
    from vqinc.runtime.progress import progress
    from vqinc.runtime.replay import ReplaySummary, replay_trace

    summary = ReplaySummary()
    for trace in progress(traces, desc="replay", enabled=not a.live):
        replay_trace(model, trace, max_tokens=a.max_tokens, summary=summary,
                     on_revision=_print_revision if a.live else None, max_revisions=a.max_revisions,
                     check=a.check)
    print(summary.table())
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from vqinc.runtime.traces import git_file_history, read_trace_file

    model = _load(a.model_dir, a.threads)
    if (a.trace is None) == (a.git is None):
        raise SystemExit("vqinc replay: give exactly one of --trace TRACE.jsonl[.gz] or --git PATH")
    if a.trace:
        traces = list(read_trace_file(a.trace, limit=a.limit))
    else:
        p = Path(a.git).resolve()
        traces = [git_file_history(p.parent, p, max_revisions=a.max_revisions)]
    return _replay(model, traces, a)


def bundled_histories() -> Path:
    """Real revision histories of dev-split PEPs shipped for the demo (see benchmarks/demo_traces.py)."""
    return Path(__file__).resolve().parent / "data" / "pep-dev-histories.jsonl.gz"


def _true_labels(path: Path) -> dict[str, str]:
    """doc_id -> `label` of trace records that carry one (the bundled histories do)."""
    import gzip

    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")) as f:
        records = (json.loads(line) for line in f if line.strip())
        return {str(r["doc_id"]): str(r["label"]) for r in records if "label" in r}


def cmd_demo(a: argparse.Namespace) -> int:
    from vqinc.runtime.model import default_model_dir
    from vqinc.runtime.replay import ReplaySummary, replay_trace
    from vqinc.runtime.traces import git_file_history, read_trace_file

    root = Path(a.model_dir) if a.model_dir else default_model_dir()
    if not (root / "manifest.json").exists():
        raise SystemExit(f"vqinc demo: no bundled model at {root} (train and export one: see README)")
    model = _load(str(root), a.threads)
    student = model.manifest.info.get("student", {})
    print(f"model {root.name}: {model.num_layers} layers, d={model.d_model}, labels {list(model.labels)}; "
          f"test accuracy {student.get('accuracy', 'n/a')}, macro-F1 {student.get('macro_f1', 'n/a')} "
          f"({model.manifest.info.get('dataset', '?')})")
    labels: dict[str, str] = {}
    if a.git:
        target = Path(a.git).resolve()
        traces = [git_file_history(target.parent, target, max_revisions=a.max_revisions)]
    else:
        path = Path(a.trace) if a.trace else bundled_histories()
        if not path.exists():
            raise SystemExit(f"vqinc demo: {path} not found; pass --trace ../shared/data/pep-revisions.jsonl.gz "
                             "or --git FILE")
        traces = list(read_trace_file(path, limit=a.limit))
        labels = _true_labels(path)
    summary = ReplaySummary()
    for trace in traces:
        truth = f", true label: {labels[trace.doc_id]}" if trace.doc_id in labels else ""
        print(f"\n{trace.doc_id}: {len(trace.revisions)} revisions, {trace.num_edits} edits{truth}")
        replay_trace(model, trace, max_tokens=a.max_tokens, summary=summary, on_revision=_print_revision,
                     max_revisions=a.max_revisions, check=a.check)
    print(summary.table())
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "edits.py"
    if not script.exists():
        raise SystemExit("vqinc bench runs from a source checkout (benchmarks/edits.py not found)")
    sys.argv = [str(script), *a.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqinc", description="Incremental VQ transformer inference on edited text")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", add_help=False,
                       help="fine-tune a teacher, insert VQ, distil (needs the export extra; --help lists flags)")
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("export", help="checkpoint -> model directory of ONNX graphs (needs the export extra)")
    e.add_argument("checkpoint")
    e.add_argument("out_dir")
    e.add_argument("--verify", action="store_true", help="check graphs vs PyTorch on sample texts")
    e.add_argument("--no-full", action="store_true", help="skip the monolithic full-model graph")
    e.set_defaults(fn=cmd_export)

    i = sub.add_parser("info", help="what a model directory holds")
    i.add_argument("model_dir")
    i.set_defaults(fn=cmd_info)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=None, help="ORT thread pool size (default: all cores)")
    r = sub.add_parser("run", parents=[common], help="classify a file ('-' for stdin)")
    r.add_argument("model_dir")
    r.add_argument("file")
    r.add_argument("--max-chars", type=int, default=None)
    r.set_defaults(fn=cmd_run)

    replay_opts = argparse.ArgumentParser(add_help=False)
    replay_opts.add_argument("--max-tokens", type=int, default=1024, help="document window in tokens")
    replay_opts.add_argument("--max-revisions", type=int, default=None)
    replay_opts.add_argument("--limit", type=int, default=None, help="documents to read from a trace file")
    replay_opts.add_argument("--trace", default=None, help="revision trace (.jsonl or .jsonl.gz)")
    replay_opts.add_argument("--git", default=None, help="a file inside a git repository: replay its history")
    replay_opts.add_argument("--live", action="store_true", help="print a line per revision")
    replay_opts.add_argument("--check", action="store_true",
                             help="after each revision compare with a fresh build (codes, logits)")
    rp = sub.add_parser("replay", parents=[common, replay_opts], help="replay real edit histories")
    rp.add_argument("model_dir")
    rp.set_defaults(fn=cmd_replay)

    d = sub.add_parser("demo", parents=[common, replay_opts], help="the bundled model replaying a real history")
    d.add_argument("--model-dir", default=None)
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="cross-framework benchmarks (benchmarks/edits.py; args passed through)")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("train", "bench"):  # their flags belong to another parser (REMAINDER can't take them)
        a = argparse.Namespace(cmd=argv[0], args=argv[1:], fn=cmd_train if argv[0] == "train" else cmd_bench)
    else:
        a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as e:
        print(f"vqinc {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
