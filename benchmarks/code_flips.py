"""How often attention codes change under an edit, per layer, and what the edits cost in MACs.

Two workloads, both on an exported model directory:

* ``--trace FILE`` (real edits, long documents): real atomic edits (diff hunks) of revision histories
  such as ``../shared/data/pep-revisions.jsonl.gz``, replayed one after another on an ``--max-tokens``
  window of each document. Documents and edits are chosen exactly as ``benchmarks/edits.py`` chooses them
  (the first ``--docs`` documents whose window holds >= 90 % of ``--max-tokens`` tokens, the window
  centred on the median edit position, the first ``--edits`` edits that fall inside it), optionally only
  documents of one ``--split`` of ``pep-types.jsonl.gz`` (``dev`` = never trained on). Per edit: the
  token-level edit (common prefix / suffix of the token ids before and after), then per layer the
  fraction of the positions *after* the edit (aligned, outside it) whose code changed in any head
  (positions before an edit cannot change under causal attention), and the engine's multiply-accumulate
  count against a full recompute (`EditStats.savings`).
* ``--dataset NAME`` (the original diagnostic): random single-token substitutions in test documents;
  fraction of all positions per layer (the substituted one included) whose code changed.

No wall-clock figure is measured here: code flips are a property of the model, MAC counts come from the
engine (the JSON records the runtime's git commit).

Usage:
  python -m benchmarks.code_flips MODEL_DIR --trace ../shared/data/pep-revisions.jsonl.gz --split dev \
      --docs 10 --edits 30 --max-tokens 1024 --out benchmarks/results/x_code_flips.json
  python -m benchmarks.code_flips MODEL_DIR --dataset rotten_tomatoes --edits 200
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


import numpy as np

from benchmarks.edits import workload  # the same documents and edits as the wall-clock benchmark
from vqinc.runtime import Model
from vqinc.runtime.format.stages import savings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def token_edit(old: np.ndarray, new: np.ndarray) -> tuple[int, int, int]:
    """(p, removed, inserted): old[:p] == new[:p], old[p + removed:] == new[p + inserted:], p maximal first."""
    lim = min(len(old), len(new))
    neq = np.nonzero(old[:lim] != new[:lim])[0]
    p = int(neq[0]) if len(neq) else lim
    k = 0
    while k < lim - p and old[len(old) - 1 - k] == new[len(new) - 1 - k]:
        k += 1
    return p, len(old) - p - k, len(new) - p - k


def split_of(doc_ids: set[str] | None, split: str) -> set[str] | None:
    """doc_ids of pep-types.jsonl.gz in `split` (None = no filter)."""
    if split == "all":
        return None
    with gzip.open(SHARED / "pep-types.jsonl.gz", "rt", encoding="utf-8") as f:
        return {r["doc_id"] for r in map(json.loads, f) if r["split"] == split}


def _stat(v) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "mean": float(np.mean(v))}


def code_entropy(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """(L,) mean over heads of the entropy (bits) of the code distribution over positions: how much a layer's
    attention still says. A layer whose every position uses one code (0 bits) never flips, and never informs."""
    out = np.zeros(codes.shape[0])
    for li in range(codes.shape[0]):
        for h in range(codes.shape[2]):
            p = np.bincount(codes[li, :, h], minlength=num_codes) / codes.shape[1]
            p = p[p > 0]
            out[li] += -(p * np.log2(p)).sum() / codes.shape[2]
    return out


def trace_flips(model: Model, a) -> dict:
    keep = split_of(None, a.split)
    rows, entropies = [], []
    for doc_id, text, edits in workload(model, a.trace, a.max_tokens, a.docs, a.edits, False, keep):
        doc = model.document(text)
        entropies.append(code_entropy(doc.codes, int(doc.codes.max()) + 1))
        for k, (s, e, piece) in enumerate(edits):
            ids0, codes0 = doc.token_ids.copy(), doc.codes
            st = doc.edit(s, e, piece)
            ids1, codes1 = doc.token_ids, doc.codes
            p, removed, inserted = token_edit(ids0, ids1)
            after0 = np.arange(p + removed, len(ids0)) + 1  # +1: BOS is row 0 of the codes
            after1 = np.arange(p + inserted, len(ids1)) + 1
            changed = (codes0[:, after0] != codes1[:, after1]).any(axis=2)  # (L, positions after the edit)
            rows.append({"doc": doc_id, "k": k, "tokens": len(ids1), "at": p, "removed": removed, "inserted": inserted,
                         "after": len(after1), "flipped": changed.sum(axis=1).tolist(),
                         "macs": st.macs, "full_macs": st.full_macs, "savings": st.savings,
                         "post_rows": st.rows.get("post"), "near_ties": st.near_ties})
        print(f"{doc_id}: {len(edits)} edits", file=sys.stderr)
    if not rows:
        raise SystemExit("no document of the trace fits the window: lower --max-tokens or change --split")
    with_after = [r for r in rows if r["after"]]
    rate = np.mean([np.asarray(r["flipped"]) / r["after"] for r in with_after], axis=0)
    return {
        "workload": "trace", "trace": str(a.trace), "split": a.split, "max_tokens": a.max_tokens,
        "docs": sorted({r["doc"] for r in rows}), "edits": len(rows),
        "flip_rate_after_edit_per_layer": [round(float(x), 4) for x in rate],
        "mean_positions_flipped_per_layer": [round(float(x), 2) for x in np.mean([r["flipped"] for r in rows], 0)],
        "code_entropy_bits_per_layer": [round(float(x), 3) for x in np.mean(entropies, axis=0)],
        "mean_post_rows_per_layer": [round(float(x), 2) for x in np.mean([r["post_rows"] for r in rows], 0)],
        "changed_tokens": _stat([r["removed"] + r["inserted"] for r in rows]),
        "macs_saving": _stat([r["savings"] for r in rows]),
        "macs_saving_total": float(savings(sum(r["full_macs"] for r in rows), sum(r["macs"] for r in rows))),
        "near_ties": int(sum(r["near_ties"] for r in rows)),
        "rows": rows,
    }


def substitution_flips(model: Model, a) -> dict:
    from vqinc.model.data import load_dataset

    rng = np.random.default_rng(a.seed)
    test = load_dataset(a.dataset).test
    vocab = model.tokenizer.get_vocab_size()
    fractions, flips_abs = [], []
    while len(fractions) < a.edits:
        ex = test[int(rng.integers(len(test)))]
        ids = model.tokenizer.encode(ex.text, add_special_tokens=False).ids[: a.max_tokens]
        if len(ids) < 2:
            continue
        doc = model.document_ids(ids)
        before = doc.codes
        pos = int(rng.integers(len(ids)))
        doc.edit_tokens(pos, 1, [int(rng.integers(1, vocab))])
        changed = (doc.codes != before).any(axis=2)  # (L, n): any head's code changed
        fractions.append(changed.mean(axis=1))
        flips_abs.append(changed.sum(axis=1))
    return {"workload": "substitutions", "edits": a.edits, "dataset": a.dataset, "max_tokens": a.max_tokens,
            "mean_fraction_changed_per_layer": [round(float(x), 4) for x in np.mean(fractions, axis=0)],
            "mean_positions_changed_per_layer": [round(float(x), 2) for x in np.mean(flips_abs, axis=0)]}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--trace", type=Path, default=None, help="revision histories: real edits on long documents")
    p.add_argument("--split", choices=("all", "train", "dev"), default="all",
                   help="only documents of this pep-types split (trace workload)")
    p.add_argument("--docs", type=int, default=3)
    p.add_argument("--dataset", default="rotten_tomatoes", help="substitution workload (without --trace)")
    p.add_argument("--edits", type=int, default=200, help="edits (per document with --trace)")
    p.add_argument("--max-tokens", type=int, default=None, help="window (default 1024 with --trace, else 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    a = p.parse_args(argv)
    a.max_tokens = a.max_tokens or (1024 if a.trace else 256)
    model = Model.load(a.model_dir, threads=a.threads)
    res = trace_flips(model, a) if a.trace else substitution_flips(model, a)
    res = {"model_dir": a.model_dir, "fingerprint": model.manifest.fingerprint, "runtime_commit": _git_commit(),
           "argv": sys.argv if argv is None else argv, **res}
    summary = {k: v for k, v in res.items() if k != "rows"}
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
