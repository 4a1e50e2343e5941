"""RoPE position labels on real edits: rows re-attended per inserted token, relabelling, and the drift of
a labelled document from a contiguous fresh build (issue 19 item 1).

One RoPE checkpoint exported twice, with labels (the default, position_scale 2^16) and without (1): real
PEP edits (atomic hunks, or keystrokes) applied to a window of n tokens of each document, one document
per model. Per edit: the later rows whose q, k were recomputed in layer 0 because their RoPE position
changed (what labels remove); rows recomputed by `attend` per layer over the rows after the edit point,
per inserted token (what the model's code stability decides); rows relabelled; MACs saved. Every
`--check-every` edits the labelled document is compared with (a) a fresh build of its text with the same
labels (the invariant: codes identical, logits within 1e-4) and (b) a contiguous fresh build (the drift
labels cost: max |dlogit|, same label).

    python -m benchmarks.position_labels LABELLED_DIR PLAIN_DIR [--n 512] [--docs 4] [--edits 300] [--keystroke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from benchmarks.edits import DEFAULT_TRACE, workload
from vqinc.runtime.format.atomic import write_atomic
from vqinc.runtime.format.stages import savings
from vqinc.runtime.model_dir import Model
from vqinc.runtime.progress import progress

REPO = Path(__file__).resolve().parents[1]


def _q(xs, q):
    return float(np.quantile(xs, q)) if len(xs) else float("nan")


def reattended(stats, row: int, n: int) -> float | None:
    """Rows `attend` recomputed per layer, over the rows after the edit point, per inserted token."""
    later = n - row
    if stats.n_insert == 0 or later <= 0:
        return None
    return float(np.mean(stats.rows["attend"])) / later / stats.n_insert


def run(args) -> dict:
    lab, plain = Model.load(args.labelled), Model.load(args.plain)
    if not lab.spec.labelled or plain.spec.labelled:
        raise SystemExit(f"{args.labelled} must be a RoPE export with labels, {args.plain} one without")
    docs = workload(lab, args.trace, args.n, args.docs, args.edits, args.keystroke)
    rows = {"labelled": [], "plain": []}
    checks = []
    for doc_id, text, edits in progress(docs, total=len(docs), desc="documents"):
        d_lab, d_plain = lab.document(text), plain.document(text)
        for k, (a, b, piece) in enumerate(edits):
            row = 1 + len(lab.tokenizer.encode(d_lab.text[:a], add_special_tokens=False).ids)
            for name, d in (("labelled", d_lab), ("plain", d_plain)):
                try:
                    s = d.edit(a, b, piece)
                except ValueError:  # the window outgrew the model
                    continue
                r = reattended(s, row, len(d.token_ids) + 1)
                later = len(d.token_ids) + 1 - row - s.n_insert
                moved = (s.rows["embed_qkv"][0] - s.n_insert) / later if later > 0 else None
                rows[name].append({"doc": doc_id, "reattended": r, "qkv_moved": moved, "relabelled": s.relabelled,
                                   "compacted": s.compacted, "saved": savings(s.full_macs, s.macs)})
            if (k + 1) % args.check_every == 0 or k == len(edits) - 1:
                same = lab.document(d_lab.text, positions=d_lab.positions)
                contiguous = lab.document(d_lab.text)
                p = d_lab.positions / lab.spec.position_scale
                checks.append({
                    "doc": doc_id, "edit": k + 1,
                    "same_labels_code_flips": int((same.codes != d_lab.codes).sum()),
                    "same_labels_max_dlogit": float(np.abs(same.logits - d_lab.logits).max()),
                    "drift_max_dlogit": float(np.abs(contiguous.logits - d_lab.logits).max()),
                    "drift_same_label": bool(contiguous.label == d_lab.label),
                    "drift_code_flips_frac": float((contiguous.codes != d_lab.codes).mean()),
                    "max_position_offset": float(np.abs(p - np.arange(1, len(p) + 1)).max()),
                })
    out = {"meta": {"argv": sys.argv, "labelled": str(args.labelled), "plain": str(args.plain),
                    "position_scale": lab.spec.position_scale, "n": args.n, "keystroke": args.keystroke,
                    "loadavg": os.getloadavg()}, "rows": rows, "checks": checks, "summary": {}}
    for name, rs in rows.items():
        ra = [r["reattended"] for r in rs if r["reattended"] is not None]
        mv = [r["qkv_moved"] for r in rs if r["qkv_moved"] is not None]
        out["summary"][name] = {"edits": len(rs), "layer0_qkv_of_later_rows_median": _q(mv, 0.5),
                                "layer0_qkv_of_later_rows_p90": _q(mv, 0.9),
                                "reattended_per_token_median": _q(ra, 0.5),
                                "reattended_per_token_p90": _q(ra, 0.9),
                                "relabelled_total": sum(r["relabelled"] for r in rs),
                                "compactions": sum(r["compacted"] for r in rs),
                                "saved_median": _q([r["saved"] for r in rs], 0.5),
                                "saved_p10": _q([r["saved"] for r in rs], 0.1)}
    out["summary"]["checks"] = {
        "count": len(checks), "same_labels_code_flips": sum(c["same_labels_code_flips"] for c in checks),
        "same_labels_max_dlogit": max((c["same_labels_max_dlogit"] for c in checks), default=0.0),
        "drift_max_dlogit": max((c["drift_max_dlogit"] for c in checks), default=0.0),
        "drift_median_dlogit": _q([c["drift_max_dlogit"] for c in checks], 0.5),
        "drift_label_agreement": float(np.mean([c["drift_same_label"] for c in checks])) if checks else 1.0,
        "drift_code_flips_frac_median": _q([c["drift_code_flips_frac"] for c in checks], 0.5),
        "max_position_offset": max((c["max_position_offset"] for c in checks), default=0.0)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("labelled", type=Path)
    p.add_argument("plain", type=Path)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--edits", type=int, default=300)
    p.add_argument("--keystroke", action="store_true")
    p.add_argument("--check-every", type=int, default=10)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "position-labels")
    args = p.parse_args(argv)
    res = run(args)
    name = f"labels-{'keystroke' if args.keystroke else 'atomic'}-n{args.n}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / name, json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
