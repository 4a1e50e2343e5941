"""The engine's parts, measured one by one on real PEP documents (the numbers behind the README's
"Engine" section):

  attend       the float32 attention rows graph against the float64 `refine` graph, by row count
  lazy         one lazy update: fixed cost per query row and cost per (query, changed key)
  rebuild      building a document from scratch (the dense path) against full.onnx on the same ids
  cold         the first 10 keystrokes of a fresh process against keystrokes 50..110
  memory       a document's state against a float32 KV cache of the same document

Usage: python -m benchmarks.engine_parts [--model-dir DIR] [--n 1024] [--parts memory ...] [--out DIR]
(quiet machine; ~1 minute for the bundled model)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from benchmarks.edits import DEFAULT_TRACE, workload
from vqinc.runtime.engine.attention import KeyDelta, lazy_update
from vqinc.runtime.model_dir import Model, default_model_dir


def _median_us(f, reps: int = 50) -> float:
    for _ in range(5):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e6)


def attend_vs_refine(model: Model, doc) -> list[dict]:
    st, layer = doc.state, doc.state.layers[1]
    out = []
    for r in (1, 8, 64, 512):
        rows = st.order[-r:]
        feeds = dict(q=layer.q[:, rows], k=layer.k, v=layer.v, qpos=st.pos[rows], kpos=st.pos)
        out.append({"rows": r, "keys": int(layer.k.shape[1]),
                    "attend_us": _median_us(lambda f=feeds: model.executor.run("attend", 1, **f), 20),
                    "refine_us": _median_us(lambda f=feeds: model.executor.run("refine", **f), 20)})
    return out


def lazy_costs(model: Model, doc) -> list[dict]:
    st, layer, li = doc.state, doc.state.layers[2], 2
    rows = st.order[len(st.order) // 4:]
    saved = {f: getattr(layer, f).copy() for f in ("den", "den_err", "o", "o_err", "margin", "codes")}
    none = (layer.k[:, :0], layer.v[:, :0], np.zeros(0, np.int64))
    out = []
    for x in (2, 20, 100):
        mod = st.order[10:10 + x // 2]
        keys = KeyDelta.build(none, none, (layer.k[:, mod], layer.v[:, mod], st.pos[mod]),
                              (layer.k[:, mod] * 1.001, layer.v[:, mod] * 1.001, st.pos[mod]))

        def run(keys=keys):
            for f, a in saved.items():
                getattr(layer, f)[:] = a
            lazy_update(layer, rows, st.pos[rows], keys, model.engine.codebooks[li], model.spec, st.vmax[li])

        out.append({"rows": len(rows), "changed_keys": x, "us": _median_us(run, 20)})
    return out


def rebuild(model: Model, texts: list[str]) -> dict:
    tb, tf = [], []
    for _ in range(3):
        for t in texts:
            t0 = time.perf_counter()
            d = model.document(t)
            tb.append(time.perf_counter() - t0)
            ids = np.asarray([model.bos_token_id, *d.token_ids])
            t0 = time.perf_counter()
            model.run_full(ids)
            tf.append(time.perf_counter() - t0)
    return {"tokens": int(d.state.n), "rebuild_ms": float(np.median(tb) * 1e3),
            "ort_full_ms": float(np.median(tf) * 1e3), "near_tie_heads": int(d.stats.near_ties),
            "canonical_rows": int(d.stats.canonical_rows)}


def memory(model: Model, texts: list[str]) -> dict:
    """State bytes over a float32 KV cache of the same tokens, in total and per array (all layers
    summed, capacity included): what a smaller state would have to drop."""
    s = model.spec
    ratios, parts, tokens = [], {}, []
    for t in texts:
        d = model.document(t)
        tokens.append(int(d.state.n))
        kv = d.state.n * s.num_layers * 2 * s.num_kv_heads * s.head_dim * 4
        ratios.append(d.nbytes() / kv)
        st = d.state
        for name in [f.name for f in fields(st.layers[0])]:
            parts.setdefault(name, []).append(sum(getattr(layer, name).nbytes for layer in st.layers) / kv)
        for name in ("y", "ids", "order", "pos", "labels"):
            parts.setdefault(name, []).append(getattr(st, name).nbytes / kv)
    return {"tokens": tokens,
            "state_over_kv_cache": [round(r, 3) for r in ratios],
            "per_array_over_kv_cache": {k: round(float(np.median(v)), 3) for k, v in parts.items()}}


PARTS = ("cold", "attend", "lazy", "rebuild", "memory")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="which parts to measure (default: all; `--parts memory` takes seconds on any model)")
    a = p.parse_args(argv)
    load = os.getloadavg()
    t0 = time.perf_counter()
    model = Model.load(a.model_dir)
    load_ms = (time.perf_counter() - t0) * 1e3
    docs = workload(model, a.trace, a.n, 3, 120, True)
    texts = [t for _, t, _ in docs]
    _, text, edits = docs[-1]
    keystrokes = [e for e in edits if e[1] - e[0] <= 1 and len(e[2]) <= 1][:110]
    res = {"meta": {"argv": sys.argv, "fingerprint": model.manifest.fingerprint, "loadavg_before": load,
                    "providers": model.providers, "cpu_count": os.cpu_count(), "model_load_ms": load_ms}}
    if "cold" in a.parts or "attend" in a.parts or "lazy" in a.parts:
        doc = model.document(text)  # the first document and keystrokes of this process: the cold start
        ts = []
        for e in keystrokes:
            t = time.perf_counter()
            doc.edit(*e)
            ts.append((time.perf_counter() - t) * 1e3)
        res["cold"] = {"first_10_median_ms": float(np.median(ts[:10])), "first_10_max_ms": float(max(ts[:10])),
                       "steady_median_ms": float(np.median(ts[50:]))}
        if "attend" in a.parts:
            res["attend"] = attend_vs_refine(model, doc)
        if "lazy" in a.parts:
            res["lazy"] = lazy_costs(model, doc)
    if "rebuild" in a.parts:
        res["rebuild"] = rebuild(model, texts)
    if "memory" in a.parts:
        res["memory"] = memory(model, texts)
    res["meta"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "engine_parts.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
