"""Per-edit cost of vqinc against the alternatives, on real revision histories, in one run.

Contenders, all on the same exported weights and the same edited text, measured edit by edit:
  ort_full    ONNX Runtime monolithic graph (full.onnx) over the whole window
  prefix_kv   recompute every position at and after the first changed token (what a causal-LM
              serving stack with a KV cache does), on the same stage graphs
  vqinc       the incremental engine (Document.edit)
  torch_full  PyTorch eager full recompute of the VQ model (with --checkpoint)
  torch_base  PyTorch eager of the un-quantised teacher, for reference (with --checkpoint)

Usage: python benchmarks/edits.py [--model-dir DIR] [--trace FILE] [--windows 256 512 1024 2048]
Writes results JSON, a markdown table and a PNG plot to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from vqinc.runtime.model import Model, default_model_dir  # noqa: E402
from vqinc.runtime.replay import initial_window  # noqa: E402
from vqinc.runtime.stages import full_macs  # noqa: E402
from vqinc.runtime.state import DocState  # noqa: E402
from vqinc.runtime.traces import Edit, read_trace_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "data" / "pep-revisions.jsonl.gz"


class PrefixReuse:
    """A second copy of the document's state that recomputes the whole suffix after each edit."""

    def __init__(self, model: Model, ids: np.ndarray):
        m = model
        self.model = m
        self.state = DocState.empty(m.spec, cap=max(64, 2 * len(ids) + 2))
        m.engine.apply(self.state, 0, 0, np.asarray([m.bos_token_id, *ids], np.int64))

    def set_ids(self, ids: np.ndarray):
        old = self.state.ids[1:]
        lim = min(len(old), len(ids))
        neq = np.nonzero(old[:lim] != ids[:lim])[0]
        p = int(neq[0]) if len(neq) else lim
        return self.model.engine.apply(self.state, p + 1, len(old) - p, np.asarray(ids[p:], np.int64))


def edit_kind(e: Edit) -> str:
    return "insert" if e.delete == 0 else ("delete" if not e.insert else "replace")


def keystrokes(edits):
    for e in edits:
        if e.insert and len(e.insert) > 1:
            if e.delete:
                yield Edit(e.at, e.delete, "")
            for i, ch in enumerate(e.insert):
                yield Edit(e.at + i, 0, ch)
        else:
            yield e


def workload(model: Model, trace_path: Path, n_tokens: int, num_docs: int, edits_per_doc: int, keystroke: bool):
    """(window text, [local edits]) per document: real atomic edits that fall inside an n-token window."""
    out = []
    for tr in read_trace_file(trace_path):
        if len(out) >= num_docs:
            break
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
            if len(local) >= edits_per_doc or win.end - win.start > 2 * len(start_text):
                break
        if local:
            out.append((tr.doc_id, start_text, local))
    return out


def run(args) -> dict:
    model = Model.load(args.model_dir, threads=args.threads)
    torch_model = base_model = None
    if args.checkpoint:
        import torch

        from vqinc.model.checkpoint import load_checkpoint
        from vqinc.model.train import with_vq

        torch.set_num_threads(args.threads or os.cpu_count())
        torch_model = load_checkpoint(args.checkpoint)[0].eval()
        base_model = with_vq(torch_model, False).eval()
    results = {"meta": {
        "onnxruntime": ort.__version__, "provider": model.providers[0],
        "fingerprint": model.manifest.fingerprint, "model_dir": str(model.root), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "argv": sys.argv,
        "keystroke": args.keystroke, "trace": str(args.trace),
    }, "windows": {}}
    g = model.manifest.graphs
    one_token = model.num_layers * (g["embed_qkv"].macs_per_row + g["attend"].macs_per_row + g["final"].macs_per_row)
    for n in args.windows:
        rows = []
        for doc_id, text, edits in workload(model, args.trace, n, args.docs, args.edits, args.keystroke):
            doc = model.document(text)
            prefix = PrefixReuse(model, doc.token_ids)
            warm_ids = np.asarray([model.bos_token_id, *doc.token_ids], np.int64)
            for _ in range(args.warmup):  # first runs allocate arenas / build kernels: not part of the figures
                model.run_full(warm_ids)
                if torch_model is not None:
                    import torch

                    with torch.no_grad():
                        torch_model(torch.from_numpy(warm_ids)[None])
                        base_model(torch.from_numpy(warm_ids)[None])
            peak = doc.nbytes()
            for k, (a, b, piece) in enumerate(edits):
                t0 = time.perf_counter()
                st = doc.edit(a, b, piece)
                t_vq = time.perf_counter() - t0
                ids = doc.token_ids
                t0 = time.perf_counter()
                pst = prefix.set_ids(ids)
                t_prefix = time.perf_counter() - t0
                full_ids = np.asarray([model.bos_token_id, *ids], np.int64)
                t0 = time.perf_counter()
                full_logits, _ = model.run_full(full_ids)
                t_full = time.perf_counter() - t0
                assert np.abs(full_logits[0] - doc.logits).max() < 1e-3, "contenders disagree"
                row = {"doc": doc_id, "k": k, "kind": "insert" if a == b else ("delete" if not piece else "replace"),
                       "tokens": len(ids), "changed_tokens": st.n_insert + st.n_delete,
                       "vqinc_ms": t_vq * 1e3, "prefix_ms": t_prefix * 1e3, "ort_full_ms": t_full * 1e3,
                       "vqinc_macs": st.macs, "prefix_macs": pst.macs,
                       "full_macs": full_macs(model.spec, len(ids) + 1),
                       "near_ties": st.near_ties}
                if torch_model is not None and k % args.torch_every == 0:
                    import torch

                    with torch.no_grad():
                        x = torch.from_numpy(full_ids)[None]
                        t0 = time.perf_counter()
                        torch_model(x)
                        row["torch_full_ms"] = (time.perf_counter() - t0) * 1e3
                        t0 = time.perf_counter()
                        base_model(x)
                        row["torch_base_ms"] = (time.perf_counter() - t0) * 1e3
                rows.append(row)
                peak = max(peak, doc.nbytes())
            print(f"n={n} {doc_id}: {len(edits)} edits", file=sys.stderr)
        results["windows"][str(n)] = {"rows": rows, "summary": summarize(rows, one_token), "state_bytes_peak": peak
                                      if rows else 0}
    return results


