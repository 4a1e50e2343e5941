"""The stability trade-off table: accuracy / macro-F1 against code flips against MAC savings.

Reads `benchmarks/code_flips.py --trace ... --out X.json` results (one or more per model), and each
model directory's manifest (training recipe and test metrics, copied from the checkpoint at export).
Prints a markdown table (one row per model and workload) and writes the rows as JSON.

Usage: python -m benchmarks.tradeoff RESULT.json [RESULT.json ...] [--out benchmarks/results/tradeoff.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def row(result_path: Path) -> dict:
    r = json.loads(result_path.read_text())
    man = json.loads((Path(r["model_dir"]) / "manifest.json").read_text())
    info = man.get("info", {})
    tc = info.get("train_config", {})
    return {
        "result": str(result_path), "model_dir": r["model_dir"], "runtime_commit": r.get("runtime_commit"),
        "stability_weight": tc.get("stability_weight", 0.0), "num_codes": tc.get("num_codes"),
        "positions": tc.get("positions"), "dataset": info.get("dataset"),
        "teacher": info.get("teacher"), "student": info.get("student"),
        "workload": f"{r['split']} split, {len(r['docs'])} docs, {r['edits']} edits, n={r['max_tokens']}",
        "flip_rate_after_edit_per_layer": r["flip_rate_after_edit_per_layer"],
        "mean_positions_flipped_per_layer": r["mean_positions_flipped_per_layer"],
        "code_entropy_bits_per_layer": r.get("code_entropy_bits_per_layer"),
        "macs_saving": r["macs_saving"], "macs_saving_total": r["macs_saving_total"],
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| model | stability weight | accuracy (teacher) | macro-F1 (teacher) | workload | code flips after "
             "the edit, per layer | code entropy, bits per layer | MACs saved median / p10 |",
             "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        s, t = x["student"] or {}, x["teacher"] or {}
        flips = " / ".join(f"{100 * f:.1f}%" for f in x["flip_rate_after_edit_per_layer"])
        ent = " / ".join(f"{e:.1f}" for e in x["code_entropy_bits_per_layer"] or [])
        lines.append(f"| {Path(x['model_dir']).parent.name or x['model_dir']} | {x['stability_weight']:g} | "
                     f"{s.get('accuracy', float('nan')):.4f} ({t.get('accuracy', float('nan')):.4f}) | "
                     f"{s.get('macro_f1', float('nan')):.4f} ({t.get('macro_f1', float('nan')):.4f}) | "
                     f"{x['workload']} | {flips} | {ent or '-'} | "
                     f"{x['macs_saving']['median']:.1f}x / {x['macs_saving']['p10']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    rows = [row(r) for r in a.results]
    print(markdown(rows))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
