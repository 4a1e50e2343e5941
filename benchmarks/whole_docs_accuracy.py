"""Accuracy of the bundled model on whole dev-split PEPs (ChunkedDocument, the README's result rule)
next to the first-1,024-token window it was trained on (issue 20's "defined output").

    python -m benchmarks.whole_docs_accuracy [--data ../shared/data/pep-types.jsonl.gz]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from vqinc.model.data import accuracy, macro_f1
from vqinc.runtime.model_dir import Model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pep-types.jsonl.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--window", type=int, default=1024)
    a = p.parse_args()
    m = Model.load()
    with gzip.open(a.data, "rt", encoding="utf-8") as f:
        dev = [r for r in map(json.loads, f) if r["split"] == "dev"]
    labels = list(m.labels)
    truth, whole, window, chunks, t0 = [], [], [], [], time.time()
    for r in dev:
        truth.append(labels.index(r["label"]))
        doc = m.document(r["text"], chunked=True)
        whole.append(labels.index(doc.label))
        chunks.append(len(doc.chunks))
        ids = m.tokenizer.encode(r["text"], add_special_tokens=False)
        cut = r["text"][:ids.offsets[min(a.window, len(ids.ids)) - 1][1]] if ids.ids else r["text"]
        window.append(labels.index(m.document(cut, chunked=False).label))
    k = len(labels)
    print(f"{len(dev)} dev PEPs, {sum(c > 1 for c in chunks)} of them in more than one chunk "
          f"(max {max(chunks)}), {time.time() - t0:.0f} s")
    majority = max(truth.count(i) for i in range(k)) / len(truth)
    for name, pred in (("whole document (chunked)", whole), (f"first {a.window} tokens", window)):
        print(f"{name}: accuracy {accuracy(truth, pred):.3f}, macro-F1 {macro_f1(truth, pred, k):.3f}")
    print(f"majority class: accuracy {majority:.3f}")


if __name__ == "__main__":
    main()
