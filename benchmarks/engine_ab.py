"""A/B of two engine versions on the same edits: the vqinc found on sys.path replays keystrokes or atomic
hunks of real PEP histories at n = 1,024 on the bundled model of the tree ROOT (or MODEL_DIR), edit by edit against
full.onnx in the same process; prints the median and p90 ms per edit, the per-edit ratio to full.onnx
(median and p10) and the state size. Works with engine v1 (commit 03b1aa2) and v2.

    python -m benchmarks.engine_ab . key [MODEL_DIR]           # this tree (default: the bundled model)
    git worktree add /tmp/v1 03b1aa2 && mkdir -p /tmp/v1pkg/vqinc && touch /tmp/v1pkg/vqinc/__init__.py && \
      for d in runtime ops model export; do ln -s /tmp/v1/$d /tmp/v1pkg/vqinc/$d; done && \
      mkdir -p /tmp/shared && ln -s $PWD/../shared/data /tmp/shared/data && \
      OPENBLAS_NUM_THREADS=1 PYTHONPATH=/tmp/v1pkg python -m benchmarks.engine_ab /tmp/v1 key   # engine v1
"""
import sys
import time

import numpy as np

from benchmarks.edits import DEFAULT_TRACE, workload
from vqinc.runtime.model_dir import Model

root, mode = sys.argv[1], sys.argv[2]
model_dir = sys.argv[3] if len(sys.argv) > 3 else root + "/runtime/default_model"

m = Model.load(model_dir)
full = (lambda ids: m.sessions.full.run(ids=ids)) if hasattr(m, "sessions") else (lambda ids: m.run_full(ids))
ks = mode != "atomic"
docs = workload(m, DEFAULT_TRACE, 1024, 3, 60 if ks else 30, ks)
ts, rs = [], []
for _, text, edits in docs:
    d = m.document(text)
    for _ in range(2):  # warm-up
        full(np.asarray([m.bos_token_id, *d.token_ids]))
    for e in edits:
        t0 = time.perf_counter()
        d.edit(*e)
        t1 = time.perf_counter()
        full(np.asarray([m.bos_token_id, *d.token_ids]))
        t2 = time.perf_counter()
        ts.append(t1 - t0)
        rs.append((t2 - t1) / (t1 - t0))
name = root.rstrip("/").split("/")[-1]
print(f"{name:10s} {mode:9s} {len(ts)} edits: median {np.median(ts) * 1e3:.2f} ms "
      f"p90 {np.percentile(ts, 90) * 1e3:.2f}; ratio vs ORT full median {np.median(rs):.1f} "
      f"p10 {np.percentile(rs, 10):.2f}; state {d.nbytes() / 1e6:.1f} MB")
