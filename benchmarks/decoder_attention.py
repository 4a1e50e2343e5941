"""Which attention the past-KV decoder should use on this machine: GroupQueryAttention, MultiHeadAttention
or plain ops, timed on the same model for a range of suffix lengths S against a cached prefix of n - S.

Exports each kind into a copy of the model directory (needs torch), checks it against full.onnx, then times
`KVDocument.set_ids` for a substitution S tokens before the end (best of --repeats). The default kind of
`vqinc export --decoder` (GQA where ORT's kernel takes the shape) follows from these timings.

Usage: python -m benchmarks.decoder_attention [--model-dir DIR] [--n 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort

from vqinc.export.decoder import ATTENTION_KINDS, Decoder, add_decoder
from vqinc.export.from_dir import model_from_dir
from vqinc.export.verify import verify_decoder
from vqinc.runtime.baseline.prefix_kv import KVDecoder
from vqinc.runtime.model_dir import Model, default_model_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--n", type=int, default=1024, help="document length in tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="write the timings as JSON here")
    a = p.parse_args(argv)
    torch_model, _ = model_from_dir(a.model_dir)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, torch_model.cfg.arch.vocab_size, a.n - 1).astype(np.int64)
    suffixes = sorted({1, 16, 256, a.n // 2, a.n - 1} & set(range(1, a.n)))
    load = os.getloadavg()
    results: dict = {"n": a.n, "onnxruntime": ort.__version__, "loadavg_before": load, "ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ATTENTION_KINDS:
            try:
                Decoder(torch_model, kind)
            except ValueError as e:
                print(f"{kind}: not applicable ({e})")
                continue
            d = Path(tmp) / kind
            shutil.copytree(a.model_dir, d, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
            add_decoder(torch_model, d, kind)
            report = verify_decoder(d)
            if not report.ok:
                print(report.table())
                return 1
            doc = KVDecoder(Model.load(d, threads=a.threads)).document(ids)
            row = {}
            for s in suffixes:
                edited = ids.copy()
                edited[len(ids) - s] = (edited[len(ids) - s] + 1) % torch_model.cfg.arch.vocab_size
                best = float("inf")
                for r in range(a.repeats):
                    target = edited if r % 2 == 0 else ids  # alternate, so every run recomputes S tokens
                    t0 = time.perf_counter()
                    doc.set_ids(target)
                    best = min(best, (time.perf_counter() - t0) * 1e3)
                row[s] = best
            results["ms"][kind] = row
            print(f"{kind:>5}: " + "  ".join(f"S={s}: {ms:.2f} ms" for s, ms in row.items())
                  + f"  (max |dlogit| vs full.onnx {report.max_logit_diff:.1e})", flush=True)
    results["loadavg_after"] = os.getloadavg()
    print(f"load average {load[0]:.2f} before, {results['loadavg_after'][0]:.2f} after on {os.cpu_count()} cores")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
