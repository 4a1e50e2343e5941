"""Throughput of many open documents: `Model.edit_many` (row-wise stages shared across documents) against
a loop of `doc.edit`, in edits per second, for 1, 8 and 64 documents typing at once.

Workload: real PEP histories cut to an n-token window (the first documents long enough), each typed a
keystroke at a time (benchmarks/edits.py's keystroke mode); every round gives every document its next
keystroke. Both paths replay the same rounds on their own copies of the documents, and after the run
every document of the edit_many path is checked against its looped twin (codes identical, logits within
1e-4).

Usage: python -m benchmarks.many_docs [--docs 1 8 64] [--n 256] [--rounds 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.edits import DEFAULT_TRACE, workload
from vqinc.runtime.model_dir import Model, default_model_dir


def rounds_of(model: Model, n_tokens: int, num_docs: int, rounds: int, trace: Path):
    """(texts, [round -> [(doc index, start, end, text)]]): documents reused cyclically when the trace has
    fewer long documents than asked for."""
    base = workload(model, trace, n_tokens, min(num_docs, 12), rounds, True)
    texts = [base[i % len(base)][1] for i in range(num_docs)]
    edits = [base[i % len(base)][2] for i in range(num_docs)]
    return texts, [[(i, *edits[i][r]) for i in range(num_docs) if r < len(edits[i])] for r in range(rounds)]


def run(model: Model, texts, schedule) -> dict:
    many = [model.document(t) for t in texts]
    loop = [model.document(t) for t in texts]
    t_many = t_loop = 0.0
    count = 0
    for batch in schedule:
        t0 = time.perf_counter()
        model.edit_many([(many[i], a, b, s) for i, a, b, s in batch])
        t_many += time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, a, b, s in batch:
            loop[i].edit(a, b, s)
        t_loop += time.perf_counter() - t0
        count += len(batch)
    worst = 0.0
    for a, b in zip(many, loop, strict=True):
        assert a.text == b.text and (a.codes == b.codes).all(), "edit_many diverged from editing alone"
        worst = max(worst, float(np.abs(a.logits - b.logits).max()))
    assert worst <= 1e-4, worst
    return {"documents": len(texts), "edits": count, "edit_many_edits_per_s": count / t_many,
            "loop_edits_per_s": count / t_loop, "speedup": t_loop / t_many, "max_dlogit": worst}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--docs", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--n", type=int, default=256, help="tokens per document window")
    p.add_argument("--rounds", type=int, default=30, help="keystrokes per document")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    model = Model.load(a.model_dir, threads=a.threads)
    load = os.getloadavg()
    rows = []
    for k in a.docs:
        texts, schedule = rounds_of(model, a.n, k, a.rounds, a.trace)
        rows.append(run(model, texts, schedule))
        r = rows[-1]
        print(f"{k:3d} documents: edit_many {r['edit_many_edits_per_s']:7.1f} edits/s, loop of doc.edit "
              f"{r['loop_edits_per_s']:7.1f} edits/s ({r['speedup']:.2f}x), max |dlogit| {r['max_dlogit']:.1e}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        meta = {"argv": sys.argv, "fingerprint": model.manifest.fingerprint, "providers": model.providers,
                "cpu_count": os.cpu_count(), "machine": platform.machine(), "loadavg_before": load,
                "loadavg_after": os.getloadavg()}
        (a.out / "many_docs.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
