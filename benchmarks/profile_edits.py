"""Where the time of an edit goes: cProfile over real PEP edits at one window length.

Usage: python -m benchmarks.profile_edits [--model-dir DIR] [--n 1024] [--docs 2] [--edits 30] [--keystroke]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import numpy as np

from benchmarks.edits import DEFAULT_TRACE, workload
from vqinc.runtime.model_dir import Model, default_model_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--docs", type=int, default=2)
    p.add_argument("--edits", type=int, default=30)
    p.add_argument("--keystroke", action="store_true", help="type each inserted span one character at a time")
    a = p.parse_args(argv)
    model = Model.load(a.model_dir)
    work = workload(model, a.trace, a.n, a.docs, a.edits, a.keystroke)
    docs = [(model.document(text), edits) for _, text, edits in work]
    prof = cProfile.Profile()
    prof.enable()
    for doc, edits in docs:
        for e in edits:
            doc.edit(*e)
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    calls = sum(v[1] for k, v in stats.stats.items() if k[0] == "~" and "onnxruntime_pybind11_state.run" in k[2])
    ort = sum(v[2] for k, v in stats.stats.items() if k[0] == "~" and "onnxruntime_pybind11_state.run" in k[2])
    n_edits = sum(len(e) for _, e in docs)
    ms = [s.wall_ms for d, _ in docs for s in list(d.history)[1:]]
    kind = "keystrokes" if a.keystroke else "atomic edits"
    print(f"{n_edits} {kind} at n={a.n}: {total:.2f} s profiled, {ort / total:.0%} inside ORT run "
          f"({calls / n_edits:.1f} calls per edit); median {np.median(ms):.2f} ms per edit")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(8)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
