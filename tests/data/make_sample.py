"""Writes the test suite's sample of the PEP data sets (tests/data/*.jsonl.gz) from the full files.

    python tests/data/make_sample.py [--source ../shared/data]

Reproducible: the same source files give byte-identical outputs (records in source order, gzip mtime 0).
Only PEPs whose text dedicates it to the public domain (`DEDICATION`; the newer ones add "or under the
CC0-1.0-Universal license, whichever is more permissive") are kept: a few old PEPs carry no copyright section.
What it keeps, and which tests read it (tests_support.TEST_DATA):
  pep-revisions.jsonl.gz  the first `NUM_HISTORIES` such edit histories (dedication in the last revision)
                          (test_traces, test_tokens' real-history replay, test_cli's trace replay)
  pep-types.jsonl.gz      the first such records until `TYPES_CHARS` characters of text (the corpus test_bpe and
                          test_tokens train their BPEs on), then the records of the PEPs whose histories the
                          demo bundles (runtime/data/pep-dev-histories.jsonl.gz), so a test can check their split
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NUM_HISTORIES = 4
TYPES_CHARS = 300_000
BUNDLED = REPO / "runtime" / "data" / "pep-dev-histories.jsonl.gz"
DEDICATION = re.compile(r"placed\s+in\s+the\s+public\s+domain")


def _last_text(history: dict) -> str:
    text = history["base"]
    for rev in history["revisions"]:
        for e in rev["edits"]:
            text = text[: e["at"]] + e["insert"] + text[e["at"] + e["delete"]:]
    return text


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def _write_lines(path: Path, lines: list[str]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write("".join(lines).encode("utf-8"))
    path.write_bytes(buf.getvalue())


def pick_histories(lines: list[str]) -> list[str]:
    return [line for line in lines if DEDICATION.search(_last_text(json.loads(line)))][:NUM_HISTORIES]


def pick_types(lines: list[str], bundled_ids: set[str]) -> list[str]:
    records = [json.loads(line) for line in lines]
    dedicated = [i for i, r in enumerate(records) if DEDICATION.search(r["text"])]
    picked, size = [], 0
    for i in dedicated:
        picked.append(i)
        size += len(records[i]["text"])
        if size > TYPES_CHARS:
            break
    picked += [i for i in dedicated if i > picked[-1] and records[i]["doc_id"] in bundled_ids]
    missing = bundled_ids - {records[i]["doc_id"] for i in picked}
    if missing:
        raise SystemExit(f"bundled histories {sorted(missing)}: no public-domain record in the source")
    return [lines[i] for i in picked]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder holding the full pep-revisions.jsonl.gz and pep-types.jsonl.gz")
    p.add_argument("--out", type=Path, default=HERE)
    a = p.parse_args(argv)
    bundled_ids = {json.loads(line)["doc_id"] for line in _read_lines(BUNDLED)}
    for name, pick in (("pep-revisions.jsonl.gz", pick_histories),
                       ("pep-types.jsonl.gz", lambda lines: pick_types(lines, bundled_ids))):
        lines = pick(_read_lines(a.source / name))
        _write_lines(a.out / name, lines)
        ids = [json.loads(line)["doc_id"] for line in lines]
        print(f"{a.out / name}: {len(ids)} records ({ids[0]} ... {ids[-1]}), "
              f"{(a.out / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
