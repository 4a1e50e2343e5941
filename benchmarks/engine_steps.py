"""Median ms per edit of one engine build on synthetic edits of real PEP text: the probe behind the
"what each change bought" table (benchmarks/README.md, engine v3).

Takes the first three PEPs of the trace longer than 12,000 characters, cuts each to `--n` tokens and
applies `--reps` edits at random positions, in turn a keystroke (insert "e"), an atomic edit (replace
up to 11 characters by "the word ") and a backspace. Wall and CPU time per edit, in one warm process.
To time an older commit: `git worktree add /tmp/old COMMIT`, build its kernels there
(`python setup.py build_ext --inplace`, if it has them), make a folder `site/vqinc` of symlinks to its
runtime/ model/ ops/ export/, and run this file with PYTHONPATH=that/site.

    python -m benchmarks.engine_steps --n 1024 --reps 45
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

from vqinc.runtime.engine import kernels
from vqinc.runtime.model_dir import Model
from vqinc.runtime.replay.traces import read_trace_file

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pep-revisions.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024, help="document length in tokens")
    p.add_argument("--reps", type=int, default=45, help="edits per document")
    p.add_argument("--trace", type=Path, default=TRACE)
    a = p.parse_args()
    m = Model.load()
    texts = []
    for tr in read_trace_file(a.trace):
        t = list(tr.texts())[-1]
        if len(t) > 12000:
            texts.append(t)
        if len(texts) >= 3:
            break
    rng = random.Random(0)
    wall: dict[str, list[float]] = {"keystroke": [], "atomic": [], "backspace": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    for t in texts:
        enc = m.tokenizer.encode(t, add_special_tokens=False)
        d = m.document(t[:enc.offsets[min(a.n, len(enc.ids)) - 1][1]])
        for i in range(a.reps):
            kind = ("keystroke", "atomic", "backspace")[i % 3]
            at = rng.randrange(0, len(d.text) - 20)
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "keystroke":
                d.edit(at, at, "e")
            elif kind == "backspace":
                d.edit(at, at + 1, "")
            else:
                d.edit(at, at + rng.randrange(0, 12), "the word ")
            wall[kind].append((time.perf_counter() - t0) * 1e3)
            cpu[kind].append((time.process_time() - c0) * 1e3)
    print(f"n={a.n} kernels={kernels.kind()} load={os.getloadavg()[0]:.2f} " + "  ".join(
        f"{k} {statistics.median(v):.2f}ms (cpu {statistics.median(cpu[k]):.2f}) p90 {np.percentile(v, 90):.2f}"
        for k, v in wall.items()))


if __name__ == "__main__":
    main()
