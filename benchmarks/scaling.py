"""Per-edit cost against document length: every contender of edits.py, n = 256 ... 4,000, log-log.

Runs benchmarks/edits.py's workload at each window length (keystrokes and atomic hunks), then fits each
contender's growth exponent b in ms ~ n^b by least squares on log-log over n >= --fit-from (1,024 by
default, where fixed per-call costs no longer dominate) and prints it.

Usage: python -m benchmarks.scaling [--windows 256 512 1024 2048 4000] [--docs 2 --edits 15 --keystrokes 30]
Writes scaling.json (all edits, the fits and the run's conditions), scaling.md and scaling.png to --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.edits import BASELINES, LABELS, REPO, build_parser, run

CONTENDERS = ("vqinc", *BASELINES)


def growth_exponents(results: dict, fit_from: int) -> dict:
    """{mode: {contender: {"exponent": b, "points": k}}}: slope of log(median ms) on log(n), n >= fit_from."""
    fits: dict = {}
    for mode, windows in results["modes"].items():
        fits[mode] = {}
        for c in CONTENDERS:
            pts = [(int(n), w["summary"][f"{c}_ms"]["median"]) for n, w in windows.items()
                   if int(n) >= fit_from and w["summary"].get(f"{c}_ms")]
            if len(pts) >= 2:
                x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
                fits[mode][c] = {"exponent": float(np.polyfit(x, y, 1)[0]), "points": len(pts)}
    return fits


def markdown(results: dict, fits: dict, fit_from: int) -> str:
    modes = list(results["modes"])
    lines = [f"Growth exponent b of the median per-edit time, ms ~ n^b, fitted over n >= {fit_from}:", "",
             "| contender | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for c in CONTENDERS:
        cells = [f"{fits[m][c]['exponent']:.2f}" if c in fits[m] else "-" for m in modes]
        lines.append(f"| {LABELS[c]} | " + " | ".join(cells) + " |")
    lines += ["", "Median ms per edit:", "", "| edits | n | " + " | ".join(LABELS[c] for c in CONTENDERS) + " |",
              "|---|---|" + "---|" * len(CONTENDERS)]
    for m in modes:
        for n, w in results["modes"][m].items():
            s = w["summary"]
            cells = [f"{s[f'{c}_ms']['median']:.2f}" if s.get(f"{c}_ms") else "-" for c in CONTENDERS]
            lines.append(f"| {m} | {n} | " + " | ".join(cells) + " |")
    meta = results["meta"]
    lines += ["", f"load average {meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after on "
              f"{meta['cpu_count']} cores; commit {(meta['git']['commit'] or '?')[:10]}"]
    if meta.get("other_load_warning"):
        lines.append(f"WARNING: {meta['other_load_warning']}.")
    return "\n".join(lines)


def plot(results: dict, fits: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        windows = results["modes"][mode]
        for c in CONTENDERS:
            pts = [(int(n), w["summary"][f"{c}_ms"]["median"]) for n, w in windows.items()
                   if w["summary"].get(f"{c}_ms")]
            if pts:
                b = fits[mode].get(c, {}).get("exponent")
                label = LABELS[c] + (f" (n^{b:.2f})" if b is not None else "")
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("document length n (tokens)")
        ax.set_ylabel("median ms per edit")
        ax.set_title(f"{mode} edits")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = build_parser()
    p.description = __doc__
    p.set_defaults(windows=[256, 512, 1024, 2048, 4000], docs=2, edits=15, keystrokes=30,
                   out=REPO / "benchmarks" / "results" / "scaling")
    p.add_argument("--fit-from", type=int, default=1024, help="fit the exponent over n >= this")
    p.add_argument("--title", default=None, help="plot title (default: the run's conditions)")
    a = p.parse_args(argv)
    if a.quick:
        raise SystemExit("scaling.py has no --quick; pass small --docs / --edits / --keystrokes / --windows instead")
    if not a.trace.exists():
        raise SystemExit(f"trace {a.trace} not found: pass --trace (e.g. ../shared/data/pep-revisions.jsonl.gz)")
    res = run(a)
    fits = growth_exponents(res, a.fit_from)
    res["fits"] = {"fit_from": a.fit_from, "exponents": fits}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scaling.json").write_text(json.dumps(res, indent=1))
    md = markdown(res, fits, a.fit_from)
    (a.out / "scaling.md").write_text(md + "\n")
    m = res["meta"]
    title = a.title or (f"vqinc {(m['git']['commit'] or '?')[:7]}, onnxruntime {m['onnxruntime']} "
                        f"{m['providers'][0]}, {m['cpu_count']} cores, load {m['loadavg_before'][0]:.1f}"
                        f"->{m['loadavg_after'][0]:.1f}; docs {a.docs}, edits {a.edits}, keystrokes {a.keystrokes}, "
                        f"torch every {a.torch_every}")
    plot(res, fits, a.out / "scaling.png", title)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
