"""Write the revision histories `vqinc demo` replays: real histories of *dev-split* PEPs only.

The bundled model is trained on the train split of pep-types.jsonl.gz (and pretrained on the same
train texts), so the demo shows predictions on documents it never saw. Rule (no hand-picking by the
model's behaviour): for each PEP type, the dev PEP with the most revisions among those whose first
revision is shorter than 3,000 characters, so the replay shows the document being written. Each record
is the trace format of `vqinc.runtime.replay.traces` plus its true `label`. PEP texts are public domain or
CC0-1.0 (each PEP's copyright section says so).

Usage: python -m benchmarks.demo_traces [--out runtime/data/pep-dev-histories.jsonl.gz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TYPES_ORDER = ("Standards Track", "Informational", "Process")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--max-base-chars", type=int, default=3000)
    p.add_argument("--out", type=Path, default=REPO / "runtime" / "data" / "pep-dev-histories.jsonl.gz")
    a = p.parse_args(argv)
    with gzip.open(a.shared / "pep-types.jsonl.gz", "rt", encoding="utf-8") as f:
        types = {r["doc_id"]: (r["split"], r["label"]) for r in map(json.loads, f)}
    best: dict[str, dict] = {}
    with gzip.open(a.shared / "pep-revisions.jsonl.gz", "rt", encoding="utf-8") as f:
        for rec in map(json.loads, f):
            split, label = types[rec["doc_id"]]
            if split != "dev" or len(rec["base"]) >= a.max_base_chars:
                continue
            if label not in best or len(rec["revisions"]) > len(best[label]["revisions"]):
                best[label] = {**rec, "label": label}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(a.out, "wb", mtime=0) as raw:  # mtime 0: the same bytes on every run
        for label in TYPES_ORDER:
            if label in best:
                raw.write((json.dumps(best[label]) + "\n").encode("utf-8"))
                r = best[label]
                print(f"{r['doc_id']} ({label}): {len(r['revisions'])} revisions, "
                      f"{sum(len(v['edits']) for v in r['revisions'])} edits", file=sys.stderr)
    print(f"{a.out}: {a.out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
