"""benchmarks/edits.py and scaling.py on a tiny model: every contender runs on every edit and agrees with
ORT full; the cost model, ratios, headline table and growth-exponent fit are what they claim."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks import edits, scaling
from vqinc.runtime.baseline.prefix_kv import KVDecoder
from vqinc.runtime.format.stages import full_macs, suffix_macs
from vqinc.runtime.model_dir import Model
from vqinc.runtime.text.splice import first_difference

TEXT = "The proposal adds a keyword to the grammar. Existing code keeps working; the new form is opt-in."
EDITS = [(4, 12, "film"), (0, 0, "An "), (20, 20, " new"), (30, 41, ""), (10, 11, "X")]


@pytest.fixture(scope="module")
def rope_dir(with_decoder):
    return with_decoder("llama-rope")


def test_every_contender_on_every_edit_agrees_with_ort_full(rope_dir, exported, test_providers):
    model = Model.load(rope_dir, threads=1, providers=test_providers)
    args = argparse.Namespace(warmup=1, torch_every=1)
    rows, peak, skipped = edits.run_document(model, KVDecoder(model), exported["llama-rope"].torch_model, TEXT,
                                             EDITS, args, 64)
    assert len(rows) == len(EDITS) and skipped == 0 and peak > 0
    for r in rows:
        assert set(r["dlogit"]) == {"vqinc", "prefix_kv", "torch_prefix_kv", "torch_full"}
        assert max(r["dlogit"].values()) < 1e-4, r
        assert all(r[f"{c}_ms"] > 0 for c in ("vqinc", *edits.BASELINES))
        assert 1 <= r["suffix"] <= r["tokens"] + 1
        assert r["prefix_kv_macs"] <= r["full_macs"]
    s = edits.summarize(rows, one_token=1)
    assert s["x_vs_prefix_kv"]["n"] == len(EDITS) and s["disagreements"]["prefix_kv"] == 0
    # the ratio is taken per edit, then the median
    assert s["x_vs_ort_full"]["median"] == pytest.approx(np.median([r["ort_full_ms"] / r["vqinc_ms"] for r in rows]))


def test_torch_subsampling_keeps_the_prefix_cache_in_step(rope_dir, exported, test_providers):
    model = Model.load(rope_dir, threads=1, providers=test_providers)
    rows, _, _ = edits.run_document(model, KVDecoder(model), exported["llama-rope"].torch_model, TEXT, EDITS,
                                    argparse.Namespace(warmup=0, torch_every=2), 64)
    timed = [r for r in rows if "torch_prefix_kv_ms" in r]
    assert [r["k"] for r in timed] == [0, 2, 4]
    assert max(r["dlogit"]["torch_prefix_kv"] for r in timed) < 1e-4


def test_suffix_cost_model_matches_the_engine_for_a_full_recompute(loaded):
    spec = loaded["llama-none"].spec
    for n in (1, 2, 17, 300):
        assert suffix_macs(spec, n, 0) == full_macs(spec, n)
    assert suffix_macs(spec, 300, 299) < suffix_macs(spec, 300, 10) < suffix_macs(spec, 300, 0)
    assert first_difference(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert first_difference(np.array([1, 2]), np.array([1, 2, 3])) == 2


def test_headline_table_and_growth_exponents():
    rows = [{"k": 0, "kind": "insert", "vqinc_ms": 1.0, "prefix_kv_ms": 4.0, "ort_full_ms": 8.0, "tokenize_ms": 0.1,
             "vqinc_macs": 10, "prefix_kv_macs": 40, "full_macs": 100, "suffix": 5, "changed_tokens": 1,
             "near_ties": 0, "dlogit": {"vqinc": 0.0, "prefix_kv": 0.0}}]
    windows = {}
    for n in (256, 1024, 2048, 4096):
        rs = [dict(r, vqinc_ms=1e-3 * n, prefix_kv_ms=1e-6 * n * n) for r in rows]
        windows[str(n)] = {"rows": rs, "summary": edits.summarize(rs, 1), "state_bytes_peak": 1e6}
    res = {"modes": {"keystroke": windows},
           "meta": {"onnxruntime": "x", "providers": ["CPUExecutionProvider"], "ort_intra_op_threads": 2,
                    "decoder_attention": "gqa", "torch": None, "loadavg_before": [3.0], "loadavg_after": [3.0],
                    "cpu_count": 2, "git": {"commit": "abc", "dirty": False}, "fingerprint": "f",
                    "other_load_warning": "load average 3.00 on 2 cores"}}
    md = edits.markdown(res)
    assert "| keystroke | 1024 | 1 | 1.02 / 1.02 | 1.05 / 1.05 |" in md and "WARNING: load average" in md
    fits = scaling.growth_exponents(res, 1024)
    assert fits["keystroke"]["vqinc"]["exponent"] == pytest.approx(1.0)
    assert fits["keystroke"]["prefix_kv"]["exponent"] == pytest.approx(2.0)
    assert fits["keystroke"]["vqinc"]["points"] == 3


def test_a_disagreement_is_checked_against_a_fresh_build_and_located(rope_dir, test_providers):
    """`_diagnose` (run when vqinc and full.onnx disagree): an intact document equals a fresh build and
    full.onnx; a code written into the state by hand is reported, at its layer, row and head."""
    model = Model.load(rope_dir, threads=1, providers=test_providers)
    doc = model.document(TEXT)
    doc.edit(4, 12, "film")
    clean = edits._diagnose(model, doc)
    assert clean == {"fresh_dlogit": 0.0, "fresh_codes_differ": 0, "full_codes_differ": 0}
    st = doc.state
    slot = st.order[3]
    st.layers[1].codes[slot, 0] = (st.layers[1].codes[slot, 0] + 1) % model.spec.num_codes
    bad = edits._diagnose(model, doc)
    assert bad["fresh_codes_differ"] == 1 and bad["full_codes_differ"] == 1
    assert (bad["first"]["layer"], bad["first"]["row"], bad["first"]["head"]) == (1, 3, 0)
    assert bad["first"]["relative_margin"] >= 0
    s = edits.summarize([{**r, "disagreement": d} for r, d in zip(_rows(), [clean, bad], strict=True)], one_token=1)
    assert s["disagreements_explained"]["edits"] == 2 and s["disagreements_explained"]["equal_to_fresh_build"] == 1


def _rows() -> list[dict]:
    """Two minimal benchmark rows (the fields `summarize` reads)."""
    base = {"kind": "insert", "vqinc_ms": 1.0, "prefix_kv_ms": 2.0, "ort_full_ms": 3.0, "dlogit": {"vqinc": 0.1},
            "vqinc_macs": 10, "prefix_kv_macs": 20, "full_macs": 40, "tokenize_ms": 0.1, "suffix": 3,
            "changed_tokens": 1, "near_ties": 0}
    return [dict(base), dict(base)]
