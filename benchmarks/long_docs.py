"""Documents of any length: per-edit time at ~1k, 10k and 100k tokens, build time and state memory per token.

Documents: PEP texts of the trace file (their base revisions, in file order) joined until the wanted number
of tokens, as `model.document(text, chunked=True)` (ChunkedDocument). Edits: keystroke-like edits (insert a
character, delete one, insert a word, replace a word) at the same seeded relative positions in every
document; the baseline is the same edits on a plain Document of the first 4,000 characters, in the same run.
With --check, every document is compared with a fresh build of its final text afterwards (chunk bounds,
every chunk's codes identical, logits within 1e-4).

Usage: python -m benchmarks.long_docs [--sizes 1000 10000 100000] [--edits 100] [--warmup 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vqinc.runtime.chunked import ChunkedDocument
from vqinc.runtime.format.stages import savings
from vqinc.runtime.model_dir import Model, default_model_dir

DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pep-revisions.jsonl.gz"


def corpus_text(model: Model, trace: Path, num_tokens: int) -> str:
    """PEP bases joined by blank lines, cut where the joined text reaches `num_tokens` tokens."""
    parts, total = [], 0
    with gzip.open(trace, "rt", encoding="utf-8") as f:
        for line in f:
            base = json.loads(line)["base"]
            parts.append(base)
            total += len(model.tokenizer.encode(base, add_special_tokens=False).ids)
            if total >= num_tokens:
                break
    text = "\n\n".join(parts)
    enc = model.tokenizer.encode(text, add_special_tokens=False)
    if len(enc.ids) > num_tokens:
        text = text[: enc.offsets[num_tokens][0]]
    return text


def edit_script(num: int, seed: int = 0) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    return [(rng.random(), rng.choice(["insert_char", "delete_char", "insert_word", "replace_word"]))
            for _ in range(num)]


def apply_script(doc, script) -> list[float]:
    """Apply the edits; wall ms per edit."""
    ms = []
    for frac, kind in script:
        text = doc.text
        at = int(frac * len(text))
        a, b, s = {"insert_char": (at, at, "x"), "delete_char": (at, min(at + 1, len(text)), ""),
                   "insert_word": (at, at, " proposal"), "replace_word": (at, min(at + 4, len(text)), "text")}[kind]
        t0 = time.perf_counter()
        doc.edit(a, b, s)
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def check(model: Model, doc: ChunkedDocument) -> float:
    fresh = ChunkedDocument(model, doc.text, doc.config)
    assert fresh.bounds == doc.bounds, "chunks differ from a fresh chunking"
    for a, b in zip(fresh.chunk_codes(), doc.chunk_codes(), strict=True):
        assert (a == b).all(), "codes differ from a fresh build"
    diff = max(float(np.abs(fresh.logits - doc.logits).max()),
               *(float(np.abs(a - b).max()) for a, b in zip(fresh.chunk_logits(), doc.chunk_logits(), strict=True)))
    assert diff <= 1e-4, diff
    return diff


def summary(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90)), "mean_ms": statistics.fmean(ms)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=str(default_model_dir()))
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--edits", type=int, default=100, help="measured edits per document")
    p.add_argument("--warmup", type=int, default=10, help="edits before measuring (not counted)")
    p.add_argument("--repeats", type=int, default=1, help="builds timed per size (the median is reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check", action="store_true", help="compare every document with a fresh build afterwards")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    model = Model.load(a.model_dir, threads=a.threads)
    load = os.getloadavg()
    warm, script = edit_script(a.warmup, seed=1), edit_script(a.edits, seed=0)
    rows = []

    base = corpus_text(model, a.trace, 2000)[:4000]
    plain = model.document(base, chunked=False)
    apply_script(plain, warm)
    r = {"document": "plain Document, 4,000-character window", "tokens": len(plain.token_ids), "chunks": 1,
         **summary(apply_script(plain, script))}
    rows.append(r)
    print(f"{r['document']}: {r['tokens']} tokens, median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms")
    for n in a.sizes:
        text = corpus_text(model, a.trace, n)
        builds = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            doc = model.document(text, chunked=True)
            builds.append(time.perf_counter() - t0)
        tokens = doc.num_tokens
        r = {"document": f"ChunkedDocument, ~{n} tokens", "tokens": tokens, "chars": len(text),
             "chunks": len(doc.chunks), "median_chunk_tokens": statistics.median(c.num_tokens for c in doc.chunks),
             "build_s": statistics.median(builds), "build_us_per_token": statistics.median(builds) / tokens * 1e6,
             "state_bytes_per_token": doc.nbytes() / tokens}
        apply_script(doc, warm)
        ms = apply_script(doc, script)
        hist = list(doc.history)[-len(script):]
        edits = [s.chunks_edited + s.chunks_built for s in hist]
        r.update(summary(ms), chunking_ms_median=statistics.median(s.chunking_ms for s in hist),
                 edits_touching_more_than_one_chunk=sum(e > 1 for e in edits),
                 ops_saved_total=savings(sum(s.full_macs for s in hist), sum(s.macs for s in hist)))
        if a.check:
            r["max_dlogit_vs_fresh"] = check(model, doc)
        rows.append(r)
        print(f"{r['document']}: {tokens} tokens in {r['chunks']} chunks (median {r['median_chunk_tokens']:.0f}); "
              f"build {r['build_s']:.2f} s ({r['build_us_per_token']:.0f} us/token), state "
              f"{r['state_bytes_per_token'] / 1024:.1f} KiB/token; edit median {r['median_ms']:.2f} ms, "
              f"p90 {r['p90_ms']:.2f} ms (chunking {r['chunking_ms_median']:.2f} ms); "
              f"{r['edits_touching_more_than_one_chunk']} edits touched >1 chunk"
              + (f"; vs fresh max |dlogit| {r['max_dlogit_vs_fresh']:.1e}" if a.check else ""))
        del doc
    meta = {"argv": sys.argv, "onnxruntime": ort.__version__, "fingerprint": model.manifest.fingerprint,
            "providers": model.providers, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "loadavg_before": load, "loadavg_after": os.getloadavg()}
    print(f"load average before {load[0]:.2f}, after {meta['loadavg_after'][0]:.2f}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "long_docs.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
