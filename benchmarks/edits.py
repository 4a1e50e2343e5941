"""Per-edit cost of vqinc against every alternative, on real revision histories, edit by edit, in one run.

Contenders (benchmarks/contenders.py), all on the same exported weights and the same edited text:
  vqinc            the incremental engine: Document.edit (character edit in; its re-tokenisation included)
  prefix_kv        the standard past-KV decoder (decoder.onnx, fused ORT attention): the cache is cut at the
                   first changed token and the suffix re-runs, as optimum / onnxruntime-genai users do
  ort_full         full.onnx over the whole window
  torch_prefix_kv  PyTorch eager, the model's own forward fed the cached K/V of the unchanged prefix
  torch_full       PyTorch eager full forward
Baselines get the token ids of the edited text (their tokenisation is not timed; `tokenize_ms` records
what tokenising the whole window costs). Every contender's logits are compared with ORT full's on every
edit. Ratios ("x vs ...") are taken edit by edit (the same edit in the same run), then their median / p90.

The old "prefix-KV through vqinc's own stage graphs" contender is gone: it measured vqinc's engine with
sparsity switched off (27 graph calls per edit, float64 attention), a strawman as a baseline;
benchmarks/profile_edits.py is the tool for the engine's own overheads.

Usage: python -m benchmarks.edits [--quick] [--windows 1024 4000] [--modes atomic keystroke] [--model-dir DIR]
Writes edits.json (every edit of every contender, and the run's conditions) and edits.md to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort

from benchmarks.contenders import OrtFull, PrefixKV, TorchFull, TorchPrefixKV, decoder_for
from vqinc.runtime.engine import kernels
from vqinc.runtime.format.atomic import check_writable_dir, write_atomic
from vqinc.runtime.format.stages import savings, suffix_macs, token_macs
from vqinc.runtime.model_dir import Model, default_model_dir
from vqinc.runtime.ort.sessions import BULK_ROWS
from vqinc.runtime.replay.run import initial_window
from vqinc.runtime.replay.traces import Edit, read_trace_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "data" / "pep-revisions.jsonl.gz"
BASELINES = ("prefix_kv", "ort_full", "torch_prefix_kv", "torch_full")
LABELS = {"vqinc": "vqinc", "prefix_kv": "prefix-KV (ORT decoder)", "ort_full": "ORT full",
          "torch_prefix_kv": "PyTorch prefix-KV", "torch_full": "PyTorch full"}
AGREE_TOL = 1e-3
FLOAT32_TIE = 1e-5
"""A code margin below this fraction of |o| (about 100 float32 ulps) is a tie a float32 graph may call either way."""
QUICK = {"windows": [128, 1024], "docs": 2, "edits": 12, "keystrokes": 30, "torch_every": 5, "warmup": 1}


# --- workload -----------------------------------------------------------------------------------------


def edit_kind(a: int, b: int, piece: str) -> str:
    return "insert" if a == b else ("delete" if not piece else "replace")


def keystrokes(edits):
    """Each inserted span typed one character at a time (a replacement deletes first)."""
    for e in edits:
        if e.insert and len(e.insert) > 1:
            if e.delete:
                yield Edit(e.at, e.delete, "")
            for i, ch in enumerate(e.insert):
                yield Edit(e.at + i, 0, ch)
        else:
            yield e


def workload(model: Model, trace_path: Path, n_tokens: int, num_docs: int, edits_per_doc: int, keystroke: bool,
             keep: set[str] | None = None):
    """(doc id, window text, [local edits]) per document: real edits that fall inside an n-token window;
    only documents in `keep` when given (benchmarks/code_flips.py's --split)."""
    out = []
    for tr in read_trace_file(trace_path):
        if len(out) >= num_docs:
            break
        if keep is not None and tr.doc_id not in keep:
            continue
        edits_all = [e for r in tr.revisions for e in r.edits]
        if keystroke:
            edits_all = list(keystrokes(edits_all))
        if not edits_all:
            continue
        center = int(np.median([e.at for e in edits_all]))
        win = initial_window(model, tr.base, n_tokens, center)
        if len(model.tokenizer.encode(tr.base[win.start:win.end], add_special_tokens=False).ids) < n_tokens * 0.9:
            continue  # document shorter than the window
        start_text = tr.base[win.start:win.end]
        local = []
        for e in edits_all:
            le = win.local(e.at, e.delete, e.insert)
            if le is not None:
                local.append(le)
            # a row labelled n must edit a document of about n tokens: stop when the window has doubled, or
            # halved (a revision that rewrites the whole text would otherwise have us type a new one from
            # scratch, timing tiny documents under the label n)
            if len(local) >= edits_per_doc or not len(start_text) / 2 <= win.end - win.start <= 2 * len(start_text):
                break
        if local:
            out.append((tr.doc_id, start_text, local))
    return out


# --- the run ---------------------------------------------------------------------------------------------


def _git() -> dict:
    def out(*cmd):
        r = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    return {"commit": out("rev-parse", "HEAD"), "dirty": bool(out("status", "--porcelain", "--untracked-files=no"))}


def load_torch(args, model: Model):
    """The same model in PyTorch (from --checkpoint, else rebuilt from full.onnx), or None."""
    if args.no_torch:
        return None
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    if args.checkpoint:
        from vqinc.model.checkpoint import load_checkpoint

        return load_checkpoint(args.checkpoint)[0].eval()
    from vqinc.export.from_dir import model_from_dir

    return model_from_dir(model.root)[0]


def encode_text(tokenizer, text: str):
    return tokenizer.encode(text, add_special_tokens=False)


def _timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return out, (time.perf_counter() - t0) * 1e3


def run_document(model, decoder, torch_model, text, edits, args, n_tokens) -> tuple[list[dict], int, int]:
    """Every edit of one document through every contender; returns (rows, peak state bytes, skipped edits)."""
    bos = model.bos_token_id
    doc = model.document(text)
    ids = doc.token_ids
    ort_full = OrtFull(model)
    prefix = PrefixKV(decoder, ids)
    t_full = TorchFull(torch_model, bos) if torch_model is not None else None
    t_prefix = TorchPrefixKV(torch_model, bos, ids) if torch_model is not None else None
    for _ in range(args.warmup):  # first runs allocate arenas / pick kernels: not part of the figures
        ort_full.run(ids)
        decoder.document(ids)
        if t_full is not None:
            t_full.run(ids)
    rows, peak, skipped = [], doc.nbytes(), 0
    prev = ids
    spec = model.spec
    gc.collect()
    gc.disable()
    try:
        for k, (a, b, piece) in enumerate(edits):
            try:
                st, t_vq = _timed(doc.edit, a, b, piece)
            except ValueError:  # the window outgrew the model (max_positions): the edit is skipped by all
                skipped += 1
                continue
            ids = doc.token_ids
            n = len(ids) + 1
            logits_full, t_of = _timed(ort_full.run, ids)
            logits_kv, t_kv = _timed(prefix.run, ids)
            _, t_tok = _timed(encode_text, model.tokenizer, doc.text)
            row = {"k": k, "kind": edit_kind(a, b, piece), "tokens": n - 1, "changed_tokens": st.n_insert + st.n_delete,
                   "suffix": n - prefix.start, "vqinc_ms": t_vq, "prefix_kv_ms": t_kv, "ort_full_ms": t_of,
                   "tokenize_ms": t_tok, "vqinc_macs": st.macs, "prefix_kv_macs": suffix_macs(spec, n, prefix.start),
                   "full_macs": suffix_macs(spec, n, 0), "near_ties": st.near_ties,
                   "dlogit": {"vqinc": float(np.abs(doc.logits - _at_labels(ort_full, doc, logits_full)).max()),
                              "prefix_kv": float(np.abs(logits_kv - logits_full).max())}}
            if t_full is not None and k % args.torch_every == 0:
                t_prefix.sync(prev)  # untimed: edits that were not sampled
                lp, row["torch_prefix_kv_ms"] = _timed(t_prefix.run, ids)
                lf, row["torch_full_ms"] = _timed(t_full.run, ids)
                row["dlogit"]["torch_prefix_kv"] = float(np.abs(lp - logits_full).max())
                row["dlogit"]["torch_full"] = float(np.abs(lf - logits_full).max())
            if row["dlogit"]["vqinc"] > AGREE_TOL and hasattr(doc, "state"):  # a plain Document
                row["disagreement"] = _diagnose(model, doc)  # untimed
            rows.append(row)
            peak = max(peak, doc.nbytes())
            prev = ids
    finally:
        gc.enable()
    return rows, peak, skipped


def _diagnose(model: Model, doc) -> dict:
    """Why vqinc and full.onnx disagree on an edit: is the document still equal to a fresh build of its
    text (same labels), and how close to a tie was the first code full.onnx decides otherwise? full.onnx
    runs in float32, so where a code's margin (the engine's float64 lower bound on its distance to the
    cell's edge, relative to |o|) is below float32's resolution it may pick the neighbouring code; the
    engine settles such ties by one canonical float64 computation, the same in a fresh build."""
    fresh = model.document_ids(doc.token_ids, positions=doc.positions if model.spec.labelled else None)
    ids = np.concatenate([[model.bos_token_id], doc.token_ids]).astype(np.int64)
    labels = np.concatenate([[0], doc.positions]).astype(np.int64) if model.spec.labelled else None
    _, full_codes = model.run_full(ids, labels)
    codes = doc.codes
    out = {"fresh_dlogit": float(np.abs(doc.logits - fresh.logits).max()),
           "fresh_codes_differ": int((codes != fresh.codes).sum()),
           "full_codes_differ": int((codes != full_codes).sum())}
    first = np.argwhere(codes != full_codes)
    if len(first):
        layer, row, head = (int(i) for i in first[0])  # layers first, then position: the cause, not its echo
        st = doc.state
        L, slot = st.layers[layer], st.order[row]
        out["first"] = {"layer": layer, "row": row, "head": head,
                        "relative_margin": float(L.margin[head, slot] / max(np.linalg.norm(L.o[head, slot]), 1e-30))}
    return out


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _at_labels(ort_full: OrtFull, doc, contiguous: np.ndarray) -> np.ndarray:
    """What vqinc's logits must equal: ORT full at the document's position labels (untimed; a RoPE model
    exported with labels keeps them through edits), else the contiguous run every contender is held to."""
    return ort_full.run(doc.token_ids, doc.positions) if doc.model.spec.labelled else contiguous


def run(args) -> dict:
    load_before = os.getloadavg()
    t_start = time.time()
    model = Model.load(args.model_dir, threads=args.threads, providers=args.providers)
    attention = None if args.decoder_attention == "auto" else args.decoder_attention
    decoder, decoder_dir = decoder_for(model, attention, log=lambda m: print(m, file=sys.stderr))
    torch_model = load_torch(args, model)
    torch_meta = None
    if torch_model is not None:
        import torch

        torch_meta = {"version": torch.__version__, "threads": torch.get_num_threads(),
                      "source": args.checkpoint or f"rebuilt from {model.root}/full.onnx", "every": args.torch_every}
    results = {"meta": {
        "onnxruntime": ort.__version__, "providers": model.providers,
        "decoder_providers": decoder.session.get_providers(),
        "ort_intra_op_threads": args.threads or os.cpu_count(), "torch": torch_meta,
        "fingerprint": model.manifest.fingerprint, "model_dir": str(model.root), "decoder_dir": decoder_dir,
        "decoder_attention": decoder.model.manifest.provenance.decoder_attention,
        "git": _git(), "machine": platform.machine(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "argv": sys.argv, "quick": args.quick, "trace": str(args.trace),
        "loadavg_before": load_before, "tokenizer_timed_for_baselines": False, "kernels": kernels.kind(),
        "sessions": f"one thread below {BULK_ROWS} rows, {model.executor.threads} threads above (both engines)",
    }, "modes": {}}
    one_token = token_macs(model.spec)
    for mode in args.modes:
        keystroke = mode == "keystroke"
        per_doc = args.keystrokes if keystroke else args.edits
        results["modes"][mode] = {}
        for n in args.windows:
            rows, peak, skipped, load = [], 0, 0, os.getloadavg()
            for doc_id, text, edits in workload(model, args.trace, n, args.docs, per_doc, keystroke):
                r, p, s = run_document(model, decoder, torch_model, text, edits, args, n)
                rows += [{"doc": doc_id, **x} for x in r]
                peak, skipped = max(peak, p), skipped + s
                print(f"{mode} n={n} {doc_id}: {len(r)} edits", file=sys.stderr)
            results["modes"][mode][str(n)] = {"rows": rows, "summary": summarize(rows, one_token),
                                              "state_bytes_peak": peak, "skipped_edits": skipped, "loadavg": load}
    results["meta"]["loadavg_after"] = os.getloadavg()
    results["meta"]["duration_s"] = round(time.time() - t_start, 1)
    busy = max(results["meta"]["loadavg_before"][0], results["meta"]["loadavg_after"][0])
    results["meta"]["other_load_warning"] = (
        f"load average {busy:.2f} on {os.cpu_count()} cores: other processes were running; timings are noisy"
        if busy > 0.3 * (os.cpu_count() or 1) else None)
    return results


# --- summaries --------------------------------------------------------------------------------------------


def _stat(v):
    v = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "n": len(v)} if len(v) else None


def summarize(rows: list[dict], one_token: int) -> dict:
    if not rows:
        return {}
    s: dict = {"edits": len(rows)}
    for c in ("vqinc", *BASELINES):
        vals = [r[f"{c}_ms"] for r in rows if f"{c}_ms" in r]
        if vals:
            s[f"{c}_ms"] = _stat(vals)
            # per-edit ratio: how many times longer the baseline took on the same edit
            if c != "vqinc":
                s[f"x_vs_{c}"] = _stat([r[f"{c}_ms"] / r["vqinc_ms"] for r in rows if f"{c}_ms" in r])
        diffs = [r["dlogit"][c] for r in rows if c in r["dlogit"]]
        if diffs:
            s.setdefault("max_dlogit_vs_ort_full", {})[c] = float(max(diffs))
            s.setdefault("disagreements", {})[c] = int(sum(d > AGREE_TOL for d in diffs))
    for key in ("vqinc_macs", "prefix_kv_macs", "full_macs", "tokenize_ms", "suffix", "changed_tokens"):
        s[key] = _stat([r[key] for r in rows])
    s["macs_x_vs_full"] = _stat([savings(r["full_macs"], r["vqinc_macs"]) for r in rows])
    s["macs_x_vs_prefix_kv"] = _stat([savings(r["prefix_kv_macs"], r["vqinc_macs"]) for r in rows])
    s["edit_amplification"] = _stat([r["vqinc_macs"] / one_token for r in rows])
    s["near_ties"] = int(sum(r["near_ties"] for r in rows))
    diag = [r["disagreement"] for r in rows if "disagreement" in r]
    s["disagreements_explained"] = {
        "edits": len(diag),
        "equal_to_fresh_build": sum(d["fresh_codes_differ"] == 0 and d["fresh_dlogit"] <= 1e-4 for d in diag),
        "first_code_below_float32": sum(d.get("first", {}).get("relative_margin", 1.0) < FLOAT32_TIE for d in diag),
        "largest_relative_margin": max((d["first"]["relative_margin"] for d in diag if "first" in d), default=None)}
    s["by_kind"] = {kind: {"edits": len(rs), "vqinc_ms": _stat([r["vqinc_ms"] for r in rs]),
                           "x_vs_prefix_kv": _stat([r["prefix_kv_ms"] / r["vqinc_ms"] for r in rs]),
                           "macs_x_vs_full": _stat([savings(r["full_macs"], r["vqinc_macs"]) for r in rs])}
                    for kind in ("insert", "delete", "replace") if (rs := [r for r in rows if r["kind"] == kind])}
    return s


def markdown(results: dict) -> str:
    """The headline table (one row per mode and window) and the per-kind lines."""
    lines = ["| edits | n | count | vqinc ms (med / p90) | prefix-KV ms (med / p90) | ORT full ms | "
             "torch prefix-KV ms | torch full ms | x vs prefix-KV (med / p10 / p90) | x vs ORT full (med / p10) | "
             "x vs torch prefix-KV | x vs torch full | MACs x vs full | MACs x vs prefix-KV | edit ampl. | "
             "state MB |", "|" + "---|" * 16]
    for mode, windows in results["modes"].items():
        for n, w in windows.items():
            s = w["summary"]
            if not s:
                continue

            def f(key, sub="median", fmt="{:.2f}", s=s):
                return fmt.format(s[key][sub]) if s.get(key) else "-"
            torch_n = s["torch_full_ms"]["n"] if s.get("torch_full_ms") else 0
            tn = "" if torch_n in (0, s["edits"]) else f" ({torch_n} edits)"
            cells = [mode, n, s["edits"], f"{f('vqinc_ms')} / {f('vqinc_ms', 'p90')}",
                     f"{f('prefix_kv_ms')} / {f('prefix_kv_ms', 'p90')}", f("ort_full_ms"),
                     f("torch_prefix_kv_ms") + tn, f("torch_full_ms") + tn,
                     f"{f('x_vs_prefix_kv', fmt='{:.1f}')} / {f('x_vs_prefix_kv', 'p10', fmt='{:.1f}')} / "
                     f"{f('x_vs_prefix_kv', 'p90', fmt='{:.1f}')}",
                     f"{f('x_vs_ort_full', fmt='{:.1f}')} / {f('x_vs_ort_full', 'p10', fmt='{:.1f}')}",
                     f("x_vs_torch_prefix_kv", fmt="{:.1f}"),
                     f("x_vs_torch_full", fmt="{:.1f}"), f("macs_x_vs_full", fmt="{:.1f}"),
                     f("macs_x_vs_prefix_kv", fmt="{:.1f}"), f("edit_amplification", fmt="{:.1f}"),
                     f"{w['state_bytes_peak'] / 1e6:.1f}"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "By edit type (vqinc median ms / median per-edit x vs prefix-KV / median MACs x vs full):"]
    for mode, windows in results["modes"].items():
        for n, w in windows.items():
            bk = w["summary"].get("by_kind", {})
            parts = [f"{k}: {v['edits']} edits, {v['vqinc_ms']['median']:.2f} ms, "
                     f"{v['x_vs_prefix_kv']['median']:.1f}x, {v['macs_x_vs_full']['median']:.1f}x"
                     for k, v in bk.items()]
            lines.append(f"- {mode}, n={n}: " + "; ".join(parts))
    lines += ["", "Agreement with ORT full (max |dlogit| over all edits; edits above 1e-3):"]
    for mode, windows in results["modes"].items():
        for n, w in windows.items():
            s = w["summary"]
            if s:
                parts = [f"{c} {s['max_dlogit_vs_ort_full'][c]:.1e} ({s['disagreements'][c]})"
                         for c in s["max_dlogit_vs_ort_full"]]
                lines.append(f"- {mode}, n={n}: " + ", ".join(parts))
                e = s.get("disagreements_explained")
                if e and e["edits"]:
                    lines.append(f"  - vqinc's {e['edits']} disagreements: {e['equal_to_fresh_build']} equal to a "
                                 "fresh build (codes identical, logits within 1e-4); in "
                                 f"{e['first_code_below_float32']} the first code full.onnx decides otherwise is a "
                                 f"tie float32 cannot resolve (margin < {FLOAT32_TIE:.0e} |o|; largest "
                                 f"{_or_nan(e['largest_relative_margin']):.1e})")
    m = results["meta"]
    lines += ["", f"Conditions: onnxruntime {m['onnxruntime']} on {', '.join(m['providers'])}, "
              f"sessions {m.get('sessions', '?')}; engine kernels {m.get('kernels', '?')}; "
              f"prefix-KV decoder attention {m['decoder_attention']}; "
              + (f"torch {m['torch']['version']}, {m['torch']['threads']} threads, timed on every "
                 f"{m['torch']['every']}. edit; " if m["torch"] else "torch contenders off; ")
              + f"load average {m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after "
              f"({m['cpu_count']} cores); commit {(m['git']['commit'] or '?')[:10]}"
              + (" (dirty)" if m["git"]["dirty"] else "") + f"; fingerprint {m['fingerprint']}."]
    if m.get("other_load_warning"):
        lines.append(f"WARNING: {m['other_load_warning']}.")
    if m["torch"] and m["torch"]["every"] > 1:
        lines.append(f"PyTorch contenders timed on every {m['torch']['every']}. edit only (subsampled).")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--checkpoint", default=None, help="PyTorch checkpoint of the same model (default: the torch "
                                                      "model rebuilt from the model directory's full.onnx)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch contenders")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--windows", type=int, nargs="+", default=[128, 1024, 4000],
                   help="document windows in tokens (128: short documents, where a fixed cost per edit shows)")
    p.add_argument("--modes", nargs="+", choices=("atomic", "keystroke"), default=["atomic", "keystroke"],
                   help="atomic: the trace's diff hunks; keystroke: each inserted span typed a character at a time")
    p.add_argument("--docs", type=int, default=3, help="documents per window length")
    p.add_argument("--edits", type=int, default=30, help="atomic edits per document")
    p.add_argument("--keystrokes", type=int, default=60, help="keystrokes per document")
    p.add_argument("--torch-every", type=int, default=1, help="time the PyTorch contenders on every k-th edit")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    p.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime execution providers")
    p.add_argument("--decoder-attention", choices=("auto", "gqa", "mha", "plain"), default="auto",
                   help="attention of the prefix-KV decoder (auto: the model directory's, else the exporter's "
                        "default). On CUDA use mha or plain: ORT's CUDA GroupQueryAttention is float16/bfloat16 only")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each contender per document")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run in under 2 minutes on 2 cores: {QUICK} (PyTorch subsampled)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "edits")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        explicit = {x.split("=")[0].lstrip("-").replace("-", "_") for x in (argv or sys.argv[1:])}
        for k, v in QUICK.items():
            if k not in explicit:
                setattr(a, k, v)
        if "out" not in explicit:
            a.out = a.out.parent / (a.out.name + "-quick")
    if not a.trace.exists():
        raise SystemExit(f"trace {a.trace} not found: pass --trace (e.g. ../shared/data/pep-revisions.jsonl.gz)")
    try:  # before the run: an unwritable --out fails now, not after it
        a.out.mkdir(parents=True, exist_ok=True)
        check_writable_dir(a.out / "edits.json", "--out")
    except (OSError, ValueError) as e:
        raise SystemExit(f"--out {a.out}: cannot write there ({getattr(e, 'strerror', None) or e})") from None
    res = run(a)
    write_atomic(a.out / "edits.json", json.dumps(res, indent=1))
    md = markdown(res)
    write_atomic(a.out / "edits.md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