def _stat(v):
    v = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90))} if len(v) else None


def summarize(rows, one_token: int) -> dict:
    if not rows:
        return {}
    s = {"edits": len(rows)}
    for key in ("vqinc_ms", "prefix_ms", "ort_full_ms", "torch_full_ms", "torch_base_ms", "vqinc_macs", "prefix_macs",
                "full_macs"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            s[key] = _stat(vals)
    # ratios edit by edit (same edit, same run), then their median
    s["speedup_vs_ort_full"] = _stat([r["ort_full_ms"] / r["vqinc_ms"] for r in rows])
    s["speedup_vs_prefix"] = _stat([r["prefix_ms"] / r["vqinc_ms"] for r in rows])
    s["macs_ratio_vs_full"] = _stat([r["full_macs"] / max(r["vqinc_macs"], 1) for r in rows])
    s["macs_ratio_vs_prefix"] = _stat([r["prefix_macs"] / max(r["vqinc_macs"], 1) for r in rows])
    s["edit_amplification"] = _stat([r["vqinc_macs"] / one_token for r in rows])
    s["near_ties"] = int(sum(r["near_ties"] for r in rows))
    s["by_kind"] = {kind: {"edits": len(rs), "vqinc_ms": _stat([r["vqinc_ms"] for r in rs]),
                           "macs_ratio_vs_full": _stat([r["full_macs"] / max(r["vqinc_macs"], 1) for r in rs])}
                    for kind in ("insert", "delete", "replace") if (rs := [r for r in rows if r["kind"] == kind])}
    return s


def markdown(results: dict) -> str:
    lines = ["| n | edits | vqinc ms (med/p90) | prefix-KV ms | ORT full ms | torch full ms | x vs ORT full | "
             "x vs prefix | MACs x vs full | MACs x vs prefix | edit ampl. | state MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, w in results["windows"].items():
        s = w["summary"]
        if not s:
            continue

        def f(key, sub="median", fmt="{:.2f}", s=s):
            return fmt.format(s[key][sub]) if key in s else "-"
        cells = [n, s["edits"], f"{f('vqinc_ms')} / {f('vqinc_ms', 'p90')}", f("prefix_ms"), f("ort_full_ms"),
                 f("torch_full_ms"), f("speedup_vs_ort_full", fmt="{:.1f}"), f("speedup_vs_prefix", fmt="{:.1f}"),
                 f("macs_ratio_vs_full", fmt="{:.1f}"), f("macs_ratio_vs_prefix", fmt="{:.1f}"),
                 f("edit_amplification", fmt="{:.1f}"), f"{w['state_bytes_peak'] / 1e6:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines.append("By edit type (vqinc median ms / median MACs ratio vs full):")
    for n, w in results["windows"].items():
        bk = w["summary"].get("by_kind", {})
        parts = [f"{k}: {v['edits']} edits, {v['vqinc_ms']['median']:.2f} ms, {v['macs_ratio_vs_full']['median']:.1f}x"
                 for k, v in bk.items()]
        lines.append(f"- n={n}: " + "; ".join(parts))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n, w in results["windows"].items() if w["summary"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("vqinc_ms", "vqinc"), ("prefix_ms", "prefix-KV reuse"), ("ort_full_ms", "ORT full"),
                       ("torch_full_ms", "PyTorch full")):
        ys = [results["windows"][str(n)]["summary"].get(key, {}).get("median") for n in ns]
        if all(y is not None for y in ys):
            ax1.plot(ns, ys, marker="o", label=label)
    for key, label in (("vqinc_macs", "vqinc"), ("prefix_macs", "prefix-KV reuse"), ("full_macs", "full recompute")):
        ax2.plot(ns, [results["windows"][str(n)]["summary"][key]["median"] for n in ns], marker="o", label=label)
    for ax, t in ((ax1, "median wall-clock per edit (ms)"), (ax2, "median multiply-accumulates per edit")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("document window (tokens)")
        ax.set_title(t)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--checkpoint", default=None, help="PyTorch checkpoint of the same model (adds torch contenders)")
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--windows", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--docs", type=int, default=4, help="documents per window length")
    p.add_argument("--edits", type=int, default=40, help="atomic edits per document")
    p.add_argument("--keystroke", action="store_true", help="type each inserted span one character at a time")
    p.add_argument("--torch-every", type=int, default=4, help="time the PyTorch contenders every k-th edit")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2, help="untimed full runs per document before timing")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = p.parse_args(argv)
    if not a.trace.exists():
        raise SystemExit(f"trace {a.trace} not found: pass --trace (e.g. ../shared/data/pep-revisions.jsonl.gz)")
    res = run(a)
    a.out.mkdir(parents=True, exist_ok=True)
    tag = "keystroke" if a.keystroke else "atomic"
    (a.out / f"edits_{tag}.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (a.out / f"edits_{tag}.md").write_text(md + "\n")
    plot(res, a.out / f"edits_{tag}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
