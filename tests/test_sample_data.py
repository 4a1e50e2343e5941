"""The suite's data sample (tests/data): small, and every record carries the public-domain dedication its
README states (make_sample.DEDICATION)."""

from __future__ import annotations

import gzip
import importlib.util
import json

from tests_support import PEP_REVISIONS, PEP_TYPES, TEST_DATA

from vqinc.runtime.replay.traces import read_trace_file

_spec = importlib.util.spec_from_file_location("make_sample", TEST_DATA / "make_sample.py")
make_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_sample)


def _dedicated(text: str) -> bool:
    return make_sample.DEDICATION.search(text) is not None


def test_small():
    assert sum(p.stat().st_size for p in TEST_DATA.glob("*.gz")) < 300_000


def test_every_record_is_dedicated_to_the_public_domain():
    with gzip.open(PEP_TYPES, "rt", encoding="utf-8") as f:
        types = [json.loads(line) for line in f]
    assert len(types) == 18 and all(_dedicated(r["text"]) for r in types)
    histories = list(read_trace_file(PEP_REVISIONS))
    assert len(histories) == 4 and all(_dedicated(list(t.texts())[-1]) for t in histories)
